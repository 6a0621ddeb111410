"""``smpc upload``: share a site's inputs for one job and wait for every party's signed ack.

An upload reads the site's local inputs, fetches the job the analyst published
(retained on the broker, signed), encodes and shares each input as the job says,
seals one envelope per party and publishes it, then waits for every party's
signed ack. Durability rests on those acks, not on MQTT: the broker or a
party's client may acknowledge a message the party has not stored yet, so an
envelope without a ``stored`` ack is published again ``resend_after`` seconds
after it was sent (or twice as long as sending it took, if longer), then at
doubling intervals, until the deadline. A ``rejected`` ack is final and carries the
party's reason. The upload fails, naming the parties that did not answer or
refused, unless every party stored every input — or, for a job that may complete
without a party (``min_parties``, :meth:`Job.quorum`), unless at least that many parties
stored every input by the deadline and none refused (``event=upload-partial`` names
the missing ones; the sealed envelopes stay kept, so a re-run re-sends them). A party
that is down keeps its MQTT session on the broker (QoS 1, no clean session), so it
receives what was published to it while it was away when it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from smpc import log
from smpc.config.federation import Federation
from smpc.core.encoding import FixedPoint
from smpc.core.field import field_for
from smpc.errors import UserError
from smpc.net.connection import Connection
from smpc.net.reconnect import run_with_reconnect
from smpc.net.topics import Topics
from smpc.pki.kit import Kit
from smpc.protocols.base import SiteData, SkipJob
from smpc.site.kept import KeptUpload
from smpc.site.policy import SitePolicy
from smpc.wire.layout import envelope_id
from smpc.wire.messages import Job, MessageError, verify_ack, verify_job
from smpc.wire.packaging import seal_shares

logger = logging.getLogger("smpc.site")


class UploadFailed(UserError):
    """Not every party stored every input; the message names who and why."""


@dataclass
class UploadReport:
    job: str
    site: str
    stored: dict[str, list[int]] = field(default_factory=dict)  # input -> parties that stored
    bytes_sent: int = 0
    seconds: float = 0.0
    missing: tuple[str, ...] = ()  # parties without an ack by the deadline (min_parties met)


def job_on_its_topic(topics: Topics, topic: str, body: bytes, kit: Kit) -> Job:
    """The signed job of a message on ``jobs/<analyst>/<job>``; MessageError unless the job
    is the topic's, from that analyst (a job elsewhere is another analyst's replay)."""
    signer, job = verify_job(body, kit.directory)
    fields = topics.parse(topic).fields
    if (fields.get("analyst"), fields.get("job")) != (signer, job.id) or job.analyst != signer:
        raise MessageError(
            f"job {job.id} of analyst {job.analyst!r}, signed by {signer!r}, arrived on "
            f"{topic!r}: a job travels only on its own analyst's topic"
        )
    return job


async def fetch_job(conn: Connection, topics: Topics, kit: Kit, job_id: str, timeout: float) -> Job:
    """The analyst's signed job, from its retained message."""
    await conn.subscribe(topics.job_anywhere(job_id))
    try:
        async with asyncio.timeout(timeout):
            async for message in conn.messages():
                if not message.body:
                    continue  # a retained job cleared
                try:
                    job = job_on_its_topic(topics, message.topic, message.body, kit)
                except (MessageError, ValueError) as exc:
                    logger.warning("job %s: ignored a message: %s", job_id, exc)
                    continue
                if job.id == job_id:
                    return job
    except TimeoutError:
        pass
    raise UploadFailed(f"job {job_id}: not announced on the broker within {timeout:g} s")


def seal_inputs(
    kit: Kit,
    job: Job,
    inputs: Mapping[str, np.ndarray],
    records: int | None = None,
    upload_id: str | None = None,
) -> dict[tuple[str, int], bytes]:
    """One envelope per (input, party), as the job prescribes.

    ``records``, the number of records behind the inputs, is declared in every
    envelope header (signed, visible to the parties only) so that parties can
    apply their disclosure rules (minimum records per site, minimum cell count).
    Every envelope carries ``upload_id`` (fresh when None): the parties keep one
    upload per (job, site), so the envelopes of one call form one atomic set.
    """
    missing = [spec.name for spec in job.inputs if spec.name not in inputs]
    if missing:
        raise UploadFailed(f"job {job.id} asks for inputs this site did not provide: {missing}")
    if job.sites is not None and kit.name not in job.sites:
        raise UploadFailed(f"job {job.id} does not ask site {kit.name!r}")
    upload_id = upload_id or secrets.token_hex(8)
    # the job's digest binds the shares to the very job this site vetted (analyst, spec)
    meta: dict[str, str | int | float | bool] = {"upload": upload_id, "job": job.digest()}
    if records is not None:
        meta["records"] = int(records)
    directory = kit.directory
    recipients = [directory.party_encryption_key(i) for i in range(job.n)]
    field_ = field_for(job.modulus)
    envelopes = {}
    for spec in job.inputs:
        sealed = seal_shares(
            inputs[spec.name],
            FixedPoint(spec.frac_bits, spec.int_bits),
            field_ if spec.modulus is None else field_for(spec.modulus),
            job=job.id,
            input=spec.name,
            site=kit.name,
            t=0 if spec.public else job.t,
            recipients=recipients,
            signer=kit.signing_key,
            scheme="shamir" if spec.public else job.scheme,
            compact=job.compact,
            meta=meta,
        )
        for party, envelope in enumerate(sealed):
            assert envelope is not None  # without sinks the envelopes are returned
            envelopes[(spec.name, party)] = bytes(envelope)
    return envelopes


async def upload(
    kit: Kit,
    federation: Federation,
    job_id: str | Job,
    inputs: Mapping[str, np.ndarray] | Callable[[Job], SiteData],
    *,
    timeout: float = 120.0,
    resend_after: float = 10.0,
    progress: bool = False,
    keep: Path | None = None,
    policy: SitePolicy | None = None,
) -> UploadReport:
    """Share the inputs for a job and wait until every party has stored them.

    ``job_id`` is a job id (the signed job is fetched from the broker, where the
    analyst retains it while the job is open) or a job already received and
    verified (``smpc site serve``), which the site answers without fetching it again.
    ``keep`` is where the sealed envelopes wait for their acks (:class:`KeptUpload`):
    a re-run re-sends them. The connection is re-established whenever the broker goes
    away, until ``timeout``. ``policy`` (default :class:`SitePolicy`) refuses jobs below
    this site's minimums before anything is shared.
    """
    known = job_id if isinstance(job_id, Job) else None
    job_id = job_id.id if isinstance(job_id, Job) else job_id
    policy = policy or SitePolicy()
    topics = Topics(federation.name)
    started = time.monotonic()
    deadline = started + timeout
    report = UploadReport(job=job_id, site=kit.name)
    parties = kit.directory.parties
    envelopes: dict[tuple[str, int], bytes] = {}
    expected: dict[tuple[str, int], str] = {}
    pending: set[tuple[str, int]] = set()
    refused: dict[tuple[str, int], str] = {}

    kept: KeptUpload | None = None

    def prepare(job: Job) -> None:
        nonlocal kept
        if job.close is not None:
            raise UploadFailed(f"job {job.id} is closed: uploads are no longer accepted")
        refusal = policy.refusal(job)
        if refusal:
            raise SkipJob(f"job {job.id}: site {kit.name} does not upload: {refusal}")
        kept = None if keep is None else KeptUpload(keep, job)
        if kept is not None and kept.complete:
            log.event(logger, "upload-complete", job=job.id, site=kit.name, kept=True)
            return
        old = kept.load() if kept is not None else None
        if old is not None:
            upload_id, sealed = old
            log.event(logger, "upload-resumed", job=job.id, site=kit.name, upload=upload_id)
        else:
            data = inputs(job) if callable(inputs) else SiteData(inputs)
            upload_id = secrets.token_hex(8)
            sealed = seal_inputs(kit, job, data.arrays, data.records, upload_id)
            if kept is not None:
                kept.save(upload_id, sealed)
        envelopes.update(sealed)
        expected.update({key: envelope_id(env) for key, env in sealed.items()})
        pending.update(sealed)

    async def send(conn: Connection, job: Job, keys: set[tuple[str, int]]) -> None:
        total = sum(len(envelopes[k]) for k in keys)
        with Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), disable=not progress, transient=True,
        ) as bar:  # fmt: skip
            task = bar.add_task(f"{kit.name} → {job.id}", total=total)
            for key in sorted(keys):
                party = key[1]
                await conn.publish_body(topics.upload(kit.name, parties[party]), envelopes[key])
                report.bytes_sent += len(envelopes[key])
                bar.advance(task, len(envelopes[key]))
        log.event(logger, "upload-sent", job=job.id, site=kit.name, envelopes=len(keys))

    async def session(conn: Connection) -> None:
        nonlocal known, resend_after
        await conn.subscribe(topics.acks_for(kit.name))
        if known is None:
            known = await fetch_job(conn, topics, kit, job_id, deadline - time.monotonic())
        if not envelopes:  # computing the statistics may take long: the loop goes on serving
            await asyncio.to_thread(prepare, known)
        if not pending:
            return  # every party acknowledged this upload before
        next_resend = await send_timed(conn, known)
        while pending and time.monotonic() < deadline:
            wait = max(0.05, min(deadline, next_resend) - time.monotonic())
            try:
                async with asyncio.timeout(wait):
                    async for message in conn.messages():
                        _take_ack(message.body, kit, known, expected, pending, refused, report)
                        if not pending:
                            break
            except TimeoutError:
                pass
            if pending and time.monotonic() >= next_resend:
                resend_after *= 2  # back off: a busy party is slow, not gone
                next_resend = await send_timed(conn, known)

    async def send_timed(conn: Connection, job: Job) -> float:
        """Send what is pending; when to re-send it. A send that took long went through a
        congested broker, to parties with a queue: re-sending before they worked through
        it only adds to it (50 sites at once re-sent most envelopes after 10 s)."""
        began = time.monotonic()
        await send(conn, job, pending)
        now = time.monotonic()
        return now + max(resend_after, 2 * (now - began))

    def connect() -> Connection:
        # A clean session of its own, next to a running `smpc site serve` of the same site.
        return Connection.from_kit(kit, federation, suffix=f"up-{job_id}")

    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await run_with_reconnect(connect, session, max_delay=5.0)
    except TimeoutError:
        if known is None:
            raise UploadFailed(
                f"job {job_id}: not announced on the broker within {timeout:g} s"
            ) from None
        if not envelopes:
            raise UploadFailed(
                f"job {job_id}: the broker was unreachable for {timeout:g} s"
            ) from None
    report.seconds = time.monotonic() - started
    needed = len(parties) if known is None or known.needs_all_parties() else known.quorum
    short = sorted({p for (_, p) in pending})
    if pending and not refused and envelopes and len(parties) - len(short) >= needed:
        log.event(
            logger, "upload-partial", logging.WARNING, job=job_id, site=kit.name,
            stored=",".join(p for i, p in enumerate(parties) if i not in short),
            missing=",".join(parties[p] for p in short),
            reason=f"no ack within {timeout:g} s; the job needs {needed} parties",
        )  # fmt: skip
        report.missing = tuple(parties[p] for p in short)
        return report
    if refused or pending:
        problems = [
            f"party {parties[p]} refused {name!r}: {reason}"
            for (name, p), reason in refused.items()
        ]
        silent = sorted({parties[p] for (_, p) in pending - set(refused)})
        if silent:
            problems.append(f"no ack within {timeout:g} s from {', '.join(silent)}")
        raise UploadFailed(f"job {job_id}, site {kit.name}: " + "; ".join(problems))
    if kept is not None:
        kept.finish()
    log.event(logger, "upload-complete", job=job_id, site=kit.name, bytes=report.bytes_sent)
    return report


def _take_ack(data, kit, job, expected, pending, refused, report) -> None:
    try:
        _, ack = verify_ack(data, kit.directory)
    except MessageError as exc:
        log.event(logger, "ack-ignored", logging.WARNING, reason=exc)
        return
    key = (ack.input, ack.party)
    if ack.job != job.id or ack.site != kit.name or expected.get(key) != ack.envelope_id:
        return  # an ack of an earlier upload or another job
    if ack.status == "stored":
        if key in pending:
            pending.discard(key)
            report.stored.setdefault(ack.input, []).append(ack.party)
    else:
        refused[key] = ack.reason
        pending.discard(key)
