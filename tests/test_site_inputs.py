"""What a site shares for a job from its named inputs (``inputs:``, ``--input``).

The job asks for derived inputs (``age.sum``, ``age.count``); the site names the spec's
inputs (``age``, ``bmi``): the protocol computes the statistics from the named sources.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from smpc.analyst.jobs import build_job
from smpc.config.federation import load_federation
from smpc.protocols.base import SkipJob
from smpc.protocols.registry import parse_spec
from smpc.site.inputs import configured_inputs

ROOT = Path(__file__).resolve().parents[1]
FEDERATION = load_federation(ROOT / "parties" / "federation.yaml")
ANALYST = SimpleNamespace(name="analyst")


def _job(doc: dict):
    return build_job(parse_spec(doc, "<test>", FEDERATION), ANALYST, FEDERATION)


def test_sum_job_from_spec_input_names(tmp_path):
    csv = tmp_path / "site.csv"
    csv.write_text("age,bmi\n40,21.5\n50,\n61,30.25\n")
    job = _job({"name": "cohort", "protocol": "sum", "inputs": ["age", "bmi"]})
    data = configured_inputs({"age": f"{csv}:age", "bmi": f"{csv}:bmi"}, FEDERATION)(job)
    assert sorted(data.arrays) == ["age.count", "age.sum", "bmi.count", "bmi.sum"]
    assert data.arrays["age.sum"] == 151 and data.arrays["age.count"] == 3
    assert data.arrays["bmi.sum"] == 51.75 and data.arrays["bmi.count"] == 2
    assert data.records == 3


def test_job_input_names_given_exactly_are_shared_as_they_are(tmp_path):
    np.save(tmp_path / "s.npy", np.array(7.5))
    np.save(tmp_path / "c.npy", np.array(3))
    job = _job({"name": "cohort", "protocol": "sum", "inputs": ["age"]})
    sources = {"age.sum": str(tmp_path / "s.npy"), "age.count": str(tmp_path / "c.npy")}
    data = configured_inputs(sources, FEDERATION)(job)
    assert data.arrays["age.sum"] == 7.5 and data.arrays["age.count"] == 3


def test_fedavg_job_from_model_arrays_and_num_examples(tmp_path):
    np.savez(tmp_path / "m.npz", coef=np.array([1.0, -2.0]), num_examples=4)
    job = _job({"name": "fit", "protocol": "fedavg", "inputs": ["coef"]})
    model = tmp_path / "m.npz"
    sources = {"coef": f"{model}:coef", "num_examples": f"{model}:num_examples"}
    data = configured_inputs(sources, FEDERATION)(job)
    assert data.arrays["coef.weighted"].tolist() == [4.0, -8.0]
    assert data.arrays["num_examples"] == 4 and data.records == 4


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"name": "c", "protocol": "sum", "inputs": ["age", "weight"]}, "inputs weight are not"),
        ({"name": "f", "protocol": "fedavg", "inputs": ["age"]}, "num_examples are not"),
        ({"name": "g", "protocol": "gwas", "tests": ["assoc"]}, "reads a data file"),
    ],
)
def test_unanswerable_jobs_say_why(tmp_path, doc, reason):
    csv = tmp_path / "site.csv"
    csv.write_text("age\n40\n")
    with pytest.raises(SkipJob, match=reason):
        configured_inputs({"age": f"{csv}:age"}, FEDERATION)(_job(doc))
