"""Real processes end to end: Mosquitto (TLS, ACL), 3 party daemons, 3 uploaders.

Every party must end with exactly its own shares, the stored shares must
reconstruct the uploaded data, a party killed with SIGKILL mid-upload and
restarted must lose and duplicate nothing, and the broker must never carry a
plaintext share or input value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from smpc.analyst.jobs import publish_job
from smpc.broker.mosquitto import MosquittoBroker
from smpc.core.encoding import FixedPoint
from smpc.core.field import FAST
from smpc.core.sharing import reconstruct
from smpc.party.store import PartyStore
from smpc.pki.kit import load_broker_kit
from smpc.wire.header import ShareHeader
from smpc.wire.messages import Job, JobInput
from smpc.wire.packaging import InputShare
from tests.brokers import federation_of, kit, requires_mosquitto

pytestmark = [requires_mosquitto, pytest.mark.timeout(240)]

PARTIES = ("alpha", "beta", "gamma")
SITES = ("oslo", "bergen", "tromso")
ENCODING = FixedPoint(frac_bits=20, int_bits=30)


class ObservedMosquitto(MosquittoBroker):
    """The federation's Mosquitto, with the analyst also allowed to read every topic.

    The test's eavesdropper: it records every payload the broker forwards.
    """

    def _prepare(self) -> None:
        super()._prepare()
        self.acl_file.write_text(self.acl_file.read_text() + "\nuser analyst\ntopic read smpc/#\n")


class Recorder:
    """Subscribes to everything as the analyst and keeps every raw payload."""

    def __init__(self, host: str, port: int, tls) -> None:
        self.payloads: list[bytes] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(host, port, tls),))

    async def _run(self, host, port, tls) -> None:
        import aiomqtt

        # the broker going away (a test killed it) ends the record there
        with contextlib.suppress(aiomqtt.MqttError):
            await self._record(host, port, tls)

    async def _record(self, host, port, tls) -> None:
        import aiomqtt

        from smpc.net.connection import client_tls_context

        async with aiomqtt.Client(
            host, port, identifier="analyst.recorder", tls_context=client_tls_context(tls)
        ) as client:
            await client.subscribe("smpc/#", qos=1)
            self._ready.set()
            # One pending read kept across the stop checks: cancelling a read of the
            # message iterator on a timeout can drop the message it was taking.
            messages = aiter(client.messages)
            reading = None
            while not self._stop.is_set():
                if reading is None:
                    reading = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({reading}, timeout=0.2)
                if done:
                    self.payloads.append(bytes(reading.result().payload))
                    reading = None
            if reading is not None:
                reading.cancel()

    def __enter__(self) -> Recorder:
        self._thread.start()
        assert self._ready.wait(15), "recorder did not connect"
        return self

    def __exit__(self, *exc) -> None:
        count = -1
        while count != len(self.payloads):  # let what is in flight arrive
            count = len(self.payloads)
            time.sleep(0.5)
        self._stop.set()
        self._thread.join(10)


def _start_party(name: str, keys_dir: Path, workdir: Path) -> subprocess.Popen:
    config = workdir / f"{name}.yaml"
    config.write_text(f"kit: {keys_dir / 'kits' / name}\nstore: {workdir / 'store' / name}\n")
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "smpc.cli", "party", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_path = workdir / f"{name}.log"  # type: ignore[attr-defined]
    return proc


def _start_site(config: Path, log_path: Path) -> subprocess.Popen:
    """``smpc site serve`` on ``config``, logging to ``log_path``, once it serves."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "smpc.cli", "site", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_path = log_path  # type: ignore[attr-defined]
    try:
        _wait_for_log(proc, "event=site-serving")
    except BaseException:
        _stop([proc])
        raise
    return proc


def _wait_for_log(proc: subprocess.Popen, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.log_path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {proc.log_path}:\n{proc.log_path.read_text()}")


def _stop(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _upload(site: str, keys_dir: Path, data: Path, job: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable, "-m", "smpc.cli", "upload", "--kit", str(keys_dir / "kits" / site),
            "--job", job, "--input", f"x={data}", "--timeout", "90",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _publish(keys_dir: Path, job_id: str) -> Job:
    job = Job(
        id=job_id, inputs=(JobInput(name="x", frac_bits=ENCODING.frac_bits,
                                    int_bits=ENCODING.int_bits),),
        t=1, n=3, modulus=FAST.modulus, analyst="analyst",
    )  # fmt: skip
    asyncio.run(publish_job(kit(keys_dir, "analyst"), federation_of(keys_dir), job))
    return job


def _check_stores(workdir: Path, data: dict[str, np.ndarray], job: str) -> dict:
    """Every party holds exactly one share per site; they reconstruct the inputs."""
    values: dict[str, dict[int, np.ndarray]] = {site: {} for site in data}
    bodies = {}
    for index, party in enumerate(PARTIES):
        with PartyStore(workdir / "store" / party) as store:
            shares = store.shares(job)
            assert sorted((s.input, s.site) for s in shares) == sorted(("x", s) for s in data)
            files = list((workdir / "store" / party / "shares").rglob("*.share"))
            assert len(files) == len(data)
            for share in shares:
                header = ShareHeader.from_json(share.header.encode())
                assert header.party == index
                body = store.read_share(share)
                bodies[(party, share.site)] = body
                values[share.site][index] = InputShare(header, body).values()
    for site, x in data.items():
        for pair in ((0, 1), (1, 2), (0, 2)):
            got = reconstruct({i: values[site][i] for i in pair}, FAST, 1)
            assert np.abs(ENCODING.decode(got, FAST) - x).max() <= 2.0 ** -(ENCODING.frac_bits + 1)
    return bodies


def _inputs(tmp_path: Path, size: int) -> tuple[dict[str, np.ndarray], dict[str, Path]]:
    rng = np.random.default_rng(size)
    data, paths = {}, {}
    for site in SITES:
        data[site] = rng.normal(0, 1000, size=size)
        paths[site] = tmp_path / f"{site}.npy"
        np.save(paths[site], data[site])
    return data, paths


def _broker(keys_dir: Path, tmp_path: Path) -> ObservedMosquitto:
    federation = federation_of(keys_dir)
    return ObservedMosquitto(
        federation,
        load_broker_kit(keys_dir / "kits" / "broker"),
        tmp_path / "broker",
        port=federation.broker.port,
    )


SHARE_BYTES = 2 * 8 * 50_000 * len(SITES)  # two full shares (t = 1, compact) per site


def test_three_parties_three_sites_through_mosquitto(keys_dir, tmp_path):
    data, paths = _inputs(tmp_path, 50_000)
    parties = []
    with (
        _broker(keys_dir, tmp_path) as broker,
        Recorder(*broker.address, kit(keys_dir, "analyst").tls) as recorder,
    ):
        try:
            parties = [_start_party(p, keys_dir, tmp_path) for p in PARTIES]
            for proc in parties:
                _wait_for_log(proc, "event=party-connected")
            _publish(keys_dir, "job-a")
            uploads = [_upload(site, keys_dir, paths[site], "job-a") for site in SITES]
            for up in uploads:
                out, err = up.communicate(timeout=120)
                assert up.returncode == 0, err
                assert "uploaded x to 3 parties" in out
            status = subprocess.run(
                [sys.executable, "-m", "smpc.cli", "party", "status", "--json",
                 "--config", str(tmp_path / "beta.yaml")],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            rows = json.loads(status.stdout)
            assert sorted(r["site"] for r in rows) == sorted(SITES)
            # The recorder is one more subscriber: the parties acked, but its own copies
            # of the last messages may still be on their way to it.
            deadline = time.monotonic() + 20
            while sum(map(len, recorder.payloads)) <= SHARE_BYTES and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            _stop(parties)
    for proc in parties:
        assert proc.returncode == 0
        assert "event=party-stop" in proc.log_path.read_text()
    bodies = _check_stores(tmp_path, data, "job-a")

    # The broker carried ciphertext only: no piece of any share or input is visible.
    traffic = b"".join(recorder.payloads)
    assert len(traffic) > SHARE_BYTES  # the shares did pass through it
    for body in bodies.values():
        for start in range(0, len(body) - 16, max(1, len(body) // 7)):
            assert body[start : start + 16] not in traffic
    for x in data.values():
        raw = x.tobytes()
        for start in range(0, len(raw) - 16, len(raw) // 7):
            assert raw[start : start + 16] not in traffic


def test_party_killed_mid_upload_loses_and_duplicates_nothing(keys_dir, tmp_path):
    data, paths = _inputs(tmp_path, 400_000)
    parties = []
    with _broker(keys_dir, tmp_path):
        try:
            parties = [_start_party(p, keys_dir, tmp_path) for p in PARTIES]
            for proc in parties:
                _wait_for_log(proc, "event=party-connected")
            _publish(keys_dir, "job-k")
            uploads = [_upload(site, keys_dir, paths[site], "job-k") for site in SITES]
            _wait_for_log(parties[1], "event=share-stored", timeout=60)
            os.kill(parties[1].pid, signal.SIGKILL)
            parties[1].wait(10)
            time.sleep(1.0)
            parties[1] = _start_party("beta", keys_dir, tmp_path)
            for up in uploads:
                _, err = up.communicate(timeout=150)
                assert up.returncode == 0, err
        finally:
            _stop(parties)
    _check_stores(tmp_path, data, "job-k")


def test_upload_names_the_party_that_does_not_answer(keys_dir, tmp_path):
    _, paths = _inputs(tmp_path, 1000)
    parties = []
    with _broker(keys_dir, tmp_path):
        try:
            parties = [_start_party(p, keys_dir, tmp_path) for p in ("alpha", "beta")]
            for proc in parties:
                _wait_for_log(proc, "event=party-connected")
            _publish(keys_dir, "job-m")
            up = subprocess.run(
                [sys.executable, "-m", "smpc.cli", "upload", "--kit",
                 str(keys_dir / "kits" / "oslo"), "--job", "job-m",
                 "--input", f"x={paths['oslo']}", "--timeout", "8"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        finally:
            _stop(parties)
    assert up.returncode == 2
    assert "no ack within 8 s from gamma" in up.stderr
    assert "alpha" not in up.stderr.split("from", 1)[1]


def test_site_serve_answers_a_new_job_once(keys_dir, tmp_path):
    data, paths = _inputs(tmp_path, 2000)
    config = tmp_path / "oslo-site.yaml"
    config.write_text(
        f"kit: {keys_dir / 'kits' / 'oslo'}\ninputs:\n  x: {paths['oslo']}\n"
        f"state: {tmp_path / 'oslo.answered'}\n"
    )
    procs = []
    with _broker(keys_dir, tmp_path):
        try:
            procs = [_start_party(p, keys_dir, tmp_path) for p in PARTIES]
            for proc in procs:
                _wait_for_log(proc, "event=party-connected")
            site = _start_site(config, tmp_path / "oslo-site.log")
            procs.append(site)
            _publish(keys_dir, "job-s")
            _wait_for_log(site, "event=upload-complete", timeout=60)
        finally:
            _stop(procs)
    assert site.returncode == 0
    assert (tmp_path / "oslo.answered").read_text().split() == ["job-s"]
    _check_stores(tmp_path, {"oslo": data["oslo"]}, "job-s")


TRAINER = """
import numpy as np

TARGETS = {"oslo": 1.0, "bergen": -2.0, "tromso": 5.0}
SIZES = {"oslo": 10, "bergen": 30, "tromso": 60}


def train(model, round, site):
    w = np.zeros(4) if model is None else model["w"]
    return {"w": w + 0.5 * (TARGETS[site] - w) + round}, SIZES[site]
"""


def test_smpc_run_trains_several_rounds_with_site_serve(keys_dir, tmp_path):
    """``smpc run`` with rounds: 3 against party daemons and three ``smpc site serve``."""
    trainer = tmp_path / "steps.py"
    trainer.write_text(TRAINER)
    spec = tmp_path / "steps.yaml"
    spec.write_text("name: steps\nprotocol: fedavg\ninputs: [w]\nrounds: 3\nround_timeout: 60\n")
    procs = []
    with _broker(keys_dir, tmp_path):
        try:
            procs = [_start_party(p, keys_dir, tmp_path) for p in PARTIES]
            for site in ("oslo", "bergen", "tromso"):
                config = tmp_path / f"{site}-site.yaml"
                config.write_text(
                    f"kit: {keys_dir / 'kits' / site}\ntrainer: {trainer}:train\n"
                    f"state: {tmp_path / (site + '.answered')}\n"
                )
                log = open(tmp_path / f"{site}-site.log", "ab")  # noqa: SIM115
                proc = subprocess.Popen(
                    [sys.executable, "-m", "smpc.cli", "site", "serve", "--config", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                proc.log_path = tmp_path / f"{site}-site.log"
                procs.append(proc)
            for i, proc in enumerate(procs):
                _wait_for_log(proc, "event=party-connected" if i < 3 else "event=site-serving")
            analyst = ["--kit", str(keys_dir / "kits" / "analyst"), "--out", str(tmp_path / "out")]
            run = subprocess.run(
                [sys.executable, "-m", "smpc.cli", "run", str(spec), *analyst],
                capture_output=True,
                text=True,
                timeout=240,
            )
        finally:
            _stop(procs)
    assert run.returncode == 0, run.stderr
    targets = {"oslo": 1.0, "bergen": -2.0, "tromso": 5.0}
    sizes = {"oslo": 10, "bergen": 30, "tromso": 60}
    w = np.zeros(4)
    for k in range(3):
        local = {s: w + 0.5 * (targets[s] - w) + k for s in targets}
        w = sum(sizes[s] * local[s] for s in targets) / sum(sizes.values())
    with np.load(tmp_path / "out" / "model.npz") as got:
        assert np.abs(got["w"] - w).max() <= 1e-6
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert [r["sites"] for r in history["rounds"]] == [["oslo", "bergen", "tromso"]] * 3


def test_site_serve_logs_bad_inputs_and_skipped_jobs_and_keeps_serving(keys_dir, tmp_path):
    """A Latin-1 CSV and a truncated .bed each give one logged line for their job; a job
    the site has no input for is skipped with its reason; the next good job is answered."""
    import shutil

    from smpc.analyst.jobs import build_job
    from smpc.protocols.registry import parse_spec

    gwas = Path(__file__).resolve().parents[1] / "smpc" / "data" / "gwas"
    for ext in ("bed", "bim", "fam", "pheno", "cov"):
        shutil.copy(gwas / f"oslo.{ext}", tmp_path / f"oslo.{ext}")
    bed = tmp_path / "oslo.bed"
    bed.write_bytes(bed.read_bytes()[:-100])
    csv = tmp_path / "x.csv"
    csv.write_bytes(b"x\n1\n2\xe9\n")
    config = tmp_path / "oslo-site.yaml"
    config.write_text(
        f"kit: {keys_dir / 'kits' / 'oslo'}\ninputs:\n  x: {csv}:x\n"
        f"data:\n  gwas: {tmp_path / 'oslo'}\nstate: {tmp_path / 'oslo.answered'}\n"
    )
    federation = federation_of(keys_dir)
    analyst = kit(keys_dir, "analyst")
    procs = []
    with _broker(keys_dir, tmp_path):
        try:
            procs = [_start_party(p, keys_dir, tmp_path) for p in PARTIES]
            for proc in procs:
                _wait_for_log(proc, "event=party-connected")
            site = _start_site(config, tmp_path / "oslo-site.log")
            procs.append(site)
            _publish(keys_dir, "job-latin1")
            _wait_for_log(site, "event=upload-failed job=job-latin1", timeout=60)
            spec = parse_spec(
                {"name": "g", "protocol": "gwas", "tests": ["assoc"]}, "g", federation
            )
            job = build_job(spec, analyst, federation, job_id="job-bed")
            asyncio.run(publish_job(analyst, federation, job))
            _wait_for_log(site, "event=upload-failed job=job-bed", timeout=60)
            spec = parse_spec({"name": "c", "protocol": "sum", "inputs": ["age"]}, "c", federation)
            job = build_job(spec, analyst, federation, job_id="job-age")
            asyncio.run(publish_job(analyst, federation, job))
            _wait_for_log(site, "event=job-skipped job=job-age", timeout=60)
            csv.write_text("x\n1\n2\n")
            _publish(keys_dir, "job-good")
            _wait_for_log(site, "event=upload-complete job=job-good", timeout=60)
            assert site.poll() is None
        finally:
            _stop(procs)
    log_text = site.log_path.read_text()
    lines = {
        j: [x for x in log_text.splitlines() if f"job=job-{j} " in x] for j in ("latin1", "bed")
    }
    assert len(lines["latin1"]) == 1 and "not UTF-8 text" in lines["latin1"][0]
    assert f"{csv}" in lines["latin1"][0]
    assert len(lines["bed"]) == 1 and f"{bed}: 67238 bytes, expected 67338" in lines["bed"][0]
    assert "Traceback" not in log_text
    assert "age are not among this site's inputs (x)" in log_text
    assert site.returncode == 0
    assert (tmp_path / "oslo.answered").read_text().split() == ["job-good"]


def test_upload_takes_the_specs_input_names(keys_dir, tmp_path):
    """``smpc upload --input age=FILE.csv:age``: the job asks for age.sum and age.count."""
    from smpc.analyst.jobs import build_job
    from smpc.protocols.registry import parse_spec

    csv = tmp_path / "oslo.csv"
    csv.write_text("age,bmi\n40,21.5\n50,\n61,30.25\n")
    federation = federation_of(keys_dir)
    analyst = kit(keys_dir, "analyst")
    oslo = keys_dir / "kits" / "oslo"
    doc = {"name": "c", "protocol": "sum", "inputs": ["age", "bmi"]}
    job = build_job(parse_spec(doc, "c", federation), analyst, federation, job_id="job-names")
    procs = []
    with _broker(keys_dir, tmp_path):
        try:
            procs = [_start_party(p, keys_dir, tmp_path) for p in PARTIES]
            for proc in procs:
                _wait_for_log(proc, "event=party-connected")
            asyncio.run(publish_job(analyst, federation, job))
            up = subprocess.run(
                [sys.executable, "-m", "smpc.cli", "upload", "--kit", str(oslo), "--job", job.id,
                 "--input", f"age={csv}:age", "--input", f"bmi={csv}:bmi", "--timeout", "60"],
                capture_output=True, text=True, timeout=90,
            )  # fmt: skip
        finally:
            _stop(procs)
    assert up.returncode == 0, up.stderr
    assert "oslo uploaded age.count, age.sum, bmi.count, bmi.sum to 3 parties" in up.stdout
    with PartyStore(tmp_path / "store" / "alpha") as store:
        stored = sorted(s.input for s in store.shares(job.id))
    assert stored == ["age.count", "age.sum", "bmi.count", "bmi.sum"]
