"""``smpc site serve``: answer every open job this site can answer, once each."""

from __future__ import annotations

import asyncio
import logging

from smpc import log
from smpc.aio import until
from smpc.config.federation import load_federation
from smpc.errors import UserError
from smpc.net.connection import Connection
from smpc.net.reconnect import run_with_reconnect
from smpc.net.topics import Topics
from smpc.pki.kit import load_kit
from smpc.protocols.base import SiteSource, SkipJob
from smpc.protocols.registry import parse_spec
from smpc.site.config import SiteConfig
from smpc.site.inputs import site_inputs
from smpc.site.upload import upload
from smpc.wire.messages import Job, MessageError, verify_job

logger = logging.getLogger("smpc.site")


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
                inputs=config.inputs or None, trainer=trainer, out=config.out,
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
