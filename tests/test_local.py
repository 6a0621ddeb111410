"""``smpc local`` end to end (real processes, either broker) against NumPy on the pooled data.

Reals: each site's local sum is encoded with f = 24 fractional bits, so each
errs by at most 2^-25; M sites add up to M·2^-25 < 1e-6 for M < 33, which the
tolerance 1e-6·max(1, |x|) covers. Integers are exact.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from smpc.analyst.jobs import JobFailed, _open
from smpc.core.field import FAST
from smpc.core.sharing import split
from smpc.errors import UserError
from smpc.local import run_local
from smpc.wire.messages import Job, JobInput

pytestmark = pytest.mark.timeout(180)


def _sites(tmp_path, rng, sizes=(40, 25, 61)):
    sites, tables = {}, {}
    for i, n in enumerate(sizes):
        age = rng.integers(18, 95, size=n)
        bmi = np.round(rng.normal(26, 4, size=n), 2)
        lines = ["age,bmi"] + [
            f"{a},{'' if (i == 1 and j % 7 == 3) else b}"
            for j, (a, b) in enumerate(zip(age, bmi, strict=True))
        ]
        path = tmp_path / f"site{i}.csv"
        path.write_text("\n".join(lines) + "\n")
        bmi = np.where([(i == 1 and j % 7 == 3) for j in range(n)], np.nan, bmi)
        sites[f"site{i}"], tables[f"site{i}"] = path, (age, bmi)
    return sites, tables


@pytest.mark.parametrize(
    ("parties", "threshold", "scheme", "broker"),
    [
        (2, 1, "additive", "embedded"),
        (3, 1, "shamir", "mosquitto"),
        (3, 2, "additive", "embedded"),
        (5, 2, "shamir", "auto"),
    ],
)
def test_secure_sum_count_mean_equal_numpy(tmp_path, parties, threshold, scheme, broker):
    sites, tables = _sites(tmp_path, np.random.default_rng(parties * 10 + threshold))
    spec = tmp_path / "cohort.yaml"
    spec.write_text(f"name: cohort\nprotocol: sum\ninputs: [age, bmi]\nscheme: {scheme}\n")
    run_local(spec, sites, tmp_path / "out", parties=parties, threshold=threshold, broker=broker)
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    ages = np.concatenate([t[0] for t in tables.values()])
    bmis = np.concatenate([t[1] for t in tables.values()])
    assert result["age"]["sum"] == int(ages.sum())  # exact
    assert result["age"]["count"] == len(ages)
    assert result["bmi"]["count"] == int((~np.isnan(bmis)).sum())  # missing cells left out
    expected = {"sum": np.nansum(bmis), "mean": np.nanmean(bmis)}
    for stat, value in expected.items():
        assert abs(result["bmi"][stat] - value) <= 1e-6 * max(1.0, abs(value))
    assert abs(result["age"]["mean"] - ages.mean()) <= 1e-9


def test_fedavg_weighted_average_equals_numpy(tmp_path):
    rng = np.random.default_rng(5)
    sites, models = {}, []
    for i, n in enumerate((10, 250, 37)):
        model = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3)}
        np.savez(tmp_path / f"s{i}.npz", num_examples=n, **model)
        sites[f"s{i}"] = tmp_path / f"s{i}.npz"
        models.append((n, model))
    spec = tmp_path / "round.yaml"
    spec.write_text("name: round\nprotocol: fedavg\n")
    run_local(spec, sites, tmp_path / "out", parties=3, threshold=1)
    with np.load(tmp_path / "out" / "model.npz") as got:
        total = sum(n for n, _ in models)
        for name in ("w", "b"):
            want = sum(n * m[name].astype(np.float64) for n, m in models) / total
            assert got[name].shape == want.shape
            assert np.abs(got[name] - want).max() <= 1e-6


def test_unknown_broker_is_a_clear_error(tmp_path):
    sites, _ = _sites(tmp_path, np.random.default_rng(2))
    spec = tmp_path / "cohort.yaml"
    spec.write_text("name: cohort\nprotocol: sum\ninputs: [age]\n")
    with pytest.raises(UserError, match="--broker rabbitmq: choose one of auto, mosquitto"):
        run_local(spec, sites, tmp_path / "out", broker="rabbitmq")
    assert not (tmp_path / "out").exists()


def test_too_few_sites_is_a_clear_error_and_opens_nothing(tmp_path):
    sites, _ = _sites(tmp_path, np.random.default_rng(1))
    spec = tmp_path / "cohort.yaml"
    spec.write_text("name: cohort\nprotocol: sum\ninputs: [age]\nmin_sites: 4\n")
    with pytest.raises(UserError, match="min_sites"):
        run_local(spec, sites, tmp_path / "out", parties=3, threshold=1)
    assert not (tmp_path / "out" / "result.json").exists()


def test_tampered_result_share_is_detected():
    job = Job(
        id="j", inputs=(JobInput(name="x.sum", frac_bits=0, int_bits=30),), t=1, n=3,
        modulus=FAST.modulus, analyst="analyst", close=("a", "b"),
    )  # fmt: skip
    secret = FAST.from_int(np.arange(4))
    shares = {s.party: s.expand(FAST, (4,)) for s in split(secret, FAST, 3, 1)}
    assert _open(shares, job, job.inputs[0]).tolist() == [0, 1, 2, 3]
    shares[2] = FAST.add(shares[2], FAST.from_int(np.array([0, 0, 1, 0])))
    with pytest.raises(JobFailed, match="tampered"):
        _open(shares, job, job.inputs[0])


@pytest.mark.parametrize(("parties", "scheme"), [(2, "additive"), (3, "shamir")])
def test_deliver_parties_opens_inside_mpyc_over_tls(tmp_path, parties, scheme):
    """The parties run an MPyC session (party-CA TLS) and each signs what it opened."""
    sites, tables = _sites(tmp_path, np.random.default_rng(parties))
    spec = tmp_path / "cohort.yaml"
    spec.write_text(
        f"name: cohort\nprotocol: sum\ninputs: [age]\nscheme: {scheme}\ndeliver: parties\n"
    )
    run_local(spec, sites, tmp_path / "out", parties=parties, threshold=1, workdir=tmp_path / "w")
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    ages = np.concatenate([t[0] for t in tables.values()])
    assert result["age"]["sum"] == int(ages.sum()) and result["age"]["count"] == len(ages)
    logs = [(tmp_path / "w" / f"party{i}.log").read_text() for i in range(parties)]
    assert all("event=session-start" in log and "opened=mpyc" in log for log in logs)


def test_parties_reporting_different_opened_values_are_detected():
    job = Job(
        id="j", inputs=(JobInput(name="x.sum", frac_bits=0, int_bits=30),), t=1, n=3,
        modulus=FAST.modulus, analyst="analyst", close=("a", "b"), deliver="parties",
    )  # fmt: skip
    same = {i: np.array([1, 2], dtype=object) for i in range(3)}
    assert _open(same, job, job.inputs[0]).tolist() == [1, 2]
    same[1] = np.array([1, 3], dtype=object)
    with pytest.raises(JobFailed, match=r"parties disagree .*parties \[1\]"):
        _open(same, job, job.inputs[0])


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smpc.cli", "local", *args],
        capture_output=True, text=True, timeout=170, cwd=cwd,
    )  # fmt: skip


def test_a_failing_site_fails_the_run_naming_it(tmp_path):
    """One site's bad value stops the run (non-zero, the site and its reason on stderr)
    unless the spec allows fewer sites; the success line then names the sites used."""
    sites, _ = _sites(tmp_path, np.random.default_rng(4))
    (tmp_path / "site2.csv").write_text("age,bmi\n1e308,20\n40,21\n")
    spec = tmp_path / "cohort.yaml"
    spec.write_text("name: cohort\nprotocol: sum\ninputs: [age]\n")
    args = [f"--site={name}={path}" for name, path in sites.items()]
    run = _cli("--spec", str(spec), *args, "--out", str(tmp_path / "out"))
    assert run.returncode == 2, run.stderr
    assert "site site2: " in run.stderr and "site2.csv: row 2, column" in run.stderr, run.stderr
    assert "cohort: sum over" not in run.stdout
    assert not (tmp_path / "out" / "result.json").exists()

    (tmp_path / "site2.csv").write_text("age,bmi\n40,21\n")
    run = _cli("--spec", str(spec), *args, "--out", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    assert "over 3 of 3 sites (site0, site1, site2)" in run.stdout


def test_a_failing_site_is_left_out_when_min_sites_allows(tmp_path, capsys):
    sites, tables = _sites(tmp_path, np.random.default_rng(4))
    (tmp_path / "site2.csv").write_bytes(b"age,bmi\n4\xe9,20\n")
    spec = tmp_path / "cohort.yaml"
    spec.write_text("name: cohort\nprotocol: sum\ninputs: [age]\nmin_sites: 2\n")
    run = run_local(spec, sites, tmp_path / "out", timeout=40)  # the analyst waits 20 s for site2
    assert run.sites == ("site0", "site1")
    assert "site site2 is not in the result: " in capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["age"]["sum"] == int(tables["site0"][0].sum() + tables["site1"][0].sum())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--site", "site0=x.csv"], "--site site0: given twice"),
        (["--threshold", "3"], "smpc: error: --threshold: threshold 3 must be below"),
        (["--parties", "1"], "smpc: error: --parties: at least 2 computing parties"),
    ],
)
def test_argument_errors_name_the_arguments(tmp_path, extra, message):
    sites, _ = _sites(tmp_path, np.random.default_rng(5))
    spec = tmp_path / "cohort.yaml"
    spec.write_text("name: cohort\nprotocol: sum\ninputs: [age]\n")
    args = [f"--site={name}={path}" for name, path in sites.items()]
    run = _cli("--spec", str(spec), *args, *extra, "--out", str(tmp_path / "out"))
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert "federation.yaml" not in run.stderr
