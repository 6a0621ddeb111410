"""Party dropout: a Shamir linear job completes with ``min_parties`` computing parties.

The rules one at a time (spec, job message, party, analyst's close), then on real
processes: Mosquitto, three party daemons (N = 3, t = 1) and three ``smpc site serve``,
one party SIGKILLed before the job closes.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from smpc.analyst.jobs import JobFailed, _closing, _open, _participants, publish_job
from smpc.config.federation import load_federation
from smpc.core.encoding import FixedPoint
from smpc.core.field import FAST
from smpc.core.sharing import split
from smpc.errors import UserError
from smpc.party.audit import entries
from smpc.party.config import Policy
from smpc.party.service import PartyService
from smpc.party.store import PartyStore
from smpc.protocols.registry import parse_spec
from smpc.site.policy import SitePolicy
from smpc.wire.messages import Job, JobInput, stamp_job, verify_status
from tests.brokers import federation_of, kit, requires_mosquitto
from tests.simulate import simulate_cohort
from tests.test_gwas_local import _plink, assert_same_table
from tests.test_party import _close, _envelopes, _job, _publish, kits  # noqa: F401 - a fixture
from tests.test_upload_integration import PARTIES, SITES, _broker, _stop, _wait_for_log

# --- the spec field -------------------------------------------------------------------


def _spec(text: str, keys_dir: Path):
    return parse_spec(yaml.safe_load(text), "s.yaml", federation_of(keys_dir))


def test_min_parties_defaults_to_every_party_and_takes_t_plus_one_to_n(keys_dir):
    assert _spec("name: s\nprotocol: sum\ninputs: [x]\n", keys_dir).min_parties == 3
    two = _spec("name: s\nprotocol: sum\ninputs: [x]\nmin_parties: 2\n", keys_dir)
    assert two.min_parties == 2 and two.to_dict()["min_parties"] == 2
    assert _spec("name: g\nprotocol: gwas\nreveal: aggregates\nmin_parties: 2\n", keys_dir)
    for value, reason in (
        (4, "4 is more than the 3 computing parties"),
        (1, "1 is fewer than t+1 = 2: Shamir sharing with threshold 1 needs 2"),
    ):
        with pytest.raises(UserError, match=re.escape(reason)):
            _spec(f"name: s\nprotocol: sum\ninputs: [x]\nmin_parties: {value}\n", keys_dir)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (
            "scheme: additive",
            r"min_parties: 2: additive sharing needs all N = 3 computing parties \(every "
            "party's share is needed",
        ),
        ("dp: {epsilon: 1.0, clip: 1.0}", "dp noise is shared inside an MPyC session among all"),
        ("deliver: parties", "deliver: parties opens the result inside an MPyC session"),
    ],
)
def test_jobs_that_need_every_party_refuse_fewer(keys_dir, extra, reason):
    with pytest.raises(UserError, match=reason):
        _spec(f"name: s\nprotocol: sum\ninputs: [x]\nmin_parties: 2\n{extra}\n", keys_dir)


def test_gwas_statistics_refuse_fewer_than_every_party(keys_dir):
    with pytest.raises(UserError, match="reveal: statistics computes inside an MPyC session"):
        _spec("name: g\nprotocol: gwas\nmin_parties: 2\n", keys_dir)


# --- the job message ------------------------------------------------------------------


def test_a_close_names_at_least_min_parties_and_only_a_close_names_parties():
    job = _job(min_parties=2)
    closed = _close(job, ("oslo", "bergen")).model_copy(update={"parties": ("alpha", "beta")})
    assert Job.model_validate(closed.model_dump()).parties == ("alpha", "beta")
    assert closed.unclosed() == job and closed.digest() == job.digest()
    for fields, reason in (
        ({"parties": ("alpha", "beta")}, "parties are named only with close"),
        ({"min_parties": 1}, "min_parties 1 must be between t+1 = 2 and n = 3"),
        ({"scheme": "additive", "t": 2, "min_parties": 2}, "additive sharing needs all n"),
    ):
        with pytest.raises(ValueError, match=re.escape(reason)):
            Job.model_validate({**job.model_dump(), **fields})
    with pytest.raises(ValueError, match="fewer than min_parties 2"):
        Job.model_validate({**closed.model_dump(), "parties": ["alpha"]})


# --- a party's side of a close --------------------------------------------------------


def _held(kits, tmp_path, name: str, job: Job) -> PartyService:  # noqa: F811
    kit = kits[name]
    party = PartyService(kit, load_federation(kit.federation_file), PartyStore(tmp_path / name))
    party.handle_job(_publish(job, kits))
    index = PARTIES.index(name)
    for site in ("oslo", "bergen"):
        envelope = _envelopes(kits, site, meta={"job": job.digest()})[index]
        assert party.handle_upload(envelope).ack.status == "stored"
    return party


def _state(reply, kits) -> tuple[str, str]:  # noqa: F811
    status = verify_status(reply.status, kits["alpha"].directory)[1]
    return status.state, status.reason


def test_only_the_parties_of_the_close_compute_and_the_close_is_set_once(kits, tmp_path):  # noqa: F811
    job = _job(min_parties=2)
    closed = _close(job, ("oslo", "bergen")).model_copy(update={"parties": ("alpha", "beta")})
    beta = _held(kits, tmp_path, "beta", job)
    reply = beta.handle_job(_publish(closed, kits))
    assert _state(reply, kits)[0] == "done" and [name for name, _ in reply.results] == ["x"]
    closing = [
        e for _, e in entries(tmp_path / "beta" / "audit.jsonl") if e["event"] == "job-closed"
    ]
    assert closing[-1]["parties"] == ["alpha", "beta"]
    # another party set is another close: refused, nothing recomputed
    other = closed.model_copy(update={"parties": ("alpha", "beta", "gamma")})
    assert beta.handle_job(_publish(other, kits)) is None
    again = beta.handle_job(_publish(closed, kits))
    assert again.results == reply.results

    gamma = _held(kits, tmp_path, "gamma", job)
    state, reason = _state(gamma.handle_job(_publish(closed, kits)), kits)
    assert state == "failed"
    assert "party gamma is not among the parties the job was closed with (alpha, beta)" in reason
    assert gamma.store.released(job.id).results == ()


def test_a_job_opened_inside_mpyc_is_not_computed_without_every_party(kits, tmp_path):  # noqa: F811
    job = _job(deliver="parties", min_parties=2)  # as no spec lets it: the party checks too
    closed = _close(job, ("oslo", "bergen")).model_copy(update={"parties": ("alpha", "beta")})
    beta = _held(kits, tmp_path, "beta", job)
    state, reason = _state(beta.handle_job(_publish(closed, kits)), kits)
    assert state == "failed"
    assert reason == (
        "the close leaves out gamma, but it is opened inside an MPyC session among all parties"
    )


def test_a_party_refuses_a_job_below_its_min_parties_or_unlike_its_spec(kits, tmp_path):  # noqa: F811
    kit = kits["beta"]
    federation = load_federation(kit.federation_file)
    strict = PartyService(kit, federation, PartyStore(tmp_path / "b"), Policy(min_parties=3))
    assert strict.refusal(_job(min_parties=2)) == "min_parties 2 is below this party's minimum 3"
    assert strict.refusal(_job()) == ""
    spec = {"name": "s", "protocol": "sum", "inputs": ["x"], "min_parties": 2}
    party = PartyService(kit, federation, PartyStore(tmp_path / "c"))
    assert party.refusal(_job(spec=spec, min_parties=2)) == ""
    assert party.refusal(_job(spec=spec)) == "the job's min_parties 3 is not its spec's 2"
    site = SitePolicy(min_parties=3)
    assert site.refusal(_job(min_parties=2)) == "min_parties 2 is below this site's minimum 3"


# --- the analyst's close --------------------------------------------------------------


def test_the_analyst_closes_with_the_parties_it_has_or_names_the_missing_one(keys_dir):
    federation = federation_of(keys_dir)
    both = {"oslo": "u1", "bergen": "u2", "tromso": "u3"}
    job = _job(min_parties=2)
    closed, members = _closing(job, {0: both, 1: both}, PARTIES, federation)
    assert members == [0, 1] and closed.parties == ("alpha", "beta")
    assert closed.close == SITES and closed.uploads == both
    # a party short of a site is left out when min_parties allow: the sites matter
    short = {"oslo": "u1", "bergen": "u2"}
    assert _participants({0: both, 1: short, 2: both}, 2) == ([0, 2], both)
    assert _participants({0: both, 1: short, 2: both}, 3) == ([0, 1, 2], short)
    with pytest.raises(JobFailed, match=r"needs min_parties 2 of 3, but beta, gamma did not"):
        _closing(job, {0: both}, PARTIES, federation)
    with pytest.raises(
        JobFailed,
        match=r"needs all 3 computing parties \(additive sharing needs every party's share\), "
        "but gamma did not answer the job; nothing was opened",
    ):
        _closing(_job(scheme="additive", t=2), {0: both, 1: both}, PARTIES, federation)


def test_the_analyst_opens_from_the_parties_that_took_part_and_checks_the_extra_ones():
    """N = 4, t = 1, party 1 dropped: parties 0, 2 and 3 reconstruct, and a tampered
    share of one of them is off the polynomial of the other two."""
    encoding = FixedPoint(16, 20)
    x = np.array([1.5, -2.25, 1000.0])
    split_ = split(encoding.encode(x, FAST), FAST, 4, 1)
    shares = {i: share.expand(FAST, x.shape) for i, share in enumerate(split_)}
    job = _job(n=4, min_parties=3, close=("oslo", "bergen"), uploads={"oslo": "u", "bergen": "v"})
    job = job.model_copy(update={"parties": ("alpha", "gamma", "delta")})
    spec = job.inputs[0]
    took_part = {i: shares[i] for i in (0, 2, 3)}
    assert np.array_equal(_open(took_part, job, spec), x)
    assert np.array_equal(_open({i: shares[i] for i in (2, 3)}, job, spec), x)
    took_part[3] = FAST.add(took_part[3], np.ones(3, dtype=FAST.dtype))
    with pytest.raises(JobFailed, match=r"\(party 3 off the polynomial of the others\)"):
        _open(took_part, job, spec)


# --- on real processes ----------------------------------------------------------------


def slow(test):
    return requires_mosquitto(pytest.mark.slow(pytest.mark.timeout(300)(test)))


def _start_party(name: str, keys_dir: Path, workdir: Path, log: str) -> subprocess.Popen:
    """``smpc party serve`` logging to ``workdir/log``, once it is connected."""
    config = workdir / f"{name}.yaml"
    config.write_text(f"kit: {keys_dir / 'kits' / name}\nstore: {workdir / 'store' / name}\n")
    out = open(workdir / log, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "smpc.cli", "party", "serve", "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    proc.log_path = workdir / log  # type: ignore[attr-defined]
    return proc


def _start_site(site: str, keys_dir: Path, workdir: Path, data: dict[str, Path]):
    config = workdir / f"{site}-site.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kit": str(keys_dir / "kits" / site),
                "data": {k: str(v) for k, v in data.items()},
                "state": str(workdir / f"{site}.answered"),
            }
        )
    )
    out = open(workdir / f"{site}-site.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "smpc.cli", "site", "serve", "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    proc.log_path = workdir / f"{site}-site.log"  # type: ignore[attr-defined]
    return proc


class Running:
    """Mosquitto, the three party daemons and the three site daemons of one test."""

    def __init__(self, keys_dir: Path, workdir: Path) -> None:
        self.keys_dir, self.workdir = keys_dir, workdir
        self.parties: dict[str, subprocess.Popen] = {}
        self.sites: list[subprocess.Popen] = []

    def start_party(self, name: str, log: str | None = None) -> subprocess.Popen:
        proc = _start_party(name, self.keys_dir, self.workdir, log or f"{name}.log")
        self.parties[name] = proc
        _wait_for_log(proc, "event=party-connected")
        return proc

    def kill(self, name: str) -> None:
        proc = self.parties[name]
        proc.kill()  # SIGKILL: no goodbye to the broker, no store closed
        proc.wait(10)

    def run(self, spec: str, *args: str) -> subprocess.CompletedProcess:
        path = self.workdir / "spec.yaml"
        path.write_text(spec)
        analyst = ["--kit", str(self.keys_dir / "kits" / "analyst")]
        return subprocess.run(
            [sys.executable, "-m", "smpc.cli", "run", str(path), *analyst, *args],
            capture_output=True, text=True, timeout=200,
        )  # fmt: skip


@pytest.fixture
def running(keys_dir, tmp_path):
    """Mosquitto and the three parties up; a test starts its sites (:func:`_start_sites`)."""
    state = Running(keys_dir, tmp_path)
    with _broker(keys_dir, tmp_path):
        try:
            for name in PARTIES:
                state.start_party(name)
            yield state
        finally:
            _stop([*state.parties.values(), *state.sites])


def _start_sites(state: Running, data: dict[str, dict[str, Path]]) -> None:
    for site in SITES:
        state.sites.append(_start_site(site, state.keys_dir, state.workdir, data[site]))
    for proc in state.sites:
        _wait_for_log(proc, "event=site-serving")


def _log(path: Path) -> str:
    return path.read_text(errors="replace")


@slow
def test_sum_and_fedavg_complete_without_a_killed_party(running, tmp_path):
    rng = np.random.default_rng(17)
    data: dict[str, dict[str, Path]] = {}
    values, models, examples = {}, {}, {}
    for i, site in enumerate(SITES):
        values[site] = np.round(rng.normal(50, 10, 30 + 10 * i), 3)
        (tmp_path / f"{site}.csv").write_text(
            "x\n" + "\n".join(f"{v:g}" for v in values[site]) + "\n"
        )
        models[site] = rng.normal(0, 1, (3, 4))
        examples[site] = 10 * (i + 1)
        np.savez(tmp_path / f"{site}.npz", w=models[site], num_examples=examples[site])
        data[site] = {"sum": tmp_path / f"{site}.csv", "fedavg": tmp_path / f"{site}.npz"}
    _start_sites(running, data)

    # fedavg: gamma accepts the job, then is SIGKILLed before the close
    gamma = running.parties["gamma"]
    fedavg = "name: avg\nprotocol: fedavg\ninputs: [w]\nmin_parties: 2\n"
    path = tmp_path / "spec.yaml"
    path.write_text(fedavg)
    args = ["--kit", str(running.keys_dir / "kits" / "analyst"), "--out", str(tmp_path / "fa")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "smpc.cli", "run", str(path), *args, "--wait", "15"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while "event=job-accepted" not in _log(gamma.log_path):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        running.kill("gamma")
        _, err = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    weights = np.array([examples[s] for s in SITES], dtype=float)
    expected = sum(w * models[s] for w, s in zip(weights, SITES, strict=True)) / weights.sum()
    with np.load(tmp_path / "fa" / "model.npz") as got:
        assert np.abs(got["w"] - expected).max() <= 1e-6
    result = json.loads((tmp_path / "fa" / "result.json").read_text())
    assert result["parties"] == ["alpha", "beta"]
    assert sorted(next(iter(result["audit"].values()))) == ["alpha", "beta"]

    # sum: gamma is down before the job is published
    run = running.run(
        "name: total\nprotocol: sum\ninputs: [x]\nmin_parties: 2\n", "--out", str(tmp_path / "s")
    )
    assert run.returncode == 0, run.stderr
    pooled = np.concatenate([values[s] for s in SITES])
    result = json.loads((tmp_path / "s" / "result.json").read_text())
    assert abs(result["x"]["sum"] - pooled.sum()) <= 1e-6 * abs(pooled.sum())
    assert result["x"]["count"] == len(pooled)
    assert result["parties"] == ["alpha", "beta"]
    (job_id,) = result["audit"]
    alpha = tmp_path / "store" / "alpha" / "audit.jsonl"
    (closing,) = [e for _, e in entries(alpha) if e["event"] == "job-closed" and e["job"] == job_id]
    assert closing["parties"] == ["alpha", "beta"] and closing["sites"] == list(SITES)

    # additive sharing needs every party: refused up front below N, failed naming gamma at N
    additive = "name: add\nprotocol: sum\ninputs: [x]\nscheme: additive\n"
    refused = running.run(additive + "min_parties: 2\n", "--out", str(tmp_path / "a"))
    assert refused.returncode != 0
    assert "min_parties: 2: additive sharing needs all N = 3 computing parties" in refused.stderr
    failed = running.run(additive, "--out", str(tmp_path / "a"), "--wait", "8")
    assert failed.returncode != 0
    assert (
        "needs all 3 computing parties (additive sharing needs every party's share), but "
        "gamma did not answer the job; nothing was opened" in failed.stderr
    ), failed.stderr
    assert not (tmp_path / "a" / "result.json").exists()

    # gamma comes back: the broker kept its session, so it receives what the sites
    # published to it meanwhile, the sum job's shares too (and stays out of that job)
    back = running.start_party("gamma", "gamma-back.log")
    deadline = time.monotonic() + 30
    while _log(back.log_path).count(f"event=share-stored job={job_id}") < len(SITES):
        assert time.monotonic() < deadline, _log(back.log_path)
        time.sleep(0.1)
    _wait_for_log(back, "is not among the parties the job was closed with (alpha, beta)")


@slow
def test_gwas_aggregates_go_on_and_statistics_fail_naming_the_missing_party_until_it_is_back(
    running, tmp_path
):
    if shutil.which("plink1.9") is None:
        pytest.fail("plink1.9 is not installed (tests/run.sh installs the Debian package)")
    cohort = simulate_cohort(tmp_path / "cohort", 300, 150, 3, seed=5, site_names=SITES)
    _start_sites(running, {s: {"gwas": cohort.prefixes[s]} for s in SITES})
    running.kill("gamma")
    spec = "name: gw\nprotocol: gwas\ntests: [assoc]\n"  # reveal: statistics, inside MPyC
    failed = running.run(spec, "--out", str(tmp_path / "down"), "--wait", "15")
    assert failed.returncode != 0
    assert (
        "needs all 3 computing parties (it is opened inside an MPyC session among all "
        "parties), but gamma did not answer the job; nothing was opened" in failed.stderr
    ), failed.stderr
    assert not (tmp_path / "down" / "gw.assoc").exists()
    plink = _plink(cohort, tmp_path / "plink", "--assoc")

    # the pooled counts are a sum: with reveal: aggregates two parties suffice
    run = running.run(spec + "reveal: aggregates\nmin_parties: 2\n", "--out", str(tmp_path / "agg"))
    assert run.returncode == 0, run.stderr
    assert_same_table(tmp_path / "agg" / "gw.assoc", plink.with_suffix(".assoc"))
    assert json.loads((tmp_path / "agg" / "result.json").read_text())["parties"] == [
        "alpha",
        "beta",
    ]

    running.start_party("gamma", "gamma-back.log")
    run = running.run(spec, "--out", str(tmp_path / "back"))
    assert run.returncode == 0, run.stderr
    assert_same_table(tmp_path / "back" / "gw.assoc", plink.with_suffix(".assoc"))
    result = json.loads((tmp_path / "back" / "result.json").read_text())
    assert result["parties"] == list(PARTIES)


@slow
def test_an_upload_succeeds_with_min_parties_acks_and_the_party_back_gets_its_shares(
    running, keys_dir, tmp_path
):
    running.kill("gamma")
    federation = federation_of(keys_dir)
    job = stamp_job(
        Job(
            id="drop-up", inputs=(JobInput(name="x", frac_bits=20, int_bits=30),), t=1, n=3,
            modulus=FAST.modulus, analyst="analyst", min_parties=2,
        ),
        600,
    )  # fmt: skip
    asyncio.run(publish_job(kit(keys_dir, "analyst"), federation, job))
    np.save(tmp_path / "x.npy", np.arange(5.0))
    keep = tmp_path / "kept"
    up = subprocess.run(
        [
            sys.executable, "-m", "smpc.cli", "upload", "--kit", str(keys_dir / "kits" / "oslo"),
            "--job", job.id, "--input", f"x={tmp_path / 'x.npy'}", "--timeout", "6",
            "--keep", str(keep),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert "uploaded x to 2 of 3 parties" in up.stdout and "no ack from gamma" in up.stdout
    assert "event=upload-partial" in up.stderr and "missing=gamma" in up.stderr
    assert any(keep.rglob("*")), "the envelopes stay kept for a re-run"

    back = running.start_party("gamma", "gamma-back.log")
    deadline = time.monotonic() + 30
    while f"event=share-stored job={job.id} input=x site=oslo" not in _log(back.log_path):
        assert time.monotonic() < deadline, _log(back.log_path)
        time.sleep(0.1)
    with PartyStore(tmp_path / "store" / "gamma") as store:
        assert [(s.input, s.site) for s in store.shares(job.id)] == [("x", "oslo")]
