"""The site side: ``smpc upload`` (one job) and ``smpc site serve`` (every job).

An upload reads the site's local inputs, fetches the job the analyst published
(retained on the broker, signed), encodes and shares each input as the job says,
seals one envelope per party and publishes it, then waits for every party's
signed ack. Durability rests on those acks, not on MQTT: the broker or a
party's client may acknowledge a message the party has not stored yet, so an
envelope without a ``stored`` ack is published again every ``resend_after``
seconds until the deadline. A ``rejected`` ack is final and carries the
party's reason. The upload fails, naming the parties that did not answer or
refused, unless every party stored every input.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from smpc import log
from smpc.aio import until
from smpc.config.federation import (
    Federation,
    load_federation,
    read_yaml_mapping,
    user_error_from_validation,
)
from smpc.config.spec import one_of
from smpc.core.encoding import FixedPoint
from smpc.core.field import field_for
from smpc.errors import UserError
from smpc.io.inputs import read_input
from smpc.net.reconnect import run_with_reconnect
from smpc.net.topics import Topics
from smpc.net.transport import Connection
from smpc.party.store import write_durably
from smpc.pki.kit import Kit, load_kit
from smpc.protocols.base import SiteData, SiteSource, SkipJob
from smpc.protocols.registry import PROTOCOLS, parse_spec, protocol
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


async def fetch_job(conn: Connection, topics: Topics, kit: Kit, job_id: str, timeout: float) -> Job:
    """The analyst's signed job, from its retained message."""
    await conn.subscribe(topics.job(job_id))
    try:
        async with asyncio.timeout(timeout):
            async for message in conn.messages():
                if message.topic == topics.job(job_id):
                    return verify_job(message.body, kit.directory)[1]
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
    meta: dict[str, str | int | float | bool] = {"upload": upload_id}
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


class SitePolicy(BaseModel):
    """What a site agrees to upload to, whatever the job says (its own minimums)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    analysts: tuple[str, ...] | None = None  # None: every analyst of the federation
    protocols: tuple[str, ...] = tuple(PROTOCOLS)
    min_threshold: int = Field(default=1, ge=0)  # t = 0 puts the site's values in the clear
    min_sites: int = Field(default=2, ge=1)  # a result of fewer sites may open this site's data

    def refusal(self, job: Job) -> str:
        """Why this site does not upload to ``job`` ("" if it does)."""
        if self.analysts is not None and job.analyst not in self.analysts:
            return f"analyst {job.analyst!r} is not one this site answers"
        if job.protocol not in self.protocols:
            return f"protocol {job.protocol!r} is not one this site answers"
        if job.t < self.min_threshold:
            return f"threshold {job.t} is below this site's minimum {self.min_threshold}"
        if job.min_sites < self.min_sites:
            return f"min_sites {job.min_sites} is below this site's minimum {self.min_sites}"
        return ""


def default_keep_dir(site: str) -> Path:
    """Where ``smpc upload`` keeps a site's sealed envelopes: ``$XDG_STATE_HOME/smpc``."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "smpc" / site / "uploads"


class KeptUpload:
    """A site's sealed envelopes of one job, on disk until every party acknowledged them.

    A re-run of the same upload (after a broker restart, a crash, a timeout) re-sends
    these very envelopes instead of sharing again, so every party ends up with the same
    sharing. Layout: ``DIR/<job>-<digest>/upload.json`` (the upload id and the file of
    each envelope) and one file per envelope, ``complete`` once all were stored; the
    digest of the signed job's content keeps another job of the same id apart.
    """

    def __init__(self, root: Path, job: Job) -> None:
        content = json.dumps(job.unclosed().model_dump(mode="json"), sort_keys=True).encode()
        self.dir = Path(root) / f"{job.id}-{hashlib.sha256(content).hexdigest()[:16]}"

    @property
    def complete(self) -> bool:
        return (self.dir / "complete").exists()

    def load(self) -> tuple[str, dict[tuple[str, int], bytes]] | None:
        """The kept upload id and envelopes, or None when there are none."""
        index = self.dir / "upload.json"
        if not index.exists():
            return None
        doc = json.loads(index.read_text())
        envelopes = {}
        for key, file in doc["envelopes"].items():
            name, _, party = key.rpartition("@")
            envelopes[(name, int(party))] = (self.dir / file).read_bytes()
        return doc["upload"], envelopes

    def save(self, upload_id: str, envelopes: Mapping[tuple[str, int], bytes]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        files = {}
        for (name, party), envelope in envelopes.items():
            files[f"{name}@{party}"] = file = f"{name}.{party}.envelope"
            write_durably(self.dir / file, envelope)
        doc = {"upload": upload_id, "envelopes": files}
        write_durably(self.dir / "upload.json", json.dumps(doc).encode())

    def finish(self) -> None:
        """Every party stored every envelope: keep only the marker."""
        write_durably(self.dir / "complete", b"")
        for file in self.dir.glob("*.envelope"):
            file.unlink()


def site_inputs(source: SiteSource, federation: Federation) -> Callable[[Job], SiteData]:
    """What this site shares for a job: its protocol's local statistics from ``source``
    (:meth:`smpc.protocols.base.Protocol.site_data`).

    A job whose own input names are all among the site's named inputs gets those arrays
    as they are, whatever its protocol.
    """

    def compute(job: Job) -> SiteData:
        if source.inputs is not None:
            names = [s.name for s in job.inputs]
            if all(name in source.inputs for name in names):
                return SiteData({name: read_input(source.inputs[name], name) for name in names})
        spec = parse_spec(job.spec, f"job {job.id}", federation)
        return protocol(job.protocol).site_data(spec, job, source)

    return compute


def configured_inputs(
    sources: Mapping[str, str], federation: Federation, site: str = ""
) -> Callable[[Job], SiteData]:
    """Inputs from a site's ``NAME: SOURCE`` assignments (``inputs:``, ``--input``): the
    spec's inputs (``age``, ``bmi``; a fedavg model's arrays and ``num_examples``)."""
    return site_inputs(SiteSource(site=site, inputs=sources), federation)


def protocol_inputs(
    data: Path, federation: Federation, site: str = ""
) -> Callable[[Job], SiteData]:
    """Inputs computed from a site's data file by the job's protocol (its local statistics)."""
    return site_inputs(SiteSource(site=site, data=data), federation)


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
        await send(conn, known, pending)
        next_resend = time.monotonic() + resend_after
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
                await send(conn, known, pending)
                resend_after *= 2  # back off: a busy party is slow, not gone
                next_resend = time.monotonic() + resend_after

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


# -- smpc site serve -------------------------------------------------------------------------


ProtocolName = Annotated[str, AfterValidator(one_of(tuple(PROTOCOLS)))]


class SiteConfig(BaseModel):
    """``parties/<site>.yaml``: a site's kit and what it answers jobs with.

    - ``inputs``: which local source feeds which of a spec's inputs (``age:
      FILE.csv:age``; a fedavg model's arrays and ``num_examples``: ``FILE.npz:ARRAY``):
      the job's protocol computes the local statistics it shares from them
      (:func:`configured_inputs`);
    - ``data``: a data file the job's protocol computes its statistics from (sum's
      CSV, one-round fedavg's .npz, a GWAS's fileset prefix), or one per protocol
      (``data: {gwas: FILESET, fedavg: MODEL.npz}``); for the job's protocol it is
      used before ``inputs``;
    - ``trainer``: ``module:function`` or ``file.py:function`` called on every fedavg
      job (every round of multi-round training) with the job's global model and round
      index; it returns the local model and its number of examples
      (:mod:`smpc.protocols.fedavg.training`).
      ``trainer_args`` are passed to it as keyword arguments, and ``site=NAME`` when
      it takes a ``site`` argument.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kit: Path
    federation: Path | None = None
    inputs: dict[str, str] = {}
    data: Path | dict[ProtocolName, Path] | None = None
    trainer: str | None = None
    trainer_args: dict[str, Any] = {}
    state: Path | None = None  # where answered job ids are kept (default: next to the config)
    log_level: str = "info"
    policy: SitePolicy = SitePolicy()

    def data_for(self, protocol: str) -> Path | None:
        """The data file for a job of ``protocol`` (None: use ``inputs``)."""
        if isinstance(self.data, dict):
            return self.data.get(protocol)
        return self.data


def load_site_config(path: Path) -> SiteConfig:
    data = read_yaml_mapping(path)
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise user_error_from_validation(path, exc, SiteConfig) from None
    base = Path(path).resolve().parent

    def resolve(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p)

    inputs = {
        name: (src if Path(src.split(":")[0]).is_absolute() else str(base / src))
        for name, src in config.inputs.items()
    }
    if not (config.inputs or config.data or config.trainer):
        raise UserError(f"{path}: give inputs, data or trainer: what this site answers jobs with")
    trainer = config.trainer
    if trainer and trainer.rpartition(":")[0].endswith(".py"):
        module, _, function = trainer.rpartition(":")
        trainer = f"{module if Path(module).is_absolute() else base / module}:{function}"
    data_files = (
        {k: resolve(v) for k, v in config.data.items()}
        if isinstance(config.data, dict)
        else resolve(config.data)
    )
    return config.model_copy(
        update={
            "kit": resolve(config.kit),
            "federation": resolve(config.federation),
            "data": data_files,
            "trainer": trainer,
            "state": resolve(config.state) or base / f".{Path(path).stem}.answered",
            "inputs": inputs,
        }
    )


async def serve(config: SiteConfig, stop: asyncio.Event) -> None:
    """Answer every open job this site can answer, once each, until ``stop``.

    A fedavg job goes to the trainer when one is configured (every round of
    multi-round training is a job of its own); otherwise the job's protocol reads
    its ``data`` file, or computes its statistics from ``inputs``. Every job not
    answered gets one ``event=job-skipped`` line with the reason; a job whose inputs
    fail (a bad file, a value out of range) one ``event=upload-failed`` line, and the
    daemon goes on with the next job.
    """
    from smpc.protocols.fedavg.training import load_trainer

    kit = load_kit(config.kit)
    federation = load_federation(config.federation or kit.federation_file)
    topics = Topics(federation.name)
    state = config.state
    assert state is not None  # load_site_config defaults it next to the config file
    answered = set(state.read_text().split()) if state.exists() else set()
    trainer = (
        load_trainer(config.trainer, site=kit.name, args=config.trainer_args)
        if config.trainer
        else None
    )
    keep = state.parent / f"{state.name}.uploads"  # envelopes awaiting acks

    def skipped(job: Job, reason: str) -> None:
        log.event(logger, "job-skipped", job=job.id, site=kit.name, reason=reason)

    def connect() -> Connection:
        return Connection.from_kit(kit, federation)

    async def session(conn: Connection) -> None:
        await conn.subscribe(topics.jobs())
        log.event(
            logger, "site-serving", site=kit.name, inputs=",".join(config.inputs) or None,
            data=",".join(f"{k}={v}" for k, v in config.data.items())
            if isinstance(config.data, dict) else config.data,
            trainer=config.trainer,
        )  # fmt: skip
        async for message in until(conn.messages(), stop):
            if not message.body:
                continue  # a retained job cleared by the analyst
            try:
                _, job = verify_job(message.body, kit.directory)
            except MessageError as exc:
                log.event(logger, "job-ignored", logging.WARNING, reason=exc)
                continue
            if job.id in answered:
                if job.close is None:  # the job again (a restart): its close is no news
                    skipped(job, "already answered")
                continue
            if job.close is not None:
                skipped(job, "closed: uploads are no longer accepted")
                continue
            if job.sites is not None and kit.name not in job.sites:
                skipped(job, f"it asks only sites {', '.join(job.sites)}")
                continue
            source = SiteSource(
                site=kit.name, data=config.data_for(job.protocol),
                inputs=config.inputs or None, trainer=trainer,
            )  # fmt: skip
            if source.data is None and source.inputs is None and source.trainer is None:
                skipped(job, f"no data file for {job.protocol} jobs in the site config")
                continue
            try:
                # a trainer answers within a round's upload window
                window = (
                    parse_spec(job.spec, job.id, federation).round_timeout if trainer else 120.0
                )
                await upload(
                    kit, federation, job, site_inputs(source, federation), keep=keep,
                    policy=config.policy, timeout=window,
                )  # fmt: skip
            except SkipJob as exc:
                skipped(job, str(exc))
                continue
            except UserError as exc:
                log.event(logger, "upload-failed", logging.ERROR, job=job.id, reason=exc)
                continue
            except Exception as exc:  # a file no reader expected: log it, serve the next job
                logger.debug("job %s", job.id, exc_info=True)
                reason = f"{type(exc).__name__}: {exc}"
                log.event(logger, "upload-failed", logging.ERROR, job=job.id, reason=reason)
                continue
            answered.add(job.id)
            state.write_text("\n".join(sorted(answered)) + "\n")

    # a broker restart or a lost connection reconnects and re-subscribes; a refused
    # certificate or client id ends the daemon with the reason
    await run_with_reconnect(connect, session, stop=stop)
