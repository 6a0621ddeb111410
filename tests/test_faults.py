"""The fault matrix, on real processes: Mosquitto, ``smpc party serve`` daemons, sites and
the analyst's driver, and real MPyC sessions.

- A party SIGKILLed at random points while it stores shares, many times over: after
  every kill its store is consistent (every acknowledged share there and intact, nothing
  partial visible, nothing twice, the files exactly those of the SQLite rows).
- A full disk under a party's store (a small tmpfs): the share is refused without an ack,
  with one log line naming the job, the site and "no space"; nothing is left behind, and
  the site's retried upload is acknowledged once space is freed.
- A slow party (SIGSTOP past the job's upload window or its result timeout, then
  SIGCONT): the analyst fails the job naming the party, and the party serves on.
- A site killed mid-upload: the job closes without it when ``min_sites`` is met (the sum
  of the other sites), and fails naming the sites when it is not.
- The broker restarted during multi-round FedAvg training and during a GWAS's Newton
  rounds: the run resumes or fails with a reason, never hangs, never gives a wrong
  result.

Each test starts its own broker and daemons and stops them (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from smpc.core.field import FAST
from smpc.net.connection import Connection
from smpc.net.topics import Topics
from smpc.party.store import PartyStore
from smpc.site.upload import seal_inputs
from smpc.wire.messages import Ack, Job, JobInput, sign, stamp_job, verify_ack
from smpc.wire.packaging import open_share
from tests.brokers import federation_of, kit, mosquitto, requires_mosquitto
from tests.test_upload_integration import ENCODING, _start_party, _stop

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
        await self._jobs.publish(self.topics.job(job.id), message, retain=True)

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
            await self._jobs.clear_retained(self.topics.job(job_id))
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


@pytest.mark.timeout(180)
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
