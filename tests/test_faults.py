"""The fault matrix, on real processes: Mosquitto, ``smpc party serve`` daemons, sites and
the analyst's driver, and real MPyC sessions.

- A party SIGKILLed at random points while it stores shares, many times over: after
  every kill its store is consistent (every acknowledged share there and intact, nothing
  partial visible, nothing twice, the files exactly those of the SQLite rows).
- A full disk under a party's store (a small tmpfs): a share (stored, or spooled while its
  chunks arrive) is refused without an ack, with one log line per delivery naming the
  site and "no space" (and the job, once the envelope is whole); nothing is left behind,
  the daemon serves on, and the site's retried upload is acknowledged once space is freed.
- A slow party (SIGSTOP past the job's upload window or its result timeout, then
  SIGCONT): the analyst fails the job naming the party, and the party serves on.
- A site killed mid-upload: the job closes without it when ``min_sites`` is met (the sum
  of the other sites), and fails naming the sites when it is not.
- The broker restarted during multi-round FedAvg training and during a GWAS's Newton
  rounds: everyone reconnects and the run resumes the job it was in, with the plaintext
  result (NumPy, PLINK 1.9); a broker that does not come back fails the job at its
  timeout, naming the broker.

Each test starts its own broker and daemons and stops them (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from smpc.analyst.driver import run_spec, write_outputs
from smpc.analyst.jobs import JobFailed, build_job, publish_job, run_job
from smpc.core.field import FAST
from smpc.core.sharing import reconstruct
from smpc.net.connection import Connection
from smpc.net.errors import TransportError
from smpc.net.topics import Topics
from smpc.party.store import PartyStore
from smpc.protocols.base import Outcome, RunContext
from smpc.protocols.registry import parse_spec, protocol
from smpc.site.inputs import protocol_inputs
from smpc.site.upload import UploadFailed, seal_inputs, upload
from smpc.wire.header import ShareHeader
from smpc.wire.messages import Ack, Job, JobInput, sign, stamp_job, verify_ack
from smpc.wire.packaging import InputShare, open_share
from tests.brokers import federation_of, kit, mosquitto, requires_mosquitto
from tests.test_upload_integration import (
    ENCODING,
    TRAINER,
    _start_party,
    _start_site,
    _stop,
    _wait_for_log,
)

pytestmark = [requires_mosquitto, pytest.mark.slow]

SITES = ("oslo", "bergen", "tromso")

Key = tuple[str, str, str]  # (job, input, site)


def _job(job_id: str, inputs: tuple[str, ...] = ("x",), **changes) -> Job:
    fields = dict(
        id=job_id, t=1, n=3, modulus=FAST.modulus, analyst="analyst", compact=False,
        inputs=tuple(
            JobInput(name=name, frac_bits=ENCODING.frac_bits, int_bits=ENCODING.int_bits)
            for name in inputs
        ),
    )  # fmt: skip
    return stamp_job(Job(**{**fields, **changes}), 3600)


class Sites:
    """The sites' side of an upload, as :func:`smpc.site.upload.upload` does it, for one
    party: seal, publish, re-publish what is not acknowledged, collect the signed acks.

    ``expected`` holds the SHA-256 of every share body sent (computed from the envelope
    itself, opened with the party's key), ``acked`` every ``stored`` ack received.
    """

    def __init__(self, keys_dir: Path, party: str) -> None:
        self.keys_dir, self.party = keys_dir, party
        self.federation = federation_of(keys_dir)
        self.topics = Topics(self.federation.name)
        self.analyst = kit(keys_dir, "analyst")
        self.index = self.analyst.directory.party_index(party)
        self.envelopes: dict[Key, tuple[str, bytes]] = {}  # key -> (site, envelope)
        self.expected: dict[Key, str] = {}
        self.acked: dict[Key, Ack] = {}
        self.rejected: list[Ack] = []
        self._cleared: set[str] = set()
        self._conns: dict[str, Connection] = {}
        self._readers: list[asyncio.Task] = []

    async def __aenter__(self) -> Sites:
        self._jobs = Connection.from_kit(self.analyst, self.federation, suffix="faults")
        await self._jobs.__aenter__()
        for site in SITES:
            conn = Connection.from_kit(kit(self.keys_dir, site), self.federation, suffix="faults")
            await conn.__aenter__()
            await conn.subscribe(self.topics.acks_for(site))
            self._conns[site] = conn
            self._readers.append(asyncio.create_task(self._read(site, conn)))
        return self

    async def __aexit__(self, *exc) -> None:
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for conn in [*self._conns.values(), self._jobs]:
            await conn.__aexit__(None, None, None)

    async def _read(self, site: str, conn: Connection) -> None:
        directory = self.analyst.directory
        async for message in conn.messages():
            signer, ack = verify_ack(message.body, directory)
            assert signer == self.party and ack.site == site
            key = (ack.job, ack.input, ack.site)
            if ack.status == "stored":
                assert ack.digest == self.expected[key], f"ack of {key} names another digest"
                self.acked[key] = ack
            else:
                self.rejected.append(ack)

    async def publish_job(self, job: Job) -> None:
        message = sign("job", job, self.analyst.name, self.analyst.signing_key)
        await self._jobs.publish(self.topics.job(self.analyst.name, job.id), message, retain=True)

    def seal(self, job: Job, size: int, seed: int) -> list[Key]:
        """Every site's envelopes of ``job`` to the party (random data of ``size`` values)."""
        rng = np.random.default_rng(seed)
        party_kit = kit(self.keys_dir, self.party)
        site_keys = {s: party_kit.directory.verify_key(s) for s in SITES}
        keys = []
        for site in SITES:
            inputs = {spec.name: rng.normal(0, 100, size) for spec in job.inputs}
            sealed = seal_inputs(kit(self.keys_dir, site), job, inputs)
            for (name, party), envelope in sealed.items():
                if party != self.index:
                    continue
                share = open_share(envelope, party_kit.encryption_key, site_keys, party=self.index)
                key = (job.id, name, site)
                self.expected[key] = hashlib.sha256(share.body).hexdigest()
                assert share.header.digest == self.expected[key]
                self.envelopes[key] = (site, envelope)
                keys.append(key)
        return keys

    async def forget_jobs(self, accepted: set[str]) -> None:
        """Clear the retained messages of jobs the party accepted (its store keeps them), so
        a restart is not flooded with every earlier job again."""
        for job_id in sorted(accepted - self._cleared):
            await self._jobs.clear_retained(self.topics.job(self.analyst.name, job_id))
            self._cleared.add(job_id)

    def pending(self) -> list[Key]:
        return [key for key in self.envelopes if key not in self.acked]

    async def send(self, keys: list[Key]) -> None:
        for key in keys:
            site, envelope = self.envelopes[key]
            await self._conns[site].publish_body(self.topics.upload(site, self.party), envelope)

    async def until_acked(self, timeout: float, resend: float = 1.0) -> None:
        """Re-publish what is not acknowledged every ``resend`` s until all of it is."""
        deadline = time.monotonic() + timeout
        while self.pending():
            assert time.monotonic() < deadline, f"never acknowledged: {self.pending()}"
            await self.send(self.pending())
            step = time.monotonic() + resend
            while self.pending() and time.monotonic() < step:
                await asyncio.sleep(0.05)


async def _wait_log(proc: subprocess.Popen, text: str, count: int = 1, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while proc.log_path.read_text(errors="replace").count(text) < count:
        assert proc.poll() is None, proc.log_path.read_text()
        assert time.monotonic() < deadline, f"{text!r} ×{count} not in {proc.log_path}"
        await asyncio.sleep(0.02)


def _audit(root: Path, sites: Sites) -> set[Path]:
    """Check the store of a stopped party against what the sites sent and had acknowledged;
    return the files no row refers to (what a kill left mid-write)."""
    with PartyStore(root) as store:
        rows = store.shares()
    keys = [(s.job, s.input, s.site) for s in rows]
    assert len(keys) == len(set(keys)), "a share is stored twice"
    lost = set(sites.acked) - set(keys)
    assert not lost, f"acknowledged, not stored: {lost}"
    for share, key in zip(rows, keys, strict=True):
        assert key in sites.expected, f"{key}: stored, never sent"
        assert share.digest == sites.expected[key]
        body = share.path.read_bytes()  # complete and intact: the hash of what the site sent
        assert len(body) == share.size
        assert hashlib.sha256(body).hexdigest() == sites.expected[key], f"{key}: corrupt"
    files = {p for p in (root / "shares").rglob("*") if p.is_file()}
    strays = files - {s.path for s in rows}
    # One share is written at a time: at most the one the kill interrupted, never
    # visible to a reader (a hidden temporary file, or a file without its row).
    assert len(strays) <= 1, strays
    return strays


KILLS = 50


@pytest.mark.timeout(360)  # ~60-100 s (a daemon start per kill); generous for a loaded CI
def test_party_killed_at_random_points_while_storing_keeps_a_consistent_store(keys_dir, tmp_path):
    """``KILLS`` SIGKILLs of alpha's daemon, each 0–250 ms after it connected while the three
    sites publish a new job's 6 shares (160 kB each) and re-publish every unacknowledged one.
    After every kill the store is audited (:func:`_audit`); after every restart what the
    kill left half-written is gone; at the end every share is stored exactly once."""
    rng = random.Random(18)
    root = tmp_path / "store" / "alpha"
    outstanding_kills = 0  # kills that landed while envelopes were unacknowledged

    async def main() -> None:
        nonlocal outstanding_kills
        async with Sites(keys_dir, "alpha") as sites:
            strays: set[Path] = set()
            proc = None
            try:
                for k in range(KILLS + 1):
                    proc = _start_party("alpha", keys_dir, tmp_path)
                    await _wait_log(proc, "event=party-connected", count=k + 1)
                    for path in strays:  # the restarted daemon removed the leftovers
                        assert not path.exists() or path in _row_paths(root), path
                    job = _job(f"kill-{k}", inputs=("x", "y"))
                    await sites.publish_job(job)
                    new = sites.seal(job, 20_000, seed=k)
                    await sites.send([key for key in sites.pending() if key not in new] + new)
                    if k == KILLS:  # the last run is not killed: everything gets stored
                        await sites.until_acked(60)
                        break
                    await asyncio.sleep(rng.uniform(0.0, 0.25))
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    await asyncio.sleep(0.2)  # acks already on their way arrive
                    outstanding_kills += bool(sites.pending())
                    strays = _audit(root, sites)
                    await sites.forget_jobs(_job_ids(root))
            finally:
                if proc is not None:
                    _stop([proc])
            assert proc.returncode == 0
            assert not _audit(root, sites)  # clean stop: no leftover at all
            assert set(sites.acked) == set(sites.expected)
            assert not sites.rejected, sites.rejected

    with mosquitto(keys_dir, tmp_path / "broker", at_federation_port=True):
        asyncio.run(main())
    log = (tmp_path / "alpha.log").read_text(errors="replace")
    assert "Traceback" not in log
    assert log.count("event=party-start") == KILLS + 1
    # every share was stored once; re-sent ones were answered as duplicates
    for job, name, site in _row_keys(root):
        assert log.count(f"event=share-stored job={job} input={name} site={site} ") <= 1
    assert outstanding_kills > 0, "no kill interrupted an upload"


def _row_paths(root: Path) -> set[Path]:
    with PartyStore(root) as store:
        return {s.path for s in store.shares()}


def _row_keys(root: Path) -> list[Key]:
    with PartyStore(root) as store:
        return [(s.job, s.input, s.site) for s in store.shares()]


def _job_ids(root: Path) -> set[str]:
    with PartyStore(root) as store:
        return {j.id for j in store.jobs()}


PARTIES = ("alpha", "beta", "gamma")


@contextmanager
def _running(keys_dir: Path, tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    """Mosquitto at the federation's port and the three party daemons, connected; on exit
    every daemon is continued (if stopped) and stopped, then the broker."""
    parties: list[subprocess.Popen] = []
    with mosquitto(keys_dir, tmp_path / "broker", at_federation_port=True):
        try:
            parties = [_start_party(p, keys_dir, tmp_path) for p in PARTIES]
            for proc in parties:
                _wait_for_log(proc, "event=party-connected")
            yield parties
        finally:
            for proc in parties:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)
            _stop(parties)


def _log(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text(errors="replace")


def _accepted(parties: list[subprocess.Popen], job_id: str) -> None:
    for proc in parties:
        _wait_for_log(proc, f"event=job-accepted job={job_id} ")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs mounted where alpha's store goes (root only), unmounted after."""
    mount = tmp_path / "store" / "alpha"
    mount.mkdir(parents=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except OSError as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(directory: Path) -> Path:
    """A file taking every free byte of ``directory``'s file system."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = bytes(1 << 16)
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
        os.fsync(fd)
    finally:
        os.close(fd)
    return filler


@pytest.mark.timeout(120)
def test_full_disk_refuses_the_share_without_an_ack_until_space_is_freed(
    keys_dir, tmp_path, small_disk
):
    """alpha's store is a full tmpfs. oslo's upload has a 400 kB share (``x``) and a 9.6 MB
    one (``big``, spooled to disk while its chunks arrive). Neither is acknowledged: ``x``
    gets a ``share-refused`` line naming the job, the site and "no space", ``big`` one
    line naming its topic (site and party) and "No space left on device"; the daemon
    serves on and nothing is left behind. The site (:func:`smpc.site.upload.upload`)
    re-sends, and once the filler is deleted both are stored, acknowledged and
    reconstruct oslo's data."""
    federation = federation_of(keys_dir)
    job = _job("full", inputs=("x", "big"))
    rng = np.random.default_rng(2)
    data = {"x": rng.normal(0, 100, 50_000), "big": rng.normal(0, 100, 1_200_000)}
    with _running(keys_dir, tmp_path) as parties:
        alpha = parties[0]
        asyncio.run(publish_job(kit(keys_dir, "analyst"), federation, job))
        _accepted(parties, job.id)
        filler = _fill(small_disk)

        async def go():
            uploading = asyncio.create_task(
                upload(kit(keys_dir, "oslo"), federation, job, data,
                       timeout=90, resend_after=1.0)
            )  # fmt: skip
            await _wait_log(alpha, f"event=share-refused job={job.id} ", count=2)  # re-sent
            await _wait_log(alpha, "cannot spool a body of ", count=2)
            assert not uploading.done()  # no ack from alpha: the site waits and re-sends
            with PartyStore(small_disk) as store:
                assert store.shares() == []
            assert not [p for p in (small_disk / "shares").rglob("*") if p.is_file()]
            assert not list((small_disk / "spool").iterdir())
            filler.unlink()
            return await uploading

        report = asyncio.run(go())
    for name in data:  # alpha last, after the space was freed
        assert sorted(report.stored[name]) == [0, 1, 2]
    log = _log(alpha)
    refused = [line for line in log.splitlines() if "event=share-refused" in line]
    for line in refused:  # one line per refused delivery, each naming job, site and cause
        assert f"job={job.id} input=x site=oslo " in line and "no space left" in line, line
    spooled = [line for line in log.splitlines() if "cannot spool" in line]
    topic = Topics(federation.name).upload("oslo", "alpha")
    assert len(spooled) <= len(refused) + 1  # one line per delivery of the body, not per chunk
    for line in spooled:
        assert f"dropped a message on {topic}: cannot spool" in line, line
        assert "No space left on device" in line, line
    assert alpha.poll() is None or alpha.returncode == 0
    assert "Traceback" not in log and "event=job-error" not in log
    assert "event=share-rejected" not in log  # a full disk is not the site's fault
    for name, x in data.items():
        assert log.count(f"event=share-stored job={job.id} input={name} site=oslo ") == 1
        values = {}
        for index, party in enumerate(PARTIES[:2]):
            with PartyStore(tmp_path / "store" / party) as store:
                share = store.share(job.id, name, "oslo")
                assert share is not None
                body = store.read_share(share)
                assert hashlib.sha256(body).hexdigest() == share.digest
                header = ShareHeader.from_json(share.header.encode())
                values[index] = InputShare(header, body).values()
        got = ENCODING.decode(reconstruct(values, FAST, 1), FAST)
        assert np.abs(got - x).max() <= 2.0 ** -(ENCODING.frac_bits + 1)


def _csv_sites(tmp_path: Path, seed: int) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    paths, values = {}, {}
    for site in SITES:
        values[site] = np.round(rng.normal(50, 10, 30))
        paths[site] = tmp_path / f"{site}-{seed}.csv"
        paths[site].write_text("x\n" + "\n".join(f"{v:g}" for v in values[site]) + "\n")
    return paths, values


@pytest.mark.timeout(150)
def test_a_stopped_party_fails_the_job_naming_it_and_serves_on_after_sigcont(keys_dir, tmp_path):
    """The rule (smpc/analyst/jobs.py, run_job): a job closes with the sites *every* party
    holds, so a party silent through the whole upload window fails the job at the window's
    end, naming it; after the close, the analyst needs every party's result (``deliver:
    analyst``) and fails at the job's timeout naming the party whose results are missing.
    After SIGCONT the party catches up and the next job gives the right sum."""
    federation = federation_of(keys_dir)
    analyst = kit(keys_dir, "analyst")
    spec = parse_spec({"name": "slow", "protocol": "sum", "inputs": ["x"]}, "<test>", federation)
    paths, values = _csv_sites(tmp_path, 3)

    def job(job_id: str) -> Job:
        return stamp_job(build_job(spec, analyst, federation, job_id=job_id), 120)

    async def uploads(job_id: str, sites, timeout: float) -> list:
        return await asyncio.gather(
            *[
                upload(kit(keys_dir, s), federation, job_id,
                       protocol_inputs(paths[s], federation), timeout=timeout, resend_after=1.0)
                for s in sites
            ],
            return_exceptions=True,
        )  # fmt: skip

    with _running(keys_dir, tmp_path) as parties:
        gamma = parties[2]
        # 1. gamma stopped through the upload window
        os.kill(gamma.pid, signal.SIGSTOP)

        async def window() -> tuple[BaseException, list]:
            sent = asyncio.create_task(uploads("slow-a", ("oslo", "bergen"), 10))
            with pytest.raises(JobFailed) as failed:
                await run_job(analyst, federation, job("slow-a"), upload_window=6, timeout=20)
            return failed.value, await sent

        failed, ups = asyncio.run(window())
        assert "gamma did not answer the job" in str(failed)
        assert "nothing was opened" in str(failed)
        for up in ups:
            assert isinstance(up, UploadFailed) and "no ack within 10 s from gamma" in str(up)
        os.kill(gamma.pid, signal.SIGCONT)
        _wait_for_log(gamma, "event=job-accepted job=slow-a ")

        # 2. gamma stopped after it stored the shares, before the close: no result from it
        async def results() -> BaseException:
            running = asyncio.create_task(
                run_job(analyst, federation, job("slow-b"), upload_window=6, timeout=14)
            )
            for up in await uploads("slow-b", ("oslo", "bergen"), 30):
                assert not isinstance(up, BaseException), up
            await asyncio.sleep(1.0)  # gamma's holding status follows its last ack
            os.kill(gamma.pid, signal.SIGSTOP)
            with pytest.raises(JobFailed) as failed:
                await running
            return failed.value

        failed = asyncio.run(results())
        assert "no complete result within 14 s: no x.sum, x.count from gamma" in str(failed)
        os.kill(gamma.pid, signal.SIGCONT)

        # 3. every party serves on: the next job gives the sum (the same two sites: one
        # site more than slow-b would be refused as differencing)
        async def after():
            running = asyncio.create_task(
                run_job(analyst, federation, job("slow-c"), upload_window=8, timeout=60)
            )
            for up in await uploads("slow-c", ("oslo", "bergen"), 30):
                assert not isinstance(up, BaseException), up
            return await running

        outcome = asyncio.run(after())
        assert all(proc.poll() is None for proc in parties)
    assert outcome.sites == ("oslo", "bergen")
    two = [values["oslo"], values["bergen"]]
    assert outcome.opened["x.sum"] == pytest.approx(sum(v.sum() for v in two))
    assert outcome.opened["x.count"] == pytest.approx(sum(len(v) for v in two))
    for proc in parties:
        assert proc.returncode == 0 and "Traceback" not in _log(proc)
    with PartyStore(tmp_path / "store" / "gamma") as store:
        assert store.job("slow-a").closed is None  # never closed: nothing computed


MID_SIZE = 1_000_000  # 8 MB per full share: tromso is still sending when it is killed


@pytest.mark.timeout(200)
def test_site_killed_mid_upload_is_left_out_or_fails_the_job_by_min_sites(keys_dir, tmp_path):
    """oslo and bergen upload a fedavg model; tromso's ``smpc upload`` is SIGKILLed as soon as
    a party stored its first envelope. With min_sites 2 the job closes with oslo and bergen
    and the model is their weighted average; with min_sites 3 it fails naming the sites."""
    federation = federation_of(keys_dir)
    analyst = kit(keys_dir, "analyst")
    rng = np.random.default_rng(4)
    models = {s: (n, rng.normal(0, 10, MID_SIZE)) for s, n in zip(SITES, (3, 5, 9), strict=True)}
    paths = {}
    for site, (n, w) in models.items():
        paths[site] = tmp_path / f"{site}.npz"
        np.savez(paths[site], num_examples=n, w=w)

    def uploader(site: str, job: Job) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "smpc.cli", "upload", "--kit", str(keys_dir / "kits" / site),
             "--job", job.id, "--data", str(paths[site]), "--timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    outcomes: dict[int, object] = {}
    with _running(keys_dir, tmp_path) as parties:
        for min_sites in (2, 3):
            text = {"name": f"mid{min_sites}", "protocol": "fedavg", "inputs": ["w"],
                    "min_sites": min_sites}  # fmt: skip
            spec = parse_spec(text, "<test>", federation)
            job = stamp_job(build_job(spec, analyst, federation, job_id=f"mid-{min_sites}"), 300)
            asyncio.run(publish_job(analyst, federation, job))
            _accepted(parties, job.id)
            for site in ("oslo", "bergen"):
                out, err = uploader(site, job).communicate(timeout=120)
                assert "uploaded" in out, err
            tromso = uploader("tromso", job)
            try:
                stored = f"event=share-stored job={job.id} input=num_examples site=tromso "
                deadline = time.monotonic() + 60
                while not any(stored in _log(p) for p in parties):
                    assert tromso.poll() is None, tromso.communicate()
                    assert time.monotonic() < deadline, "tromso's upload never reached a party"
                    time.sleep(0.01)
            finally:
                tromso.kill()
                tromso.communicate()
            try:
                outcomes[min_sites] = asyncio.run(
                    run_job(analyst, federation, job, upload_window=5, timeout=60)
                )
            except JobFailed as exc:
                outcomes[min_sites] = exc
    for min_sites in (2, 3):  # tromso's upload was cut: some party lacks its model share
        held = []
        for party in PARTIES:
            with PartyStore(tmp_path / "store" / party) as store:
                held += [s.input for s in store.shares(f"mid-{min_sites}") if s.site == "tromso"]
        assert "num_examples" in held and held.count("w.weighted") < 3, held
    ok, failed = outcomes[2], outcomes[3]
    assert isinstance(ok, Outcome), ok
    assert ok.sites == ("oslo", "bergen")
    spec = parse_spec({"name": "mid2", "protocol": "fedavg", "inputs": ["w"]}, "<t>", federation)
    write_outputs(spec, ok, tmp_path / "out")
    want = sum(n * w for n, w in (models["oslo"], models["bergen"])) / (3 + 5)
    with np.load(tmp_path / "out" / "model.npz") as got:
        assert np.abs(got["w"] - want).max() <= 1e-5
    assert isinstance(failed, JobFailed)
    assert (
        "only 2 site(s) uploaded to every party (bergen, oslo; not tromso), fewer than "
        "min_sites 3; nothing was opened"
    ) in str(failed)
    for party in PARTIES:
        with PartyStore(tmp_path / "store" / party) as store:
            assert store.job("mid-3").closed is None


def _restart_at(broker, job_index: int, jobs: list[str]):
    """An ``on_job`` hook of the driver: restart the broker (SIGTERM, then start it again)
    half a second after the ``job_index``-th job (1-based) is published."""
    restarts: list[asyncio.Task] = []

    async def restart() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(broker.start)

    async def on_job(job: Job) -> None:
        jobs.append(job.id)
        if len(jobs) == job_index:
            restarts.append(asyncio.get_running_loop().create_task(restart()))

    return on_job, restarts


def _served(keys_dir: Path, tmp_path: Path, site_config: dict[str, str]) -> list:
    """The three party daemons and one ``smpc site serve`` per site, all connected."""
    procs = [_start_party(p, keys_dir, tmp_path) for p in PARTIES]
    try:
        for proc in procs:
            _wait_for_log(proc, "event=party-connected")
        for site, extra in site_config.items():
            config = tmp_path / f"{site}-site.yaml"
            config.write_text(
                f"kit: {keys_dir / 'kits' / site}\n{extra}\nstate: {tmp_path / site}.answered\n"
            )
            procs.append(_start_site(config, tmp_path / f"{site}-site.log"))
    except BaseException:
        _stop(procs)
        raise
    return procs


def _lost_and_back(procs, caplog) -> None:
    """The restart hit the run: every daemon and the analyst lost the broker, and came back."""
    for proc in procs:
        log = _log(proc)
        assert "lost the connection to broker 127.0.0.1:" in log, proc.log_path
        assert "Traceback" not in log, proc.log_path
    lost = [r.getMessage() for r in caplog.records if "event=broker-lost" in r.getMessage()]
    assert lost, "the analyst never lost the broker"
    assert all("broker 127.0.0.1:" in line for line in lost)


ROUNDS = 4


@pytest.mark.timeout(150)
def test_broker_restarted_during_fedavg_training_resumes_the_round(keys_dir, tmp_path, caplog):
    """Mosquitto is restarted half a second after round 3 of 4 is published (in round 3 or
    4): the analyst, the parties and the sites reconnect, the analyst publishes the round's
    job again and collects it, and training goes on from the last completed round: every
    round's model is the plaintext FedAvg of that round's sites."""
    caplog.set_level(logging.WARNING, logger="smpc.analyst")
    federation = federation_of(keys_dir)
    trainer = tmp_path / "steps.py"
    trainer.write_text(TRAINER)
    spec = parse_spec(
        {"name": "steps", "protocol": "fedavg", "inputs": ["w"], "rounds": ROUNDS,
         "round_timeout": 30, "timeout": 90},
        "<test>", federation,
    )  # fmt: skip
    out = tmp_path / "out"
    jobs: list[str] = []
    procs = []
    with mosquitto(keys_dir, tmp_path / "broker", at_federation_port=True) as broker:
        try:
            procs = _served(keys_dir, tmp_path, {s: f"trainer: {trainer}:train" for s in SITES})
            on_job, restarts = _restart_at(broker, 3, jobs)

            async def train():
                context = RunContext(training=True, out=out)
                run = await run_spec(
                    kit(keys_dir, "analyst"), federation, spec, out=out, context=context,
                    on_job=on_job,
                )  # fmt: skip
                await asyncio.gather(*restarts)
                return run

            run = asyncio.run(train())
        finally:
            _stop(procs)
    _lost_and_back(procs, caplog)
    history = run.result.history
    assert [h["round"] for h in history] == list(range(ROUNDS))
    targets = {"oslo": 1.0, "bergen": -2.0, "tromso": 5.0}
    sizes = {"oslo": 10, "bergen": 30, "tromso": 60}
    w = np.zeros(4)
    for k, entry in enumerate(history):  # NumPy FedAvg over the sites each round had
        assert len(entry["sites"]) >= 2, history
        local = {s: w + 0.5 * (targets[s] - w) + k for s in entry["sites"]}
        w = sum(sizes[s] * local[s] for s in local) / sum(sizes[s] for s in local)
        with np.load(out / "rounds" / f"model-r{k}.npz") as got:
            assert np.abs(got["w"] - w).max() <= 1e-6, k
    with np.load(out / "model.npz") as got:
        assert np.abs(got["w"] - w).max() <= 1e-6


GWAS_DATA = Path(__file__).resolve().parents[1] / "smpc" / "data" / "gwas"


@pytest.mark.timeout(200)
def test_broker_restarted_during_gwas_newton_rounds_gives_plinks_logistic(
    keys_dir, tmp_path, caplog
):
    """Mosquitto is restarted half a second after the second Newton round of a logistic
    GWAS is published (bundled cohort, ``reveal: aggregates``, one ``smpc site serve`` per
    site): the run resumes the round it was in and its ``.assoc.logistic`` equals PLINK
    1.9's on the pooled data."""
    from tests.test_gwas_local import PLINK, assert_same_table

    if shutil.which(PLINK) is None:
        pytest.fail("plink1.9 is not installed (tests/run.sh installs the Debian package)")
    caplog.set_level(logging.WARNING, logger="smpc.analyst")
    federation = federation_of(keys_dir)
    doc = {"name": "lg", "protocol": "gwas", "tests": ["logistic"], "covar": ["AGE", "SEX2"],
           "reveal": "aggregates", "round_timeout": 60, "timeout": 120}  # fmt: skip
    context = RunContext(site_files=tuple(GWAS_DATA / s for s in SITES))
    spec = protocol("gwas").complete_spec(parse_spec(doc, "<test>", federation), context)
    out = tmp_path / "out"
    jobs: list[str] = []
    procs = []
    with mosquitto(keys_dir, tmp_path / "broker", at_federation_port=True) as broker:
        try:
            procs = _served(keys_dir, tmp_path, {s: f"data: {GWAS_DATA / s}" for s in SITES})
            on_job, restarts = _restart_at(broker, 3, jobs)  # the scan, r1, then r2

            async def gwas():
                run = await run_spec(
                    kit(keys_dir, "analyst"), federation, spec, out=out, context=context,
                    upload_window=60, on_job=on_job,
                )  # fmt: skip
                await asyncio.gather(*restarts)
                return run

            asyncio.run(gwas())
        finally:
            _stop(procs)
    _lost_and_back(procs, caplog)
    assert len(jobs) > 3 and jobs[2].endswith("-r2")  # restarted during the Newton rounds
    pooled = GWAS_DATA / "POOLED"
    plink = tmp_path / "plink"
    subprocess.run(
        [PLINK, "--bfile", str(pooled), "--allow-no-sex", "--covar", f"{pooled}.cov",
         "--covar-name", "AGE,SEX2", "--logistic", "hide-covar", "--out", str(plink)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert_same_table(
        out / "lg.assoc.logistic", plink.with_suffix(".assoc.logistic"), single_precision=True
    )


@pytest.mark.timeout(60)
def test_broker_gone_for_good_fails_the_job_at_its_timeout_naming_the_broker(keys_dir, tmp_path):
    """The analyst reconnects only until the job's timeout: a broker that does not come
    back ends the job with the broker's address and the reason, not a hang."""
    federation = federation_of(keys_dir)
    analyst = kit(keys_dir, "analyst")
    spec = parse_spec({"name": "gone", "protocol": "sum", "inputs": ["x"]}, "<test>", federation)
    job = build_job(spec, analyst, federation, job_id="gone")
    with mosquitto(keys_dir, tmp_path / "broker", at_federation_port=True) as broker:

        async def go() -> None:
            running = asyncio.create_task(
                run_job(analyst, federation, job, upload_window=600, timeout=6)
            )
            await asyncio.sleep(1.0)
            await asyncio.to_thread(broker.stop)
            await running

        with pytest.raises(TransportError) as failed:  # long before the upload window ends
            asyncio.run(go())
    host, port = federation.broker.host, federation.broker.port
    assert f"cannot connect to broker {host}:{port}" in str(failed.value)
    assert "Connection refused" in str(failed.value)
