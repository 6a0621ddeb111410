"""The analyst side: publish a signed job, close it, collect and check the results.

One job (:func:`run_job`; :mod:`smpc.analyst.driver` runs every job of a run through it):

1. builds the job from the spec and publishes it, signed and retained;
2. reads the parties' statuses: a refusal ends the job with the party's reason;
   otherwise it waits until every party holds every expected site (the job's
   sites, by default all sites of the federation) or the upload window ends;
   with ``min_parties`` below N it also closes once every party that answered
   holds every expected site and the silent ones stayed silent for
   :data:`DROPOUT_GRACE` seconds (a party that is up accepts a job at once);
3. closes the job with the participating parties (``parties`` in the close: at
   least ``min_parties``, all N for a job that :meth:`Job.needs_all_parties`) and
   the sites *every one of them* holds — fewer than ``min_sites`` sites, or fewer
   parties than needed, and the job fails naming who is missing, nothing opened;
4. receives one result envelope per output from every participating party,
   encrypted to the analyst and signed by the party, reconstructs each output and
   checks that the shares agree (Shamir: they lie on one polynomial of degree t,
   so a tampered share is detected whenever more than t + 1 parties take part;
   additive sharing has no redundancy to check). A party outside the close is not
   heard. A party sends its results before its ``done`` status:
   once every party is done, an output the job names that has not arrived (after
   a short grace) fails the job at once, naming the outputs and the parties, as
   does an output the job does not name; a party's ``failed`` ends it with the
   party's reason;
5. writes the protocol's output files.

The job's connection survives a broker restart (:class:`_Link`): the analyst reconnects
until the job's timeout and publishes the job's current message again, which the parties
answer with their holdings or with the results they released, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from smpc import log
from smpc.config.federation import Federation
from smpc.core.encoding import FixedPoint
from smpc.core.field import FAST, field_for
from smpc.core.sharing import inconsistent_shares, reconstruct
from smpc.errors import UserError
from smpc.net.connection import Connection
from smpc.net.errors import ConnectFailed, TransportError
from smpc.net.frames import MAX_CHUNK
from smpc.net.topics import Topics
from smpc.pki.kit import Kit
from smpc.protocols.base import Outcome, RunContext, Step
from smpc.protocols.registry import protocol
from smpc.wire.envelope_errors import EnvelopeError
from smpc.wire.messages import (
    Job,
    MessageError,
    open_result,
    sign,
    stamp_job,
    verify_status,
)
from smpc.wire.reader import open_envelope

logger = log.logging.getLogger("smpc.analyst")


# The lifetime of a job published by publish_job (run_job gives its own job the upload
# window plus the result timeout).
JOB_LIFETIME = 3600.0


class JobFailed(UserError):
    """The job ended without a result; the message says why."""


def sign_job(kit: Kit, job: Job) -> bytes:
    """The job signed with the analyst's key; UserError if it is too large to publish.

    A job message is one retained MQTT message, so it cannot be split into chunks.
    """
    message = sign("job", job, kit.name, kit.signing_key)
    if len(message) > MAX_CHUNK:
        raise UserError(
            f"job {job.id}: its signed message is {len(message) / 2**20:.1f} MiB; a job "
            f"message is one MQTT message of at most {MAX_CHUNK / 2**20:g} MiB: make "
            "what the job carries smaller (fewer variants or a smaller model)"
        )
    return message


async def publish_job(kit: Kit, federation: Federation, job: Job) -> bytes:
    """Sign ``job`` with the analyst's key and publish it (retained); return the message."""
    if not job.issued:
        job = stamp_job(job, JOB_LIFETIME)
    message = sign_job(kit, job)
    topics = Topics(federation.name)
    async with Connection.from_kit(kit, federation, suffix="jobs") as conn:
        await conn.publish(topics.job(kit.name, job.id), message, retain=True)
    return message


def new_job_id(spec: Any) -> str:
    """``<name>-<stamp>-<random>``; room is left for a round suffix ``-r<k>``."""
    return f"{spec.name[:36]}-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(2)}"


def build_job(
    spec: Any,
    kit: Kit,
    federation: Federation,
    step: Step | None = None,
    *,
    job_id: str | None = None,
) -> Job:
    """The job for one :class:`~smpc.protocols.base.Step` of a run of ``spec`` (default:
    the run's first step, as the spec's protocol plans it)."""
    if step is None:
        step = next(protocol(spec.protocol).plan(spec, RunContext()))
    n = len(federation.parties)
    t = spec.threshold if spec.scheme == "shamir" else n - 1
    return Job(
        id=job_id or new_job_id(spec),
        protocol=spec.protocol,
        inputs=step.inputs,
        outputs=step.outputs,
        scheme=spec.scheme,
        t=t,
        n=n,
        modulus=FAST.modulus,
        compact=spec.compact,
        min_sites=spec.min_sites,
        min_parties=spec.min_parties,
        analyst=kit.name,
        deliver=step.deliver or spec.deliver,
        spec=spec.to_dict(),
        payload={} if step.payload is None else step.payload.model_dump(mode="json"),
    )


async def run_job(
    kit: Kit,
    federation: Federation,
    job: Job,
    *,
    upload_window: float = 120.0,
    timeout: float = 600.0,
) -> Outcome:
    """Publish, close and collect one job (see module docstring)."""
    topics = Topics(federation.name)
    directory = kit.directory
    parties = directory.parties
    expected = set(job.sites or federation.site_names)
    if not job.issued:  # a job published before (publish_job) keeps its stamp
        job = stamp_job(job, upload_window + timeout)
    link = _Link(
        kit, federation, f"run-{job.id}"[:60], topics.job(kit.name, job.id),
        (topics.statuses(job.id), topics.results(kit.name, job.id)),
        until=time.monotonic() + timeout,
    )  # fmt: skip
    await link.open(sign_job(kit, job), first=True)
    log.event(logger, "job-published", job=job.id, protocol=job.protocol)
    holding: dict[int, dict[str, str]] = {}  # party -> site -> the upload id it holds
    done: set[int] = set()  # parties that reported their result sent
    heads: dict[str, str] = {}  # party -> its audit chain head, signed into its results
    named = {o.name for o in job.delivered}
    results: dict[str, dict[int, np.ndarray]] = {}
    closed: Job | None = None
    deadline = time.monotonic() + upload_window
    final = time.monotonic() + timeout
    answered: float | None = None  # when the last party's "done" arrived, plus a grace
    quorum: float | None = None  # when t + 1 opened results agreed, plus a grace
    n = len(parties)
    members = list(range(n))  # the parties taking part (set by the close)
    dropout: float | None = None  # when the answering parties could close without the rest
    try:
        while True:
            now = time.monotonic()
            if closed is None:
                dropout = _dropout_time(job, holding, expected, len(parties), dropout, now)
            if closed is None and (
                now >= deadline
                or (dropout is not None and now >= dropout)
                or (
                    len(holding) == len(parties)
                    and all(set(h) >= expected for h in holding.values())
                )
            ):
                closed, members = _closing(job, holding, parties, federation)
                await link.publish_job(sign_job(kit, closed))
                log.event(
                    logger, "job-closed", job=job.id, sites=",".join(closed.close or ()),
                    parties=",".join(closed.parties or ()),
                )  # fmt: skip
            missing = _missing_outputs(job, results, parties, members) if closed is not None else ""
            if closed is not None and not missing:
                break
            now = time.monotonic()
            least = _enough_results(closed) if closed is not None else 0
            if least:
                complete = [i for i in _complete_parties(results, named, n) if i in members]
                if len(complete) >= least:
                    # Opened inside MPyC: t + 1 agreeing signed results are the result;
                    # Shamir sums: min_parties parties' shares (consistent: _open).
                    quorum = quorum or now + QUORUM_GRACE
                    if now >= quorum:
                        log.event(
                            logger, "result-without", log.logging.WARNING, job=job.id,
                            parties=_party_names(parties, set(members) - set(complete)),
                        )  # fmt: skip
                        results = {
                            name: {i: v for i, v in r.items() if i in complete}
                            for name, r in results.items()
                        }
                        members = complete
                        break
            if closed is not None and done >= set(members):
                # A party sends its results before its "done": whatever is still
                # missing once every party answered (and a grace for chunked bodies
                # in flight) will not come.
                answered = answered or now + RESULT_GRACE
                if now >= answered:
                    raise JobFailed(
                        f"job {job.id}: every party answered, but {missing}; nothing written"
                    )
            wait = (
                min(deadline, dropout or deadline)
                if closed is None
                else min(final, answered or final, quorum or final)
            ) - now
            if closed is not None and now >= final:
                raise JobFailed(f"job {job.id}: no complete result within {timeout:g} s: {missing}")
            message = await link.read(max(wait, 0.01))
            if message is None:
                continue
            kind, _ = topics.parse(message.topic)
            if kind == "status":
                heard = None if closed is None else set(members)  # after the close: them
                state = _take_status(message.body, directory, job, holding, heard)
                if state is not None and state[1] == "done" and closed is not None:
                    done.add(state[0])
            elif kind == "result" and closed is not None:
                _take_result(message.body, kit, closed, results, heads, set(members))
                unexpected = sorted(set(results) - named)
                if unexpected:
                    raise JobFailed(
                        f"job {job.id}: parties delivered outputs the job does not name: "
                        f"{', '.join(unexpected)} (from "
                        f"{_party_names(parties, (i for n in unexpected for i in results[n]))}"
                        "); nothing written"
                    )
    finally:
        await link.close()
    assert closed is not None  # the loop ends only with a result of the closed job
    opened = {spec.name: _open(results[spec.name], closed, spec) for spec in job.delivered}
    audit = {parties[i]: heads[parties[i]] for i in members if parties[i] in heads}
    return Outcome(closed, closed.close or (), opened, audit)


FIRST_CONNECT_GRACE = 10.0
"""Seconds a job's first connection to the broker is retried (later ones: until the job's
timeout)."""


class _Link:
    """The analyst's connection for one job, re-established when the broker goes away.

    After a reconnect the job's current message (open, or closed) is published again:
    the parties answer a re-delivered job with their holdings, or with the very bytes
    they released for it, so what was published while the analyst was away comes again.
    Reconnecting stops at ``until`` (the job's timeout) or at a permanent refusal; then
    the loss is raised, naming the broker.
    """

    def __init__(
        self,
        kit: Kit,
        federation: Federation,
        suffix: str,
        topic: str,
        filters: tuple[str, ...],
        *,
        until: float,
    ) -> None:
        self.kit, self.federation, self.suffix = kit, federation, suffix
        self.topic, self.filters, self.until = topic, filters, until
        self.message = b""  # the job's current signed message, retained
        self.conn: Connection | None = None
        self._messages: Any = None
        # One pending read, kept across timeouts: cancelling a read of the message
        # generator would end it (and every later read would find it exhausted).
        self._reading: asyncio.Future | None = None

    async def open(self, message: bytes, *, first: bool = False) -> None:
        """Connect, subscribe and publish ``message`` (retained). A first connection is
        retried for :data:`FIRST_CONNECT_GRACE` seconds only (a broker restarting between
        two jobs of a run), so a wrong broker address fails soon."""
        self.message = message
        until = min(self.until, time.monotonic() + FIRST_CONNECT_GRACE) if first else self.until
        delay = 0.5
        while True:
            conn = Connection.from_kit(self.kit, self.federation, suffix=self.suffix)
            try:
                await conn.__aenter__()
                await conn.subscribe(*self.filters)
                await conn.publish(self.topic, self.message, retain=True)
            except TransportError as exc:
                await conn.__aexit__(None, None, None)
                permanent = isinstance(exc, ConnectFailed) and exc.permanent
                if permanent or time.monotonic() + delay >= until:
                    raise
                log.event(logger, "broker-lost", log.logging.WARNING, reason=exc)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            self.conn, self._messages = conn, aiter(conn.messages())
            return

    async def _reconnect(self, exc: TransportError) -> None:
        log.event(logger, "broker-lost", log.logging.WARNING, reason=exc)
        await self._drop()
        await self.open(self.message)

    async def publish_job(self, message: bytes) -> None:
        self.message = message
        assert self.conn is not None
        try:
            await self.conn.publish(self.topic, message, retain=True)
        except TransportError as exc:
            await self._reconnect(exc)  # publishes the message again

    async def read(self, timeout: float) -> Any:
        """The next message, or None after ``timeout`` (or a reconnect)."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(anext(self._messages))
        finished, _ = await asyncio.wait({self._reading}, timeout=timeout)
        if not finished:
            return None
        reading, self._reading = self._reading, None
        try:
            return reading.result()
        except TransportError as exc:
            await self._reconnect(exc)
            return None

    async def _drop(self) -> None:
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.__aexit__(None, None, None)

    async def close(self) -> None:
        """Clear the job's retained message (if the broker is there) and disconnect."""
        try:
            if self.conn is not None:
                with contextlib.suppress(TransportError):
                    await self.conn.clear_retained(self.topic)
        finally:
            await self._drop()


def _agreed_uploads(holding: dict[int, dict[str, str]]) -> dict[str, str]:
    """The sites every party holds one and the same upload of, with that upload's id."""
    first, *others = holding.values()
    return {s: u for s, u in first.items() if all(h.get(s) == u for h in others)}


DROPOUT_GRACE = 5.0
"""Seconds the analyst waits for a party that has not answered a job at all, once every
party that answered holds every expected site and they are at least ``min_parties``
(a running party accepts a job the moment it arrives; one that accepted is waited for
until the upload window ends)."""


def _dropout_time(
    job: Job,
    holding: dict[int, dict[str, str]],
    expected: set[str],
    n: int,
    since: float | None,
    now: float,
) -> float | None:
    """When the job may close without the parties that never answered (None: not yet)."""
    needed = n if job.needs_all_parties() else job.quorum
    ready = len(holding) < n and len(holding) >= needed
    if not ready or not all(set(h) >= expected for h in holding.values()):
        return None
    return since if since is not None else now + DROPOUT_GRACE


def _participants(
    holding: dict[int, dict[str, str]], needed: int
) -> tuple[list[int], dict[str, str]]:
    """The parties to close with and the sites they all hold the same upload of.

    Every party that answered, except that one is left out (while more than ``needed``
    remain) when that lets more sites in: the sites matter, the parties beyond t + 1
    only check each other."""
    members = sorted(holding)
    if not members:
        return [], {}
    agreed = _agreed_uploads({i: holding[i] for i in members})
    while len(members) > needed:
        options = [
            (len(_agreed_uploads({j: holding[j] for j in members if j != i})), -i) for i in members
        ]
        best, drop = max(options)
        if best <= len(agreed):
            break
        members.remove(-drop)
        agreed = _agreed_uploads({i: holding[i] for i in members})
    return members, agreed


def _closing(
    job: Job, holding: dict[int, dict[str, str]], parties: Sequence[str], federation: Federation
) -> tuple[Job, list[int]]:
    """The closed job (agreed sites, their uploads, the parties) and the parties' indices;
    JobFailed when too few parties or sites are left."""
    n = len(parties)
    why = job.needs_all_parties()
    needed = n if why else job.quorum
    members, agreed = _participants(holding, needed)
    if len(members) < needed:
        absent = _party_names(parties, set(range(n)) - set(holding))
        short = _party_names(parties, set(holding) - set(members))
        lacking = "; ".join(
            part
            for part in (
                f"{absent} did not answer the job" if absent else "",
                f"{short} did not hold the sites the others hold" if short else "",
            )
            if part
        )
        need = f"all {n} computing parties ({why})" if why else f"min_parties {needed} of {n}"
        raise JobFailed(
            f"job {job.id}: needs {need}, but {lacking}; nothing was opened (run it again "
            "once every party is back)"
        )
    if len(agreed) < job.min_sites:
        absent = ", ".join(sorted(set(job.sites or federation.site_names) - set(agreed)))
        raise JobFailed(
            f"job {job.id}: only {len(agreed)} site(s) uploaded to every party "
            f"({', '.join(sorted(agreed)) or 'none'}{f'; not {absent}' if absent else ''}), "
            f"fewer than min_sites {job.min_sites}; nothing was opened"
        )
    # in the federation's order: a GWAS pools its sites in that order
    order = job.sites or federation.site_names
    close = tuple(s for s in order if s in agreed)
    uploads = {s: agreed[s] for s in close}
    named = tuple(parties[i] for i in members)
    closed = job.model_copy(update={"close": close, "uploads": uploads, "parties": named})
    return closed, members


RESULT_GRACE = 3.0
"""Seconds the analyst still waits for results after every party reported ``done``."""

QUORUM_GRACE = 5.0
"""Seconds the analyst still waits for the other parties once t + 1 parties delivered every
output opened inside MPyC (``deliver: parties``), or ``min_parties`` parties of the close
delivered their shares of a Shamir sum: a party that died after the close is not waited
for until the timeout. Their agreement is checked by :func:`_open`."""


def _enough_results(closed: Job) -> int:
    """How many parties' complete results may stand for all of the close's (0: every one)."""
    if closed.deliver == "parties":
        return max(2, closed.t + 1)
    if closed.needs_all_parties():
        return 0
    members = len(closed.parties) if closed.parties is not None else closed.n
    return closed.quorum if closed.quorum < members else 0


def _complete_parties(results: dict[str, dict[int, Any]], named: set[str], n: int) -> list[int]:
    """The parties that delivered every named output."""
    return [i for i in range(n) if all(i in results.get(name, {}) for name in named)]


def _missing_outputs(
    job: Job, results: dict[str, dict[int, Any]], parties: Sequence[str], members: Sequence[int]
) -> str:
    """The outputs the job names that have not arrived from the parties taking part, with
    the parties they are missing from, e.g. ``no qt.nmiss, qt.beta.num from alpha, beta``;
    "" when all are there."""
    lacking: dict[tuple[int, ...], list[str]] = {}
    for output in job.delivered:
        absent = tuple(i for i in members if i not in results.get(output.name, {}))
        if absent:
            lacking.setdefault(absent, []).append(output.name)
    return "; ".join(
        f"no {', '.join(names)} from {_party_names(parties, absent)}"
        for absent, names in lacking.items()
    )


def _party_names(parties: Sequence[str], indices: Iterable[int]) -> str:
    """The parties' names, in index order, for a message."""
    return ", ".join(
        parties[i] if 0 <= i < len(parties) else f"party {i}" for i in sorted(set(indices))
    )


def _take_status(
    data: bytes,
    directory,
    job: Job,
    holding: dict[int, dict[str, str]],
    members: set[int] | None = None,
) -> tuple[int, str] | None:
    """Take a party's signed status; its (index, state), or None if it is not this job's
    or (``members``: the parties of the close) not from a party taking part."""
    try:
        signer, status = verify_status(data, directory)
    except MessageError as exc:
        log.event(logger, "status-ignored", reason=exc)
        return None
    if status.job != job.id or (members is not None and status.party not in members):
        return None
    if status.state in ("refused", "failed"):
        reason = status.reason or "(no reason given)"
        raise JobFailed(f"job {job.id}: party {signer} {status.state}: {reason}")
    if status.state in ("accepted", "holding"):
        holding[status.party] = {site: status.uploads.get(site, "") for site in status.sites}
    return status.party, status.state


def _take_result(
    data: bytes,
    kit: Kit,
    job: Job,
    results: dict[str, dict[int, np.ndarray]],
    heads: dict[str, str],
    members: set[int],
) -> None:
    """Take a party's result (its share of each output, or what it opened), and the audit
    chain head it signed with it into ``heads``; one of a party outside ``members`` (the
    parties of the close) is not heard."""
    if job.deliver == "parties":  # opened inside MPyC, signed by each party, sealed to us
        try:
            _, result = open_result(data, kit)
        except MessageError as exc:
            raise JobFailed(f"job {job.id}: a party's result was refused: {exc}") from None
        if result.job == job.id and result.party in members:
            heads[kit.directory.parties[result.party]] = result.audit
            for name, output in result.outputs.items():
                values = np.array(output.values, dtype=object).reshape(output.shape)
                results.setdefault(name, {})[result.party] = values
        return
    party_keys = {p: kit.directory.verify_key(p) for p in kit.directory.parties}
    assert kit.encryption_key is not None  # every analyst kit has one
    try:
        opened = open_envelope(data, kit.encryption_key, party_keys)
    except EnvelopeError as exc:
        raise JobFailed(f"job {job.id}: a result share was refused: {exc}") from None
    header = opened.header
    if header.job != job.id or kit.directory.party_index(header.site) != header.party:
        raise JobFailed(f"job {job.id}: result share from {header.site} names party {header.party}")
    if header.party not in members:
        return
    field = field_for(header.modulus)
    results.setdefault(header.input, {})[header.party] = field.from_bytes(opened.body, header.shape)
    heads[header.site] = str(header.meta.get("audit", ""))


def _open(shares: dict[int, np.ndarray], job: Job, spec) -> np.ndarray:
    field = field_for(job.modulus)
    if job.deliver == "parties":  # opened values: every party must report the same
        first = shares[min(shares)]
        differ = [i for i, v in shares.items() if not np.array_equal(v, first)]
        if differ:
            raise JobFailed(
                f"job {job.id}: parties disagree on the opened {spec.name!r} "
                f"(parties {differ} differ from party {min(shares)}); nothing written"
            )
        if protocol(job.protocol).exact_openings(job):  # e.g. fractions' parts, counts
            return first
        return FixedPoint(spec.frac_bits, spec.int_bits).decode(field.from_int(first), field)
    if job.scheme == "shamir":
        bad = inconsistent_shares(shares, field, job.t)
        if bad:
            names = ", ".join(f"party {i}" for i in bad)
            raise JobFailed(
                f"job {job.id}: result shares of {spec.name!r} do not agree ({names} off the "
                "polynomial of the others): a result share was tampered with; nothing written"
            )
    secret = reconstruct(
        shares, field, job.t, job.scheme, n=job.n if job.scheme == "additive" else None
    )
    return FixedPoint(spec.frac_bits, spec.int_bits).decode(secret, field)
