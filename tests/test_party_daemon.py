"""The party daemon's robustness, on real processes: Mosquitto, three ``smpc party serve``,
``smpc upload`` and real MPyC sessions.

- A bad job (a spec field of the wrong type, a job whose handling raises) is refused or
  failed with its reason by a signed status, an envelope whose handling raises is
  rejected with the error, the daemons go on storing later uploads, and a job that
  failed is not run again after a restart.
- A session runs beside the message loop: while alpha's and beta's sessions of one job
  wait for gamma, both store another job's shares; an impostor on beta's MPyC port is
  in beta's log; a peer SIGKILLed during the session is named promptly by the survivor,
  to the analyst too, with the party that never came.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from smpc.analyst.jobs import build_job, publish_job
from smpc.core.field import FAST
from smpc.net.connection import Connection
from smpc.net.topics import Topics
from smpc.party.store import PartyStore
from smpc.protocols.registry import parse_spec
from smpc.wire.messages import Job, JobInput, Status, stamp_job, verify_status
from tests.brokers import federation_of, kit, requires_mosquitto
from tests.test_upload_integration import ENCODING, _broker, _start_party, _stop, _wait_for_log

pytestmark = [requires_mosquitto, pytest.mark.timeout(240)]

PARTIES = ("alpha", "beta", "gamma")
LOST_PEER_BOUND = 10  # seconds from a peer's SIGKILL to the survivor's failed status


class Statuses:
    """The analyst's view: every signed status of ``jobs``, as it arrives (a thread)."""

    def __init__(self, keys_dir: Path, jobs: list[str]) -> None:
        self.keys_dir, self.jobs = keys_dir, jobs
        self.seen: list[tuple[str, Status]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),))

    async def _run(self) -> None:
        analyst = kit(self.keys_dir, "analyst")
        topics = Topics(federation_of(self.keys_dir).name)
        federation = federation_of(self.keys_dir)
        async with Connection.from_kit(analyst, federation, suffix="statuses") as conn:
            await conn.subscribe(*[topics.statuses(job) for job in self.jobs])
            self._ready.set()
            messages = aiter(conn.messages())
            reading = None  # one pending read kept across the stop checks
            while not self._stop.is_set():
                if reading is None:
                    reading = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({reading}, timeout=0.2)
                if done:
                    self.seen.append(verify_status(reading.result().body, analyst.directory))
                    reading = None
            if reading is not None:
                reading.cancel()

    def wait(self, party: str, job: str, state: str, timeout: float) -> Status:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for signer, status in list(self.seen):
                if signer == party and status.job == job and status.state == state:
                    return status
            time.sleep(0.05)
        raise AssertionError(f"no {state} status of {job} from {party}: {self.seen}")

    def __enter__(self) -> Statuses:
        self._thread.start()
        assert self._ready.wait(15), "status subscriber did not connect"
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def _job(job_id: str, **changes) -> Job:
    fields = dict(
        id=job_id, t=1, n=3, modulus=FAST.modulus, analyst="analyst",
        inputs=(JobInput(name="x", frac_bits=ENCODING.frac_bits, int_bits=ENCODING.int_bits),),
    )  # fmt: skip
    return stamp_job(Job(**{**fields, **changes}), 600)


def _closing(seen: Statuses, job: Job, sites: tuple[str, ...]) -> Job:
    """``job`` closed with ``sites`` and the upload ids the parties said they hold."""
    uploads: dict[str, str] = {}
    for _, status in list(seen.seen):
        if status.job == job.id:
            uploads.update({s: u for s, u in status.uploads.items() if s in sites})
    return job.model_copy(update={"close": sites, "uploads": uploads})


def _publish(keys_dir: Path, job: Job) -> None:
    asyncio.run(publish_job(kit(keys_dir, "analyst"), federation_of(keys_dir), job))


def _upload(keys_dir: Path, site: str, data: Path, job: str, timeout: float = 60):
    return subprocess.run(
        [
            sys.executable, "-m", "smpc.cli", "upload", "--kit", str(keys_dir / "kits" / site),
            "--job", job, "--input", f"x={data}", "--timeout", str(timeout),
        ],
        capture_output=True, text=True, timeout=timeout + 60,
    )  # fmt: skip


def _data(tmp_path: Path, site: str) -> Path:
    path = tmp_path / f"{site}.npy"
    np.save(path, np.arange(5.0) + len(site))
    return path


def _log(proc) -> str:
    return proc.log_path.read_text(errors="replace")


def _parties(keys_dir: Path, tmp_path: Path, names=PARTIES) -> list[subprocess.Popen]:
    procs = [_start_party(name, keys_dir, tmp_path) for name in names]
    for proc in procs:
        _wait_for_log(proc, "event=party-connected")
    return procs


def _sessions_of(tmp_path: Path) -> list[int]:
    """Session processes still running on this test's stores."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"smpc.mpc.session" in argv and any(str(tmp_path).encode() in a for a in argv):
            found.append(int(cmdline.parent.name))
    return found


def _stop_one(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0, _log(proc)


@pytest.mark.slow
def test_bad_jobs_are_refused_and_every_daemon_goes_on(keys_dir, tmp_path):
    federation = federation_of(keys_dir)
    spec = parse_spec({"name": "bad", "protocol": "sum", "inputs": ["x"]}, "test", federation)
    analyst = kit(keys_dir, "analyst")
    built = build_job(spec, analyst, federation, job_id="bad-timeout")
    bad = built.model_copy(update={"spec": {**built.spec, "timeout": "60"}})
    crash = _job("crash", deliver="parties")
    parties = []
    with _broker(keys_dir, tmp_path), Statuses(keys_dir, ["bad-timeout", "crash"]) as seen:
        try:
            parties = _parties(keys_dir, tmp_path)
            _publish(keys_dir, bad)  # a signed job whose spec.timeout is a string
            for name in PARTIES:
                status = seen.wait(name, "bad-timeout", "refused", 30)
                assert "timeout: input should be a valid number (got '60')" in status.reason

            # A job whose handling raises at alpha: its session directory cannot be made.
            _publish(keys_dir, crash)
            for site in ("oslo", "bergen"):
                up = _upload(keys_dir, site, _data(tmp_path, site), "crash")
                assert up.returncode == 0, up.stderr
            (tmp_path / "store" / "alpha" / "sessions").mkdir(parents=True)
            (tmp_path / "store" / "alpha" / "sessions" / "crash").write_text("in the way")
            _publish(keys_dir, _closing(seen, crash, ("oslo", "bergen")))
            status = seen.wait("alpha", "crash", "failed", 30)
            assert status.reason.startswith("internal error at this party: FileExistsError")
            _wait_for_log(parties[0], "event=job-error job=crash kind=job reason=")

            # An envelope whose handling raises at alpha (its share directory is a file):
            # rejected with the error, so the site stops re-sending it and says why.
            _publish(keys_dir, _job("broken"))
            (tmp_path / "store" / "alpha" / "shares" / "broken").write_text("in the way")
            up = _upload(keys_dir, "oslo", _data(tmp_path, "oslo"), "broken", timeout=30)
            assert up.returncode != 0
            assert "party alpha refused 'x': internal error at this party: NotADirectoryError" in (
                up.stderr
            ), up.stderr
            _wait_for_log(parties[0], "event=job-error job=broken kind=upload reason=")

            # Every daemon still serves: a later job's upload is stored by all three.
            _publish(keys_dir, _job("after"))
            up = _upload(keys_dir, "tromso", _data(tmp_path, "tromso"), "after")
            assert up.returncode == 0, up.stderr
            assert "uploaded x to 3 parties" in up.stdout
            assert all(proc.poll() is None for proc in parties)

            # Restarted, alpha gets the retained close again: answered, not run again.
            _stop_one(parties[0])
            parties[0] = _start_party("alpha", keys_dir, tmp_path)
            _wait_for_log(parties[0], "event=job-skipped job=crash")
        finally:
            _stop(parties)
    for proc in parties:
        assert proc.returncode == 0
        assert "Traceback" not in _log(proc)
    # beta's and gamma's sessions of "crash" (waiting for alpha) were stopped with them.
    assert "event=session-stopped job=crash" in _log(parties[1])
    assert not _sessions_of(tmp_path)
    alpha = _log(parties[0])
    assert alpha.count("event=job-error job=crash") == 1
    assert "Traceback" not in alpha
    # refused once; after the restart the retained job is answered with the stored refusal
    assert alpha.count("event=job-refused job=bad-timeout") == 1
    with PartyStore(tmp_path / "store" / "alpha") as store:
        assert store.job("bad-timeout").status == "refused"
        assert store.job("crash").status == "failed"
        assert [s.site for s in store.shares("after")] == ["tromso"]


def _impostor(keys_dir: Path, port: int) -> None:
    """Connect to a party's MPyC port with gamma's certificate and claim to be alpha."""
    gamma = keys_dir / "kits" / "gamma" / ".config"
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.load_cert_chain(gamma / "party_2.crt", keyfile=gamma / "party_2.key")
    context.load_verify_locations(cafile=keys_dir / "public" / "party-ca.crt")
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="MPyC party 1") as tls,
        ):
            tls.sendall((0).to_bytes(2, "little") + bytes(64))
            tls.settimeout(5)
            assert not tls.recv(1024)  # dropped
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        pass


@pytest.mark.slow
def test_sessions_run_beside_the_message_loop_and_a_killed_peer_is_named(keys_dir, tmp_path):
    """Job one is closed while gamma is down: alpha's and beta's sessions connect to each
    other and wait for gamma. Meanwhile both store job two's shares, and beta logs an
    impostor on its MPyC port. Then beta is SIGKILLed: alpha's session fails at once
    naming beta (lost) and gamma (never came), and the analyst gets that reason."""
    parties = []
    with _broker(keys_dir, tmp_path), Statuses(keys_dir, ["one", "two"]) as seen:
        try:
            parties = _parties(keys_dir, tmp_path)
            alpha, beta, gamma = parties
            one = _job("one", deliver="parties")
            _publish(keys_dir, one)
            for site in ("oslo", "bergen"):
                up = _upload(keys_dir, site, _data(tmp_path, site), "one")
                assert up.returncode == 0, up.stderr
            _stop_one(gamma)
            _publish(keys_dir, _closing(seen, one, ("oslo", "bergen")))
            _wait_for_log(alpha, "event=mpyc-peer job=one party=beta index=1")
            _wait_for_log(beta, "event=mpyc-peer job=one party=alpha index=0")

            port = int(re.search(r"event=session-start job=one port=(\d+)", _log(beta))[1])
            _impostor(keys_dir, port)
            _wait_for_log(beta, "event=mpyc-impostor job=one peer=127.0.0.1:")
            line = next(ln for ln in _log(beta).splitlines() if "event=mpyc-impostor" in ln)
            assert 'claimed=0 subject="MPyC party 2"' in line
            assert "certificate is for party 2" in line

            _publish(keys_dir, _job("two"))
            up = _upload(keys_dir, "tromso", _data(tmp_path, "tromso"), "two", timeout=8)
            assert up.returncode == 2 and "from gamma" in up.stderr  # gamma is down
            for proc in (alpha, beta):
                log = _log(proc)
                assert "event=share-stored job=two input=x site=tromso" in log
                assert "event=session-end job=one" not in log  # still running

            os.kill(beta.pid, signal.SIGKILL)
            killed = time.monotonic()
            status = seen.wait("alpha", "one", "failed", LOST_PEER_BOUND + 20)
            assert time.monotonic() - killed <= LOST_PEER_BOUND
            assert "lost party beta (index 1)" in status.reason
            assert "missing gamma (index 2)" in status.reason
            _wait_for_log(alpha, "event=session-end job=one outcome=failed")
        finally:
            _stop(parties)
    assert parties[0].returncode == 0
    assert "Traceback" not in _log(parties[0])
    assert not _sessions_of(tmp_path)  # beta's died with its daemon
    assert "event=job-failed job=one" in _log(parties[0])
    assert "lost party beta (index 1)" in _log(parties[0])
