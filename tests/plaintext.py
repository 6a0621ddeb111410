"""The plaintext answers of the example federation's jobs, checked against a run's outputs.

The by-hand federation (tests/test_docs.py) and the multi-host run in network namespaces
(tests/test_multihost.py) run the same three jobs on the bundled data of the sites
``oslo``, ``bergen`` and ``tromso``; these functions check what the analyst wrote:

- :func:`check_sum`: ``result.json`` of ``protocols/cohort.yaml`` against NumPy on the
  sites' CSVs (count, sum, mean of age, bmi, systolic_bp);
- :func:`check_fedavg`: ``model.npz`` of ``protocols/cohort-fit.yaml`` against the
  example-weighted average of the sites' ``coef``;
- :func:`check_assoc`: the ``.assoc`` of a ``tests: [assoc]`` GWAS against
  ``plink1.9 --assoc`` on the pooled fileset, byte for byte.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SITES = ("oslo", "bergen", "tromso")
DEMO = ROOT / "smpc" / "data" / "demo"  # the sites' CSVs and .npz models
GWAS = ROOT / "smpc" / "data" / "gwas"  # the sites' PLINK filesets and POOLED, their union
SUM_COLUMNS = ("age", "bmi", "systolic_bp")


def check_sum(result_file: Path, data: Path = DEMO, sites: Sequence[str] = SITES) -> Any:
    """The secure sum's result.json equals NumPy on the pooled CSVs; returns the result."""
    tables = [np.genfromtxt(data / f"{s}.csv", delimiter=",", names=True) for s in sites]
    result = json.loads(Path(result_file).read_text())
    for column in SUM_COLUMNS:
        pooled = np.concatenate([t[column] for t in tables])
        assert result[column]["count"] == len(pooled)
        assert result[column]["sum"] == pytest.approx(pooled.sum(), rel=1e-9, abs=1e-5)
        assert result[column]["mean"] == pytest.approx(pooled.mean(), rel=1e-9, abs=1e-6)
    return result


def check_fedavg(model_file: Path, data: Path = DEMO, sites: Sequence[str] = SITES) -> None:
    """The FedAvg round's model.npz is the example-weighted average of the sites' coef."""
    models = [np.load(data / f"{s}.npz") for s in sites]
    total = sum(int(m["num_examples"]) for m in models)
    plain = sum(int(m["num_examples"]) * m["coef"] for m in models) / total
    with np.load(model_file) as model:
        np.testing.assert_allclose(model["coef"], plain, rtol=0, atol=1e-6)


def require_plink() -> None:
    """Fail (not skip) without PLINK 1.9: the GWAS's reference answer comes from it."""
    if shutil.which("plink1.9") is None:
        pytest.fail("plink1.9 is not installed (tests/run.sh installs the Debian package)")


def check_assoc(assoc_file: Path, workdir: Path, pooled: Path = GWAS / "POOLED") -> str:
    """The GWAS's .assoc equals ``plink1.9 --assoc`` on the pooled fileset; returns it."""
    require_plink()
    reference = Path(workdir) / "plink"
    subprocess.run(
        ["plink1.9", "--bfile", str(pooled), "--allow-no-sex", "--assoc", "--out", str(reference)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    ours = Path(assoc_file).read_text()
    assert ours == reference.with_suffix(".assoc").read_text()
    return ours
