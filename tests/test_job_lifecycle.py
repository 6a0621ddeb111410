"""The job lifecycle under attack, on real processes: Mosquitto, three party daemons, uploads.

Every hostile action is tried from outside with smpc's own signing and transport, as an
attacker with a recording of the broker's traffic (or another analyst's key) would: it
must be refused and logged, and nothing may be computed, opened or released again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from smpc.analyst.driver import write_outputs
from smpc.analyst.jobs import JobFailed, build_job, publish_job, run_job
from smpc.net.connection import Connection
from smpc.net.topics import Topics
from smpc.party.store import PartyStore
from smpc.pki.kit import load_broker_kit
from smpc.protocols.registry import parse_spec
from smpc.site.inputs import protocol_inputs
from smpc.site.kept import KeptUpload
from smpc.site.upload import upload
from smpc.wire.messages import Job, open_result, sign, stamp_job, verify_status
from tests.brokers import federation_of, kit, requires_mosquitto
from tests.test_upload_integration import (
    PARTIES,
    SITES,
    ObservedMosquitto,
    Recorder,
    _start_party,
    _stop,
    _wait_for_log,
)

pytestmark = [requires_mosquitto, pytest.mark.timeout(300), pytest.mark.slow]


class Federation:
    """A running federation: the observed broker, its recorder, three party daemons."""

    def __init__(self, keys_dir: Path, workdir: Path) -> None:
        self.keys_dir, self.workdir = keys_dir, workdir
        self.federation = federation_of(keys_dir)
        self.topics = Topics(self.federation.name)
        self.analyst = kit(keys_dir, "analyst")

    def start_broker(self) -> None:
        self.broker = ObservedMosquitto(
            self.federation,
            load_broker_kit(self.keys_dir / "kits" / "broker"),
            self.workdir / "broker",
            port=self.federation.broker.port,
        ).start()

    def logs(self) -> str:
        return "".join((self.workdir / f"{p}.log").read_text(errors="replace") for p in PARTIES)

    def count(self, text: str) -> int:
        return self.logs().count(text)

    def wait_count(self, text: str, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.count(text) < n:
            assert time.monotonic() < deadline, f"{n}× {text!r} not in the logs:\n{self.logs()}"
            time.sleep(0.05)


@pytest.fixture
def fed(keys_dir, tmp_path):
    f = Federation(keys_dir, tmp_path)
    f.start_broker()
    parties = []
    try:
        with Recorder(*f.broker.address, f.analyst.tls) as recorder:
            f.recorder = recorder
            parties = [_start_party(p, keys_dir, tmp_path) for p in PARTIES]
            for proc in parties:
                _wait_for_log(proc, "event=party-connected")
            f.parties = parties
            yield f
    finally:
        _stop(parties)
        f.broker.stop()


def _sites(tmp_path: Path, rows: int = 40) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    rng = np.random.default_rng(rows)
    paths, values = {}, {}
    for site in SITES:
        values[site] = np.round(rng.normal(50, 10, rows))
        paths[site] = tmp_path / f"{site}.csv"
        paths[site].write_text("x\n" + "\n".join(f"{v:g}" for v in values[site]) + "\n")
    return paths, values


def _job(f: Federation, text: str, lifetime: float = 120) -> Job:
    import yaml

    spec = parse_spec(yaml.safe_load(text), "<test>", f.federation)
    return stamp_job(build_job(spec, f.analyst, f.federation), lifetime)


def _upload_all(f: Federation, job: Job, paths: dict[str, Path], sites=SITES) -> None:
    async def go():
        for site in sites:
            await upload(
                kit(f.keys_dir, site), f.federation, job.id,
                protocol_inputs(paths[site], f.federation), timeout=60,
                keep=f.workdir / "kept" / site,
            )  # fmt: skip

    asyncio.run(go())


class Listener:
    """One participant's subscription in a thread: every (topic, payload) it receives."""

    def __init__(self, f: Federation, name: str, *filters: str) -> None:
        self.kit = kit(f.keys_dir, name)
        self.f, self.filters = f, filters
        self.messages: list[tuple[str, bytes]] = []
        self._stop, self._ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)

    async def _run(self) -> None:
        async with Connection.from_kit(self.kit, self.f.federation, suffix="listen") as conn:
            await conn.subscribe(*self.filters)
            self._ready.set()
            messages = aiter(conn.messages())
            reading = None
            while not self._stop.is_set():
                if reading is None:
                    reading = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({reading}, timeout=0.2)
                if done:
                    message = reading.result()
                    self.messages.append((message.topic, bytes(message.body)))
                    reading = None
            if reading is not None:
                reading.cancel()

    def __enter__(self) -> Listener:
        self._thread.start()
        assert self._ready.wait(15), "listener did not connect"
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(1.0)  # what is in flight arrives
        self._stop.set()
        self._thread.join(10)

    def of_kind(self, kind: str) -> list[bytes]:
        return [body for topic, body in self.messages if f"/{kind}/" in topic]


def _republish(f: Federation, job_id: str, *messages: bytes, signer: str = "analyst") -> None:
    async def go():
        async with Connection.from_kit(
            kit(f.keys_dir, signer), f.federation, suffix="replay"
        ) as conn:
            for message in messages:
                await conn.publish(f.topics.job(signer, job_id), message)
                await asyncio.sleep(0.3)

    asyncio.run(go())


def _signed(f: Federation, job: Job, signer: str = "analyst") -> bytes:
    return sign("job", job, signer, kit(f.keys_dir, signer).signing_key)


DP_SPEC = """
name: noisy
protocol: sum
inputs: [x]
deliver: parties
dp: {epsilon: 1.0, delta: 1.0e-6, clip: 100.0}
"""


def test_replayed_reserialised_reclosed_and_taken_over_jobs_release_nothing_new(fed, tmp_path):
    paths, values = _sites(tmp_path)
    job = _job(fed, DP_SPEC)
    with (
        Listener(fed, "analyst", fed.topics.results("analyst", job.id)) as mine,
        Listener(fed, "eve", fed.topics.results("eve", job.id), "smpc/test/result/#") as eve,
    ):
        asyncio.run(publish_job(fed.analyst, fed.federation, job))
        _upload_all(fed, job, paths)
        outcome = asyncio.run(run_job(fed.analyst, fed.federation, job, upload_window=30))
        first_open = _signed(fed, job)
        first_close = _signed(fed, outcome.job)
        fed.wait_count("event=job-computed", 3)
        released = sorted(mine.of_kind("result"))
        assert len(released) == 3

        # 1. the recorded open and close messages again (anyone who recorded them can)
        _republish(fed, job.id, first_open, first_close)
        fed.wait_count("event=job-redelivered", 3)
        # 2. the close re-serialised: same signed content, other bytes
        doc = json.loads(first_close)
        reserialised = json.dumps(doc, indent=2, sort_keys=False).encode()
        assert reserialised != first_close
        _republish(fed, job.id, reserialised)
        fed.wait_count("event=job-redelivered", 6)
        # 3. re-closed with one site fewer: the difference would be tromso's sum
        fewer = outcome.job.model_copy(
            update={"close": ("oslo", "bergen"), "uploads": {
                s: outcome.job.uploads[s] for s in ("oslo", "bergen")}}
        )  # fmt: skip
        _republish(fed, job.id, _signed(fed, fewer))
        fed.wait_count("event=job-reclose", 3)
        # 4. another analyst signs the same job id, naming itself
        taken = outcome.job.model_copy(update={"analyst": "eve"})
        _republish(fed, job.id, _signed(fed, taken, "eve"), signer="eve")
        fed.wait_count("event=job-takeover", 3)
        # 5. a changed job under the same id, by its own analyst
        changed = outcome.job.model_copy(update={"min_sites": 3})
        _republish(fed, job.id, _signed(fed, changed))
        fed.wait_count("event=job-changed", 3)
        time.sleep(1.0)

    assert fed.count("event=job-computed") == 3  # computed once, never again
    assert fed.count("event=session-start") == 3
    # every re-delivery re-sent the very bytes of the first release (the dp noise included)
    again = mine.of_kind("result")
    assert len(again) == 9 and sorted(set(again)) == released
    assert eve.messages == []  # the other analyst reads no result topic of this job
    opened = [open_result(body, fed.analyst)[1] for body in released]
    assert len({json.dumps(r.outputs["x.sum"].model_dump()) for r in opened}) == 1
    noisy = float(np.asarray(outcome.opened["x.sum"]).ravel()[0])
    assert noisy != float(sum(v.sum() for v in values.values()))  # noised once, kept
    # the broker (and the recorder on it) never saw an opened result in clear
    results = [json.dumps(r.model_dump()["outputs"]).encode()[:40] for r in opened]
    assert b'"kind":"result"' in sign(
        "result", opened[0], "alpha", kit(fed.keys_dir, "alpha").signing_key
    )
    for payload in fed.recorder.payloads:
        assert b'"kind":"result"' not in payload and b'"values"' not in payload
        assert not any(r in payload for r in results)


def test_default_policy_refuses_t0_and_one_site_jobs(fed, tmp_path):
    base = "name: small\nprotocol: sum\ninputs: [x]\n"
    cases = {
        "threshold": (_job(fed, base + "threshold: 0\n"), "threshold 0 is below"),
        "sites": (_job(fed, base + "min_sites: 1\n"), "min_sites 1 is below this party's"),
    }
    for job, reason in cases.values():
        with pytest.raises(JobFailed, match=reason):
            asyncio.run(run_job(fed.analyst, fed.federation, job, upload_window=10, timeout=10))
    assert fed.count("event=job-refused") >= 2
    assert "share-stored" not in fed.logs()


def test_stale_and_future_jobs_are_refused(fed, tmp_path):
    base = "name: old\nprotocol: sum\ninputs: [x]\n"
    now = time.time()
    stale = stamp_job(_job(fed, base), 60, now=now - 2 * 86400)
    late = stamp_job(_job(fed, base), 60, now=now - 3600)
    future = stamp_job(_job(fed, base), 60, now=now + 3600)
    for job, reason in ((stale, "issued more than"), (late, "deadline passed"),
                        (future, "in the future")):  # fmt: skip
        with Listener(fed, "analyst", fed.topics.statuses(job.id)) as statuses:
            _republish(fed, job.id, _signed(fed, job))
            deadline = time.monotonic() + 15
            while len(statuses.of_kind("status")) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        states = [verify_status(s, fed.analyst.directory)[1] for s in statuses.of_kind("status")]
        assert len(states) == 3
        assert all(s.state == "refused" and reason in s.reason for s in states), states


def test_envelope_on_another_sites_topic_is_refused(fed, tmp_path):
    from smpc.site.upload import seal_inputs

    job = _job(fed, "name: topic\nprotocol: sum\ninputs: [x]\n")
    asyncio.run(publish_job(fed.analyst, fed.federation, job))
    fed.wait_count("event=job-accepted", 3)
    paths, _ = _sites(tmp_path)
    oslo = kit(fed.keys_dir, "oslo")
    data = protocol_inputs(paths["oslo"], fed.federation)(job)
    envelopes = seal_inputs(oslo, job, data.arrays, data.records)

    async def go():  # bergen re-publishes oslo's envelope on bergen's own upload topic
        bergen = kit(fed.keys_dir, "bergen")
        async with Connection.from_kit(bergen, fed.federation, suffix="x") as conn:
            await conn.publish_body(fed.topics.upload("bergen", "alpha"), envelopes[("x.sum", 0)])

    asyncio.run(go())
    fed.wait_count("arrived on 'bergen'", 1)
    assert "share-stored" not in fed.logs()


def _kill_and_restart_broker(fed: Federation) -> None:
    proc = fed.broker._proc  # SIGKILL: no clean shutdown, as a crash
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    time.sleep(1.0)
    fed.start_broker()


@pytest.mark.parametrize("scheme", ["shamir", "additive"])
def test_broker_killed_mid_upload_then_upload_rerun_gives_the_correct_sum(fed, tmp_path, scheme):
    size = 1_500_000  # a model large enough that the broker dies while shares are on their way
    rng = np.random.default_rng(7)
    models = {
        s: (n, rng.integers(0, 100, size).astype(float))
        for s, n in zip(SITES, (3, 5, 9), strict=False)
    }
    paths = {}
    for site, (n, w) in models.items():
        paths[site] = tmp_path / f"{site}.npz"
        np.savez(paths[site], num_examples=n, w=w)
    text = f"name: big\nprotocol: fedavg\ninputs: [w]\nscheme: {scheme}\n"
    job = _job(fed, text, lifetime=280)
    asyncio.run(publish_job(fed.analyst, fed.federation, job))
    fed.wait_count("event=job-accepted", 3)

    def uploader(site: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "smpc.cli", "upload", "--kit",
             str(fed.keys_dir / "kits" / site), "--job", job.id, "--data", str(paths[site]),
             "--timeout", "90", "--keep", str(tmp_path / "kept" / site)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    first = [uploader(site) for site in SITES]
    indexes = [KeptUpload(tmp_path / "kept" / site, job).dir / "upload.json" for site in SITES]
    deadline = time.monotonic() + 60
    while not all(i.exists() for i in indexes):  # every site has sealed its upload
        ended = [p.communicate()[1] for p in first if p.poll() not in (None, 0)]
        assert time.monotonic() < deadline and not ended, (
            ended,
            indexes,
            list((tmp_path / "kept").rglob("*")),
        )
        time.sleep(0.01)
    fed.wait_count("event=share-stored", 1, timeout=60)
    for proc in first:  # the uploaders die with the broker: the re-run must not re-share
        proc.kill()
    _kill_and_restart_broker(fed)
    for proc in first:
        proc.communicate()
    # The broker lost its retained messages with the crash: the analyst publishes its job
    # again (the same signed content, which the parties take as a re-delivery).
    asyncio.run(publish_job(fed.analyst, fed.federation, job))
    kept = {
        site: json.loads(index.read_text())["upload"]
        for site, index in zip(SITES, indexes, strict=False)
    }
    for proc in [uploader(site) for site in SITES]:
        _out, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, err
    assert "refusing a share of another upload" not in fed.logs()
    for party in PARTIES:  # every party holds the first upload of each site, never a mix
        with PartyStore(tmp_path / "store" / party) as store:
            assert {(s.site, s.upload) for s in store.shares(job.id)} == set(kept.items())
    outcome = asyncio.run(run_job(fed.analyst, fed.federation, job, upload_window=60))
    assert outcome.sites == SITES
    import yaml

    write_outputs(parse_spec(yaml.safe_load(text), "<test>", fed.federation), outcome, tmp_path)
    want = sum(n * w for n, w in models.values()) / sum(n for n, _ in models.values())
    with np.load(tmp_path / "model.npz") as got:
        assert np.abs(got["w"] - want).max() <= 1e-6
