"""A party's computation of a closed job: combining the agreed sites' shares through the
job's protocol (:meth:`smpc.protocols.base.Protocol.combine`), the sums and dp noise of
linear protocols, MPyC sessions, and sealing what it releases to the analyst."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from smpc import log
from smpc.config.federation import Federation
from smpc.core.dp import NoisePlan, skellam
from smpc.core.dp import plan as noise_plan
from smpc.core.field import MERSENNE61, field_for
from smpc.errors import UserError
from smpc.mpc.launch import run_session_process, session_command
from smpc.mpc.task import SecType, SessionTask, ShareRef, TaskInput
from smpc.party.audit import AuditLog
from smpc.party.config import Policy
from smpc.party.replies import JobReply
from smpc.party.store import PartyStore, StoredShare
from smpc.pki.kit import Kit
from smpc.protocols.registry import parse_spec, protocol
from smpc.wire.header import ShareHeader
from smpc.wire.messages import (
    RESULT_INPUT,
    Job,
    JobInput,
    OpenedOutput,
    PartyResult,
    Status,
    StatusState,
    read_stored_job,
    seal_result,
    sign,
)
from smpc.wire.packaging import InputShare
from smpc.wire.writer import seal

logger = logging.getLogger("smpc.party")

# Seconds a session waits for its peers when none has connected yet (the parties start
# their sessions when each has received the close and pooled its shares); once one
# peer is there, the rest get the session's much shorter connect grace.
CONNECT_TIMEOUT = 120.0


class Computation:
    """The computing half of :class:`smpc.party.service.PartyService` (a mixin)."""

    kit: Kit
    federation: Federation
    store: PartyStore
    policy: Policy
    index: int
    _jobs: dict[str, Job]
    audit: AuditLog

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
                        first = job.close[0]
                        raise UserError(
                            f"sites sent {spec.name!r} in different shapes: {first} "
                            f"{total.shape}, {site} {values.shape} (every site's model must "
                            "have the same arrays and shapes)"
                        )
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
                    meta={"audit": self.audit.head},  # signed: the log as it is now
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
                other = read_stored_job(earlier.closed or earlier.message)[1]
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
            cmd, limit=limit, on_line=functools.partial(session_line, job.id)
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
            audit=self.audit.head,
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
        kept = tuple((name, bytes(body)) for name, body in results)
        self.audit.append(
            "results-released", job=job.id, to=job.analyst, deliver=job.deliver,
            sites=list(job.close or ()),
            sealed={name or RESULT_INPUT: hashlib.sha256(body).hexdigest() for name, body in kept},
        )  # fmt: skip
        status = self._status(job.id, "done", sites=job.close)
        self.store.release(job.id, "done", status, kept)
        return JobReply(status, kept)

    def _job_timeout(self, job: Job) -> float:
        """The whole job's time limit its spec sets (0 without a spec); typed, never raw."""
        if not job.spec:
            return 0.0
        return parse_spec(job.spec, f"job {job.id}: spec", self.federation).timeout

    def failed(self, job: Job, reason: str) -> JobReply:
        log.event(logger, "job-failed", logging.ERROR, job=job.id, reason=reason)
        self.audit.append("job-failed", job=job.id, reason=reason)
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


def session_line(job_id: str, line: str) -> None:
    """Log one stderr line of a job's session: ``event=`` lines with the job added."""
    name, _, rest = line.partition(" ")
    if not name.startswith("event="):
        logger.debug("job %s session: %s", job_id, line)
        return
    level = logging.INFO if name in ("event=mpyc-connected", "event=mpyc-peer") else logging.WARNING
    logger.log(level, f"{name} job={job_id} {rest}".rstrip())
