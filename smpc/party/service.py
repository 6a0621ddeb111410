"""The computing-party daemon: ``smpc party serve --config parties/<party>.yaml``.

:class:`PartyService` is the party's logic without a network: it takes a job
message or an upload envelope and returns what to answer. :func:`serve` wires
it to the broker (:mod:`smpc.net.transport`): it subscribes to the federation's jobs
and to the uploads addressed to this party, and publishes a signed ack for every
envelope it stored or rejected.

An envelope is accepted only if, in this order: its routing part parses and
names this party; its job is known; its signature verifies against the
federation's key for the named site (and the site is one the job asks); it
decrypts with this party's key; its header agrees with the job (input, scheme,
t, n, modulus, fixed-point bits, element layout). It is then stored durably
(:mod:`smpc.party.store`) and only then acknowledged. Anything else is rejected with
a logged reason and leaves the stored data as it was.

The daemon (:class:`_Daemon`) handles every message under a guard, so one bad
job or envelope is refused with its reason and never stops the party, and runs
each job's MPyC session as a background child process beside the message loop.
How quickly a session notices a missing or dead peer is stated in
:mod:`smpc.mpc.session`.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from smpc import log
from smpc.aio import until
from smpc.config.federation import (
    Federation,
    load_federation,
    read_yaml_mapping,
    user_error_from_validation,
)
from smpc.core.dp import NoisePlan, skellam
from smpc.core.dp import plan as noise_plan
from smpc.core.field import MERSENNE61, field_for
from smpc.errors import UserError
from smpc.mpc.launch import run_session_process, session_command
from smpc.mpc.task import SecType, SessionTask, ShareRef, TaskInput
from smpc.net.reconnect import run_with_reconnect
from smpc.net.topics import Topics
from smpc.net.transport import Connection, TransportError
from smpc.party.store import PartyStore, ShareConflict, StoredJob, StoredShare
from smpc.pki.keys import Kit, load_kit
from smpc.protocols.registry import PROTOCOLS, parse_spec, protocol
from smpc.wire.envelope import EnvelopeError, Route, ShareHeader, envelope_id, peek_route, seal
from smpc.wire.messages import (
    Ack,
    Job,
    JobInput,
    MessageError,
    OpenedOutput,
    PartyResult,
    Status,
    StatusState,
    seal_result,
    sign,
    verify_job,
)
from smpc.wire.packaging import InputShare, open_share

logger = logging.getLogger("smpc.party")

# Seconds a session waits for its peers when none has connected yet (the parties start
# their sessions when each has received the close and pooled its shares); once one
# peer is there, the rest get the session's much shorter connect grace.
CONNECT_TIMEOUT = 120.0


class Policy(BaseModel):
    """What this party agrees to compute, whatever the analyst asks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocols: tuple[str, ...] = tuple(PROTOCOLS)  # allowed protocols
    # Safe defaults: t = 0 (each party holds the sites' values in the clear) and one-site
    # results (a site's own data opened) only where a party's policy says so.
    min_threshold: int = 1  # refuse jobs whose collusion threshold is lower
    min_sites: int = 2  # refuse jobs that may open results of fewer sites
    # Freshness: a job issued more than job_window seconds ago (or lasting longer), or
    # whose deadline has passed, is refused; clock_skew is the tolerance between clocks.
    job_window: float = Field(default=86400.0, gt=0)
    clock_skew: float = Field(default=300.0, ge=0)
    # Disclosure control, on the record counts sites declare in their signed headers:
    min_records: int = 0  # refuse a site's share summarising fewer records
    min_cell: int = 0  # refuse to compute a result over fewer records in all
    refuse_differencing: bool = True  # refuse a site set one site away from an earlier job's


class PartyConfig(BaseModel):
    """``parties/<party>.yaml``: where a party's kit, federation file and store are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kit: Path
    store: Path
    federation: Path | None = None  # default: the copy in the kit (public/federation.yaml)
    log_level: str = "info"
    policy: Policy = Policy()


def load_party_config(path: Path) -> PartyConfig:
    """Read a party config; relative paths are relative to the config file."""
    from pydantic import ValidationError

    data = read_yaml_mapping(path)
    try:
        config = PartyConfig.model_validate(data)
    except ValidationError as exc:
        raise user_error_from_validation(path, exc, PartyConfig) from None
    base = Path(path).resolve().parent
    resolved = {
        k: (base / v if not Path(v).is_absolute() else Path(v))
        for k, v in (
            ("kit", config.kit),
            ("store", config.store),
            ("federation", config.federation),
        )
        if v is not None
    }
    return config.model_copy(update=resolved)


@dataclass(frozen=True)
class Reply:
    """What to publish after handling an upload: a signed ack for one site."""

    site: str
    ack: Ack
    message: bytes


@dataclass(frozen=True)
class JobReply:
    """What to publish after handling a job message: a status, and result envelopes.

    ``session`` is set for ``deliver: parties``: the MPyC session this party must run
    (with the others) to open the outputs, before it can publish its result.
    """

    status: bytes | None
    results: tuple[tuple[str, bytes | bytearray], ...] = ()  # (output, envelope to the analyst)
    session: SessionTask | None = None


class PartyService:
    """One computing party's handling of jobs and upload envelopes."""

    def __init__(
        self, kit: Kit, federation: Federation, store: PartyStore, policy: Policy | None = None
    ) -> None:
        if kit.role != "party" or kit.party_index is None or kit.encryption_key is None:
            raise UserError(f"kit {kit.path} is not a computing party's kit")
        self.kit = kit
        self.federation = federation
        self.store = store
        self.policy = policy or Policy()
        self.index = kit.party_index
        directory = kit.directory
        self._site_keys = {site: directory.verify_key(site) for site in directory.sites}
        self._jobs: dict[str, Job] = {}
        for stored in store.jobs():  # a restart recovers every job it had accepted
            self._jobs[stored.id] = verify_job(stored.closed or stored.message, directory)[1]
            if stored.status == "computing":  # interrupted: never computed (or noised) twice
                self.failed(self._jobs[stored.id], "the party restarted while computing")

    @classmethod
    def from_config(cls, config: PartyConfig) -> PartyService:
        kit = load_kit(config.kit)
        federation = load_federation(config.federation or kit.federation_file)
        return cls(kit, federation, PartyStore(config.store), config.policy)

    # -- jobs -------------------------------------------------------------------------------
    def handle_job(self, data: bytes, topic_job: str | None = None) -> JobReply | None:
        """Accept or refuse a signed job; once it is closed, compute its result shares.

        The job lifecycle (``docs/security.md``): the first accepted message of a job id
        is kept with its signer; a later message with that id must come from the same
        analyst and equal it in every field but ``close``, which is set once. A
        re-delivered close is answered with the bytes published the first time; a job is
        never computed twice. Anything else is refused and logged as what it is.
        ``topic_job`` is the job id of the topic it arrived on, which must be the job's.
        """
        try:
            analyst, job = verify_job(data, self.kit.directory)
        except MessageError as exc:
            log.event(logger, "job-ignored", logging.WARNING, reason=exc)
            return None
        if topic_job is not None and topic_job != job.id:
            log.event(logger, "job-ignored", logging.WARNING, job=job.id, topic=topic_job)
            return None
        known = self.store.job(job.id)
        if known is not None:
            return self._known_job(known, analyst, job, data)
        refusal = self.refusal(job, analyst)
        self.store.put_job(job.id, data, analyst)  # every id seen is remembered, refused too
        if refusal:
            log.event(logger, "job-refused", logging.WARNING, job=job.id, reason=refusal)
            status = self._status(job.id, "refused", reason=refusal)
            self.store.release(job.id, "refused", status)
            return JobReply(status)
        self._jobs[job.id] = job
        log.event(logger, "job-accepted", job=job.id, analyst=analyst, protocol=job.protocol)
        if job.close is None:
            return JobReply(self._holding(job, "accepted"))
        return self._close(job, data)

    def _known_job(self, known: StoredJob, analyst: str, job: Job, data: bytes) -> JobReply | None:
        """A message for a job id this party has seen: a re-delivery, or refused."""

        def refused(event: str, reason: str) -> JobReply | None:
            log.event(logger, event, logging.WARNING, job=job.id, signer=analyst, reason=reason)
            return None

        if analyst != known.analyst:
            return refused("job-takeover", f"job {job.id} belongs to analyst {known.analyst!r}")
        first = verify_job(known.message, self.kit.directory)[1]
        if job.unclosed() != first.unclosed():
            return refused("job-changed", "a job is immutable once accepted; only close may be set")
        released = self.store.released(job.id)
        if known.status == "refused":
            return None if released is None else JobReply(released.status)
        if known.closed is None:
            if job.close is None:  # the open message again (QoS 1, a restart)
                return JobReply(self._holding(job, "accepted"))
            return self._close(job, data)
        closed = verify_job(known.closed, self.kit.directory)[1]
        if (job.close, job.uploads) != (closed.close, closed.uploads):
            return refused(
                "job-reclose",
                f"job {job.id} was closed with {', '.join(closed.close or ())}; another close "
                "set is a differencing attempt",
            )
        if job.close is None:
            return refused("job-replayed", f"job {job.id} is closed already")
        if released is None:
            return None  # still computing: its result is published when it is done
        log.event(logger, "job-redelivered", job=job.id, results=len(released.results))
        return JobReply(released.status, released.results)

    def _close(self, job: Job, data: bytes) -> JobReply | None:
        """The first close of an accepted job: record it, then compute once."""
        if not self.store.close_job(job.id, data):
            return None  # closed meanwhile by the same message
        self._jobs[job.id] = job
        problem = self.close_refusal(job)
        if problem:
            return self.failed(job, problem)
        return self.compute(job)

    def refusal(self, job: Job, analyst: str | None = None) -> str:
        """Why this party's policy refuses the job ("" if it accepts)."""
        problem = self.spec_problem(job)
        if problem:
            return problem
        parties = len(self.federation.parties)
        if analyst is not None and job.analyst != analyst:
            return f"job names analyst {job.analyst!r} but is signed by {analyst!r}"
        stale = self._staleness(job)
        if stale:
            return stale
        if job.n != parties:
            return f"job is for {job.n} parties, the federation has {parties}"
        if job.protocol not in self.policy.protocols:
            allowed = ", ".join(self.policy.protocols)
            return f"protocol {job.protocol!r} is not allowed here (only {allowed})"
        if job.t < self.policy.min_threshold:
            return f"threshold {job.t} is below this party's minimum {self.policy.min_threshold}"
        if job.min_sites < self.policy.min_sites:
            return (
                f"min_sites {job.min_sites} is below this party's minimum {self.policy.min_sites}"
            )
        if job.close is not None and len(job.close) < max(job.min_sites, self.policy.min_sites):
            return f"only {len(job.close)} sites, fewer than min_sites {job.min_sites}"
        if job.analyst not in self.kit.directory.analysts:
            return f"results would go to {job.analyst!r}, who is not an analyst of the federation"
        return ""

    def spec_problem(self, job: Job) -> str:
        """Why the protocol spec a job carries is not a valid spec here ("" if it is).

        The spec is checked with its types before anything is stored or computed, so a
        signed job with a malformed field (``timeout: "60"``) is refused with the field's
        name instead of failing later inside a computation.
        """
        try:
            protocol(job.protocol).payload(job)
            if job.spec:
                parse_spec(job.spec, f"job {job.id}: spec", self.federation)
        except UserError as exc:
            return "; ".join(str(exc).splitlines())
        return ""

    def _staleness(self, job: Job, now: float | None = None) -> str:
        """Why the job's issue time or deadline is outside this party's window ("" if not)."""
        now = time.time() if now is None else now
        skew, window = self.policy.clock_skew, self.policy.job_window
        if not job.issued or not job.deadline:
            return "the job carries no issue time and deadline (sign it with this version)"
        if job.issued > now + skew:
            return f"the job is issued {job.issued - now:.0f} s in the future"
        if now - job.issued > window or job.deadline - job.issued > window:
            return f"the job was issued more than {window:g} s ago or lasts longer: refused"
        if now > job.deadline + skew:
            return f"the job's deadline passed {now - job.deadline:.0f} s ago"
        return ""

    def close_refusal(self, job: Job) -> str:
        """Why a close of an accepted job cannot be computed ("" if it can)."""
        assert job.close is not None
        if time.time() > job.deadline + self.policy.clock_skew:
            return "the job was closed after its deadline"
        if len(job.close) < max(job.min_sites, self.policy.min_sites):
            least = max(job.min_sites, self.policy.min_sites)
            return f"only {len(job.close)} sites, fewer than the minimum {least}"
        if job.uploads is None:
            return "the close names no upload ids (sign it with this version)"
        return ""

    def complete_sites(self, job: Job) -> dict[str, str]:
        """The sites this party holds every input of, for ``job``, with their upload ids."""
        held: dict[str, set[str]] = {}
        uploads: dict[str, str] = {}
        for share in self.store.shares(job.id):
            held.setdefault(share.site, set()).add(share.input)
            uploads[share.site] = share.upload
        wanted = {spec.name for spec in job.inputs}
        return {site: uploads[site] for site in sorted(held) if held[site] >= wanted}

    def compute(self, job: Job) -> JobReply:
        """Sum the shares of the agreed sites per input; seal each sum to the analyst."""
        assert job.close is not None  # computed only once closed
        shares = self._held(job)
        missing = [
            f"{i.name}@{site}"
            for site in job.close
            for i in job.inputs
            if (i.name, site) not in shares
        ]
        if missing:
            reason = f"this party lacks shares of the agreed sites: {', '.join(missing)}"
            return self.failed(job, reason)
        other = [
            f"{site} (holds {shares[(i.name, site)].upload}, "
            f"the close says {(job.uploads or {}).get(site)})"
            for site in job.close
            for i in job.inputs
            if shares[(i.name, site)].upload != (job.uploads or {}).get(site)
        ]
        if other:
            return self.failed(job, f"other uploads than the agreed ones: {', '.join(other)}")
        disclosure = self._disclosure_problem(job, shares)
        if disclosure:
            return self.failed(job, disclosure)
        return protocol(job.protocol).combine(self, job, self._spec(job), shares)

    def _spec(self, job: Job) -> Any:
        """The job's spec, as this party validates it (None: a job that carries none)."""
        return parse_spec(job.spec, f"job {job.id}", self.federation) if job.spec else None

    def sum_shares(self, job: Job, spec: Any, shares: dict) -> JobReply:
        """Add the agreed sites' shares per input; with dp, this party's noise share.

        The sums are sealed to the analyst, or opened inside MPyC (``deliver: parties``).
        """
        try:
            noise = self.noise_plan(job, shares)
        except UserError as exc:
            return self.failed(job, str(exc))
        if job.deliver == "parties" or (noise is not None and job.scheme == "shamir"):
            # Shamir noise is an MPyC input of every party, so it needs a session even
            # when the analyst opens the result.
            return self.session(self.session_task(job, shares, noise))
        own_noise = None if noise is None else {
            i.name: skellam(noise.per_party, self._shape(job, shares, i.name))
            for i in job.inputs if i.noised
        }  # fmt: skip
        return self.seal_results(job, shares, own_noise)

    def session(self, task: SessionTask) -> JobReply:
        """Hand ``task`` to this party's MPyC session (the daemon runs it in the background)."""
        return JobReply(None, session=task)

    def session_dir(self, job: Job) -> Path:
        """The folder of ``job``'s session files in this party's store (created)."""
        workdir = self.store.root / "sessions" / job.id
        workdir.mkdir(parents=True, exist_ok=True)
        return workdir

    def declared_records(self, job: Job, shares: dict) -> int:
        """The records the agreed sites declare in all (their envelope headers)."""
        assert job.close is not None  # computed only once closed
        first = job.inputs[0].name
        records = [
            ShareHeader.from_json(shares[(first, site)].header.encode()).meta.get("records", 0)
            for site in job.close
        ]
        return sum(r for r in records if isinstance(r, int))

    def _held(self, job: Job) -> dict:
        """This party's stored shares of ``job`` by (input, site)."""
        return {(s.input, s.site): s for s in self.store.shares(job.id)}

    def _shape(self, job: Job, shares: dict, name: str) -> tuple[int, ...]:
        assert job.close is not None  # computed only once closed
        return ShareHeader.from_json(shares[(name, job.close[0])].header.encode()).shape

    def noise_plan(self, job: Job, shares: dict) -> NoisePlan | None:
        """The dp noise this party adds for ``job``, or None without dp (smpc.core.dp)."""
        dp = job.spec.get("dp")
        if not dp:
            return None
        spec = parse_spec(job.spec, f"job {job.id}", self.federation)
        noised = [i for i in job.inputs if i.noised]
        plan = noise_plan(
            spec.dp,
            [self._shape(job, shares, i.name) for i in noised],
            parties=job.n,
            threshold=job.t,
            frac_bits=noised[0].frac_bits if noised else 0,
            compositions=spec.rounds_of_noise,
        )
        log.event(logger, "dp-noise", job=job.id, mu=plan.mu, per_party=plan.per_party)
        return plan

    def seal_results(
        self, job: Job, shares: dict, noise: dict[str, np.ndarray] | None = None
    ) -> JobReply:
        """Sum the agreed sites' shares per input, add this party's noise share, seal.

        ``noise`` maps a noised input to this party's share of the noise: its own draw
        (additive) or its share of every party's MPyC-shared draw (Shamir).
        """
        assert job.close is not None  # computed only once closed
        field = field_for(job.modulus)

        def totals() -> Iterator[tuple[JobInput, np.ndarray]]:
            assert job.close is not None
            for spec in job.inputs:
                total: np.ndarray | None = None  # a running sum: one site's share at a time
                for site in job.close:
                    values = self.share_values(shares[(spec.name, site)])
                    if total is not None and values.shape != total.shape:
                        shapes = f"{values.shape} and {total.shape}"
                        raise UserError(f"sites sent {spec.name!r} in different shapes {shapes}")
                    total = values.copy() if total is None else field.add(total, values)
                    del values
                assert total is not None  # a close names at least one site
                if noise and spec.name in noise:
                    total = field.add(total, field.from_int(noise[spec.name]))
                yield spec, total

        return self.seal_outputs(job, totals())

    def share_values(self, stored: StoredShare) -> np.ndarray:
        """A stored share as field elements (a seed expanded)."""
        header = ShareHeader.from_json(stored.header.encode())
        return InputShare(header, self.store.read_share(stored)).values()

    def seal_outputs(self, job: Job, outputs: Iterable[tuple[JobInput, np.ndarray]]) -> JobReply:
        """Seal this party's share of every output to the analyst (one at a time)."""
        assert job.close is not None  # computed only once closed
        field = field_for(job.modulus)
        analyst_key = self.kit.directory.analyst_encryption_key(job.analyst)
        results = []
        try:
            for spec, total in outputs:
                header = ShareHeader(
                    job=job.id, input=spec.name, site=self.kit.name, party=self.index,
                    scheme=job.scheme, t=job.t, n=job.n, modulus=job.modulus,
                    frac_bits=spec.frac_bits, dtype=field.dtype_tag, shape=total.shape,
                )  # fmt: skip
                body = field.to_bytes(total)
                results.append((spec.name, seal(header, body, analyst_key, self.kit.signing_key)))
                del total, body
        except UserError as exc:
            return self.failed(job, str(exc))
        log.event(logger, "job-computed", job=job.id, sites=len(job.close), outputs=len(results))
        return self._done(job, tuple(results))

    def _disclosure_problem(self, job: Job, shares: dict) -> str:
        """Minimum cell count and differencing, before anything is computed."""
        assert job.close is not None  # computed only once closed
        if self.policy.min_cell:
            total = self.declared_records(job, shares)
            if total < self.policy.min_cell:
                return (
                    f"the agreed sites declare {total} records in all, fewer than this party's "
                    f"minimum cell count {self.policy.min_cell}"
                )
        if self.policy.refuse_differencing:
            inputs = {i.name for i in job.inputs}
            for earlier in self.store.jobs():
                if earlier.id == job.id or earlier.status != "done":
                    continue
                other = verify_job(earlier.closed or earlier.message, self.kit.directory)[1]
                if other.protocol != job.protocol or {i.name for i in other.inputs} != inputs:
                    continue
                if other.payload != job.payload:
                    # Training rounds start from different global models: subtracting two
                    # rounds' results does not isolate one site's update.
                    continue
                if len(set(other.close or ()) ^ set(job.close)) == 1:
                    (site,) = set(other.close or ()) ^ set(job.close)
                    return (
                        f"its sites differ from job {other.id} on the same inputs by one site "
                        f"({site}): the two results together would reveal that site's data"
                    )
        return ""

    def session_task(self, job: Job, shares: dict, noise: NoisePlan | None = None) -> SessionTask:
        """The MPyC task opening the sum of the agreed sites' shares of every output.

        With dp noise and ``deliver: analyst`` the session only shares the noise: it
        returns this party's noise shares, which :meth:`seal_results` adds.
        """
        assert job.close is not None  # computed only once closed
        bits = MERSENNE61.bit_length() - 32  # the widest SecInt MPyC allows in GF(2^61 - 1)
        return SessionTask(
            job=job.id,
            party=self.index,
            sectype=SecType(kind="int", bit_length=bits, prime=job.modulus),
            scheme=job.scheme,
            protocol=job.protocol,
            step="noise" if noise is not None and job.deliver == "analyst" else "sum",
            noise_mu=0.0 if noise is None else noise.per_party,
            noised=[i.name for i in job.inputs if i.noised] if noise is not None else [],
            inputs=[
                TaskInput(
                    name=spec.name,
                    shape=ShareHeader.from_json(
                        shares[(spec.name, job.close[0])].header.encode()
                    ).shape,
                    shares=[
                        ShareRef(
                            site=site,
                            path=shares[(spec.name, site)].path.resolve(),
                            seed=shares[(spec.name, site)].seed,
                        )
                        for site in job.close
                    ],
                )
                for spec in job.inputs
            ],
        )

    def session_addresses(self, job: Job) -> list[tuple[str, int]]:
        """Every party's host and the port it listens on for this job.

        Each party takes the port at the same offset of its own range, derived from
        the job id, so all parties agree without another message.
        """
        offset = int.from_bytes(hashlib.sha256(job.id.encode()).digest()[:8], "big")
        return [
            (p.host, p.mpyc_ports.low + offset % len(p.mpyc_ports)) for p in self.federation.parties
        ]

    async def run_session(
        self,
        job: Job,
        task: SessionTask,
        timeout: float = CONNECT_TIMEOUT,
        *,
        call: Callable[..., Awaitable[Any]] = asyncio.to_thread,
    ) -> JobReply:
        """Run this party's MPyC session as a child process and sign what it opened.

        The process is awaited, never waited for: the event loop goes on meanwhile.
        ``call`` runs the blocking steps (files, the store, sealing) off the loop; the
        daemon passes one that holds its store lock. Cancelling kills the process.
        """
        cmd, limit = await call(self._session_setup, job, task, timeout)
        port = self.session_addresses(job)[self.index][1]
        log.event(logger, "session-start", job=job.id, port=port)
        failure = await run_session_process(
            cmd, limit=limit, on_line=functools.partial(_session_line, job.id)
        )
        if failure:
            return await call(self.failed, job, f"MPyC session failed: {failure}")
        return await call(self.session_reply, job, task)

    def _session_setup(
        self, job: Job, task: SessionTask, timeout: float
    ) -> tuple[list[str], float]:
        """Write the task file; the session's command line and its time limit."""
        workdir = self.store.root / "sessions" / job.id
        workdir.mkdir(parents=True, exist_ok=True)
        task_path, result_path = workdir / "task.json", workdir / "result.json"
        result_path.unlink(missing_ok=True)
        task.model_copy(update={"party_names": list(self.federation.party_names)}).write(task_path)
        cmd = session_command(
            kit=self.kit.path.resolve(), task=task_path, result=result_path,
            addresses=self.session_addresses(job), index=self.index,
            threshold=0 if job.scheme == "additive" else job.t, timeout=timeout,
        )  # fmt: skip
        return cmd, max(2 * timeout, self._job_timeout(job))

    def session_reply(self, job: Job, task: SessionTask) -> JobReply:
        """What this party publishes after its session succeeded: the signed openings."""
        assert job.close is not None  # computed only once closed
        workdir = self.store.root / "sessions" / job.id
        result_path = workdir / "result.json"
        if task.step == "noise":  # the dp noise shares of sums sealed to the analyst
            noise = json.loads(result_path.read_text())["noise"]
            noise_shares = {name: np.load(workdir / file) for name, file in noise.items()}
            reply = self.seal_results(job, self._held(job), noise_shares)
            for file in noise.values():
                (workdir / file).unlink(missing_ok=True)
            return reply
        opened = json.loads(result_path.read_text())["outputs"]
        opened = protocol(job.protocol).session_openings(self, job, self._spec(job), task, opened)
        problem = outputs_problem(job, opened)
        if problem:
            return self.failed(job, problem)
        result = PartyResult(
            job=job.id,
            party=self.index,
            outputs={
                name: OpenedOutput(shape=tuple(o["shape"]), values=tuple(o["values"]))
                for name, o in opened.items()
            },
        )
        log.event(logger, "job-computed", job=job.id, sites=len(job.close), opened="mpyc")
        message = sign("result", result, self.kit.name, self.kit.signing_key)
        analyst_key = self.kit.directory.analyst_encryption_key(job.analyst)
        sealed = seal_result(
            message, job, self.kit.name, self.index, analyst_key, self.kit.signing_key
        )
        return self._done(job, (("", sealed),))

    def _done(self, job: Job, results: tuple[tuple[str, bytes | bytearray], ...]) -> JobReply:
        """Record what this party releases for a computed job, then hand it out (once)."""
        status = self._status(job.id, "done", sites=job.close)
        kept = tuple((name, bytes(body)) for name, body in results)
        self.store.release(job.id, "done", status, kept)
        return JobReply(status, kept)

    def _job_timeout(self, job: Job) -> float:
        """The whole job's time limit its spec sets (0 without a spec); typed, never raw."""
        if not job.spec:
            return 0.0
        return parse_spec(job.spec, f"job {job.id}: spec", self.federation).timeout

    def failed(self, job: Job, reason: str) -> JobReply:
        log.event(logger, "job-failed", logging.ERROR, job=job.id, reason=reason)
        status = self._status(job.id, "failed", reason=reason)
        self.store.release(job.id, "failed", status)
        return JobReply(status)

    def _status(
        self, job_id: str, state: StatusState, *, sites=(), reason: str = "", uploads=None
    ) -> bytes:
        status = Status(
            job=job_id, party=self.index, state=state, sites=tuple(sites), reason=reason,
            uploads=uploads or {},
        )  # fmt: skip
        return sign("status", status, self.kit.name, self.kit.signing_key)

    def _holding(self, job: Job, state: StatusState) -> bytes:
        held = self.complete_sites(job)
        return self._status(job.id, state, sites=tuple(held), uploads=held)

    def holding_status(self, job_id: str) -> bytes | None:
        """The party's current holdings of an open job (sent after every stored share)."""
        job = self._jobs.get(job_id)
        if job is None or job.close is not None:
            return None
        return self._holding(job, "holding")

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    # -- uploads ----------------------------------------------------------------------------
    def handle_upload(self, data: bytes, sender: str | None = None) -> Reply | None:
        """Verify, check, store and acknowledge one envelope (see module docstring).

        ``sender`` is the site named by the topic it arrived on (the broker lets a site
        publish only on its own): it must be the envelope's signer.

        Returns the ack to publish, or None when there is nobody to answer: the
        bytes are not an envelope, or its job is not known yet (the site
        re-publishes until it hears back, so a job announced late still works).
        """
        try:
            route = peek_route(data)
            eid = envelope_id(data)
        except EnvelopeError as exc:
            self._reject(str(exc), job=None, input=None, site=None)
            return None
        job = self._jobs.get(route.job)
        if job is None:
            log.event(
                logger, "upload-deferred", job=route.job, site=route.site, reason="unknown job"
            )
            return None
        context: dict[str, Any] = {"job": route.job, "input": route.input, "site": route.site}

        def rejected(reason: str, digest: str = "") -> Reply:
            return self._reply_rejected(reason, route=route, envelope=eid, digest=digest)

        stored = self.store.share(job.id, route.input, route.site)
        if route.party == self.index and stored is not None and stored.envelope_id == eid:
            # The very envelope stored before (a site re-publishing while the ack was on
            # its way): same signed id, so acknowledge again without decrypting it.
            log.event(logger, "share-duplicate", **context)
            ack = Ack(
                job=job.id, input=route.input, site=route.site, party=self.index,
                digest=stored.digest, envelope_id=eid, status="stored",
            )  # fmt: skip
            return Reply(route.site, ack, self._sign(ack))

        if route.party != self.index:
            return rejected(f"envelope is for party {route.party}")
        if sender is not None and sender != route.site:
            return rejected(f"envelope of site {route.site!r} arrived on {sender!r}'s topic")
        if job.sites is not None and route.site not in job.sites:
            return rejected(f"site {route.site!r} is not part of job {job.id}")
        assert self.kit.encryption_key is not None  # every party kit has one
        try:
            share = open_share(data, self.kit.encryption_key, self._site_keys, party=self.index)
        except EnvelopeError as exc:
            return rejected(str(exc))
        header = share.header
        problem = header_problem(header, job) or self._too_few_records(header)
        upload = header.meta.get("upload")
        if not problem and not (isinstance(upload, str) and upload):
            problem = "the envelope carries no upload id (share it with this version)"
        if problem:
            return rejected(problem, header.digest)
        try:
            outcome = self.store.put_share(
                job=header.job,
                input=header.input,
                site=header.site,
                digest=header.digest,
                envelope_id=eid,
                seed=header.seed,
                header=header.to_json().decode(),
                body=share.body,
                upload=str(upload),
            )
        except ShareConflict as exc:
            return rejected(str(exc), header.digest)
        log.event(logger, f"share-{outcome}", **context, bytes=len(share.body), seed=header.seed)
        ack = Ack(
            job=header.job, input=header.input, site=header.site, party=self.index,
            digest=header.digest, envelope_id=eid, status="stored",
        )  # fmt: skip
        return Reply(header.site, ack, self._sign(ack))

    def _too_few_records(self, header: ShareHeader) -> str:
        records = header.meta.get("records")
        if self.policy.min_records and (
            not isinstance(records, int) or records < self.policy.min_records
        ):
            return (
                f"site {header.site} declares {records} records, fewer than this party's "
                f"minimum of {self.policy.min_records} per site"
            )
        return ""

    def _reply_rejected(self, reason: str, *, route: Route, envelope: str, digest: str) -> Reply:
        self._reject(reason, job=route.job, input=route.input, site=route.site)
        ack = Ack(
            job=route.job, input=route.input, site=route.site, party=self.index,
            digest=digest, envelope_id=envelope, status="rejected", reason=reason,
        )  # fmt: skip
        return Reply(route.site, ack, self._sign(ack))

    def _reject(self, reason: str, *, job: str | None, input: str | None, site: str | None) -> None:
        self.store.reject(reason, job=job, input=input, site=site)
        log.event(
            logger,
            "share-rejected",
            logging.WARNING,
            job=job,
            input=input,
            site=site,
            reason=reason,
        )

    def _sign(self, ack: Ack) -> bytes:
        return sign("ack", ack, self.kit.name, self.kit.signing_key)


def outputs_problem(job: Job, opened: Mapping[str, Any]) -> str:
    """Why a session's opened outputs are not exactly those the job names ("" if they are):
    a party fails the job with this reason rather than deliver a partial result."""
    named = {o.name for o in job.delivered}
    missing, unexpected = sorted(named - set(opened)), sorted(set(opened) - named)
    problems = []
    if missing:
        problems.append(f"the MPyC session opened none of {', '.join(missing)}")
    if unexpected:
        problems.append(f"it opened outputs the job does not name: {', '.join(unexpected)}")
    return "; ".join(problems)


def header_problem(header: ShareHeader, job: Job) -> str:
    """Why an envelope header does not fit its job ("" if it does)."""
    spec = job.input(header.input)
    if spec is None:
        return f"job {job.id} has no input {header.input!r}"
    expected = {
        "scheme": "shamir" if spec.public else job.scheme,
        "t": 0 if spec.public else job.t,
        "n": job.n,
        "modulus": spec.modulus or job.modulus,
        "frac_bits": spec.frac_bits,
        "dtype": field_for(spec.modulus or job.modulus).dtype_tag,
    }
    for name, want in expected.items():
        got = getattr(header, name)
        if got != want:
            return f"header {name} is {got!r}, job {job.id} says {want!r}"
    if header.seed and not job.compact:
        return f"job {job.id} asks for full shares, got a seed"
    return ""


def _return_freed_memory() -> None:
    """Make glibc give large freed buffers back to the OS.

    A party handles many 80 MB bodies in worker threads. With glibc's per-thread
    arenas and its adaptive mmap threshold, freed buffers stay in the heap and the
    resident size grows toward the sum of everything received; a fixed 1 MiB mmap
    threshold and two arenas keep it near what is in use.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_arena_max, m_mmap_threshold = -8, -3  # from <malloc.h>
    libc.mallopt(m_arena_max, 2)
    libc.mallopt(m_mmap_threshold, 1 << 20)


async def serve(config: PartyConfig, stop: asyncio.Event, *, reconnect_max: float = 30.0) -> None:
    """Run the party until ``stop`` is set: reconnect to the broker whenever it goes away.

    The broker session is persistent (a fixed client id, QoS 1), so what was
    published while the party was down or disconnected is delivered when it
    comes back; anything it did not acknowledge is re-published by the site.
    MPyC sessions run as background tasks (:class:`_Daemon`) and outlive a
    reconnect; stopping the daemon kills them.
    """
    _return_freed_memory()
    service = PartyService.from_config(config)
    name = service.kit.name
    daemon = _Daemon(service, stop)
    federation = service.federation
    log.event(logger, "party-start", party=name, index=service.index, store=config.store)

    def connect() -> Connection:
        # Large uploads are reassembled on disk, so memory stays bounded
        # however many sites upload at once.
        return Connection.from_kit(service.kit, federation, spool_dir=Path(config.store) / "spool")

    async def session(conn: Connection) -> None:
        await conn.subscribe(daemon.topics.jobs())
        await conn.subscribe(daemon.topics.uploads_for(name))
        log.event(logger, "party-connected", party=name, broker=federation.broker.host)
        daemon.conn = conn
        try:
            async for message in until(conn.messages(), stop):
                await daemon.dispatch(message)
        finally:
            daemon.conn = None

    def lost(exc: Exception, wait: float) -> None:
        log.event(logger, "broker-lost", logging.WARNING, party=name, reason=exc)

    try:
        await run_with_reconnect(
            connect, session, max_delay=reconnect_max,
            transient=(TransportError,), stop=stop, on_retry=lost,
        )  # fmt: skip
    finally:
        await daemon.stop_sessions()
        service.store.close()
        log.event(logger, "party-stop", party=name)


class _Daemon:
    """The party daemon's state beside its broker connection.

    - Every message is handled under a guard (:meth:`dispatch`): whatever one message
      does, the daemon goes on.
    - MPyC sessions are background tasks, one per job (``sessions``): the message loop
      never awaits one, so shares of other jobs are stored and other jobs answered
      while a session runs. A task publishes its job's results and status when its
      session ends, over whatever connection is up by then.
    - The service's blocking steps run in a worker thread, one at a time (``lock``):
      the store is one SQLite connection, used by one thread at a time.
    """

    def __init__(self, service: PartyService, stop: asyncio.Event) -> None:
        self.service = service
        self.stop = stop
        self.topics = Topics(service.federation.name)
        self.name = service.kit.name
        self.conn: Connection | None = None
        self.lock = asyncio.Lock()
        self.sessions: dict[str, asyncio.Task[None]] = {}

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread, holding the store lock."""
        async with self.lock:
            return await asyncio.to_thread(fn, *args)

    async def dispatch(self, message) -> None:
        """Handle one message under a guard: whatever it does, the daemon goes on.

        A job or envelope whose handling raises is logged (``event=job-error``, the
        traceback at debug level); a job is marked failed in the store and refused
        with a signed ``failed`` status naming the error. A job that failed at this
        party is final: its messages, delivered again (the broker retains the job,
        so a restart sees it again), are answered with that status, not handled.
        """
        try:
            kind, fields = self.topics.parse(message.topic)
        except ValueError:
            return
        job_id = fields.get("job") if kind == "job" else _upload_job(message.body)
        try:
            if kind == "job":
                await self.on_job(fields["job"], message.body)
            elif kind == "upload":
                await self.on_upload(message.body, fields.get("site"))
        except (TransportError, asyncio.CancelledError):
            raise  # the broker went away (serve reconnects) or the daemon stops
        except Exception as exc:  # one message must never stop the daemon
            await self.crashed(kind, job_id, exc, message.body)

    async def crashed(
        self,
        kind: str,
        job_id: str | None,
        exc: BaseException,
        body: bytes = b"",
        *,
        background: bool = False,
    ) -> None:
        """Log an error handling a message; a job is failed (and not retried), an
        envelope rejected with the error (the site stops re-sending it and says why)."""
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        log.event(logger, "job-error", logging.ERROR, job=job_id, kind=kind, reason=reason)
        logger.debug("job %s: handling its %s raised", job_id, kind, exc_info=exc)
        try:
            if kind == "job" and job_id is not None:
                status = await self.call(_crashed, self.service, job_id, reason)
                await self.send(job_id, JobReply(status), background=background)
            elif kind == "upload" and self.conn is not None:
                reply = await self.call(_upload_crashed, self.service, body, reason)
                if reply is not None:
                    await self.conn.publish(self.topics.ack(reply.site, self.name), reply.message)
        except (TransportError, asyncio.CancelledError):
            raise
        except Exception:  # the store itself may be what fails: the log line stays
            logger.debug("job %s: could not report the error", job_id, exc_info=True)

    async def on_job(self, job_id: str, body: bytes) -> None:
        service = self.service
        if job_id in self.sessions:  # a re-delivered close while its session runs
            log.event(logger, "job-ignored", job=job_id, reason="its MPyC session is running")
            return
        stored = await self.call(service.store.job, job_id)
        if stored is not None and stored.status == "failed":
            log.event(logger, "job-skipped", job=job_id, reason="this party failed the job before")
            released = await self.call(service.store.released, job_id)
            reason = "this party failed the job before; a failed job is not run again"
            if released is None:
                released_status = service._status(job_id, "failed", reason=reason)
            else:
                released_status = released.status
            await self.send(job_id, JobReply(released_status))
            return
        answer = await self.call(service.handle_job, body, job_id)
        if answer is None:
            return
        if answer.session is not None:  # open inside MPyC first, beside the message loop
            job = service.job(job_id)
            if job is None or job.id != answer.session.job:
                log.event(logger, "job-ignored", job=job_id, reason="topic and job disagree")
                return
            self.start_session(job, answer.session)
        await self.send(job_id, answer)

    def start_session(self, job: Job, task: SessionTask) -> None:
        task_ = asyncio.create_task(self.session(job, task), name=f"session-{job.id}")
        self.sessions[job.id] = task_
        task_.add_done_callback(lambda _: self.sessions.pop(job.id, None))

    async def session(self, job: Job, task: SessionTask) -> None:
        """One job's MPyC session, start to published outcome (a background task)."""
        try:
            reply = await self.service.run_session(job, task, call=self.call)
        except asyncio.CancelledError:
            log.event(logger, "session-stopped", logging.WARNING, job=job.id)
            raise
        except Exception as exc:  # the session's own failures are replies, not raises
            await self.crashed("job", job.id, exc, background=True)
            return
        state = "failed" if reply.results == () and reply.status is not None else "done"
        log.event(logger, "session-end", job=job.id, outcome=state)
        await self.send(job.id, reply, background=True)

    async def send(self, job_id: str, reply: JobReply, *, background: bool = False) -> None:
        """Publish a job's results and status.

        From the message loop a lost broker raises (serve reconnects); a background
        task waits for the next connection instead and publishes there.
        """
        if not background:
            assert self.conn is not None  # the message loop runs on a connection
            await self._publish(self.conn, job_id, reply)
            return
        while True:
            conn = self.conn
            if conn is None:  # between connections: serve is reconnecting
                if self.stop.is_set():
                    log.event(logger, "reply-lost", logging.WARNING, job=job_id)
                    return
                await asyncio.sleep(0.5)
                continue
            try:
                await self._publish(conn, job_id, reply)
                return
            except TransportError as exc:
                if conn is self.conn:  # not yet replaced: wait for serve to notice
                    log.event(logger, "publish-failed", logging.WARNING, job=job_id, reason=exc)
                    await asyncio.sleep(0.5)

    async def _publish(self, conn: Connection, job_id: str, reply: JobReply) -> None:
        for _, envelope in reply.results:
            analyst = self.service.job(job_id).analyst  # type: ignore[union-attr]
            await conn.publish_body(self.topics.result(analyst, job_id, self.name), envelope)
        if reply.status is not None:
            await conn.publish(self.topics.status(job_id, self.name), reply.status)

    async def on_upload(self, body: bytes, sender: str | None) -> None:
        # Decryption and fsync run off the event loop so the broker link stays alive.
        service = self.service
        reply = await self.call(service.handle_upload, body, sender)
        if reply is not None and self.conn is not None:
            await self.conn.publish(self.topics.ack(reply.site, self.name), reply.message)
            status = await self.call(service.holding_status, reply.ack.job)
            if status is not None and reply.ack.status == "stored":
                await self.conn.publish(self.topics.status(reply.ack.job, self.name), status)

    async def stop_sessions(self) -> None:
        """Cancel every running session (each kills its process) and wait for them."""
        running = list(self.sessions.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def _session_line(job_id: str, line: str) -> None:
    """Log one stderr line of a job's session: ``event=`` lines with the job added."""
    name, _, rest = line.partition(" ")
    if not name.startswith("event="):
        logger.debug("job %s session: %s", job_id, line)
        return
    level = logging.INFO if name in ("event=mpyc-connected", "event=mpyc-peer") else logging.WARNING
    logger.log(level, f"{name} job={job_id} {rest}".rstrip())


def _upload_job(body: bytes) -> str | None:
    """The job an upload envelope names (for logging), or None if it has no route."""
    try:
        return peek_route(body).job
    except Exception:  # a broken envelope is reported by handle_upload
        return None


def _upload_crashed(service: PartyService, body: bytes, reason: str) -> Reply | None:
    """A signed rejection of an envelope whose handling raised (None if it has no route)."""
    try:
        route, eid = peek_route(body), envelope_id(body)
    except EnvelopeError:
        return None
    reason = f"internal error at this party: {reason}"
    return service._reply_rejected(reason, route=route, envelope=eid, digest="")


def _crashed(service: PartyService, job_id: str, reason: str) -> bytes:
    """Remember that handling ``job_id`` raised (it is not retried); the status to send."""
    status = service._status(job_id, "failed", reason=f"internal error at this party: {reason}")
    if service.store.job(job_id) is not None:
        service.store.release(job_id, "failed", status)  # a re-delivery gets this status
        service.store.set_job_status(job_id, "failed")
    return status
