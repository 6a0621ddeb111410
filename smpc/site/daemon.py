"""``smpc site serve``: answer every open job this site can answer, once each.

SIGHUP reloads the kit's public directory and the federation file without a restart
(jobs are verified, and shares sealed, with the new keys from the next job on):
``event=reload`` names who joined or left; files that are not a usable update get one
``event=reload-refused`` line and the old directory stays.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from smpc import log
from smpc.aio import on_sighup, until
from smpc.config.federation import Federation, load_federation
from smpc.errors import UserError
from smpc.net.connection import Connection
from smpc.net.reconnect import run_with_reconnect
from smpc.net.topics import Topics
from smpc.net.webpage import BrokerState
from smpc.pki.kit import Kit, load_kit, reload_kit
from smpc.protocols.base import SiteSource, SkipJob
from smpc.protocols.registry import parse_spec
from smpc.site.config import SiteConfig
from smpc.site.inputs import site_inputs
from smpc.site.upload import job_on_its_topic, upload
from smpc.site.web import SiteActivity, start_site_web
from smpc.wire.messages import Job, MessageError

logger = logging.getLogger("smpc.site")


@dataclass
class _Keys:
    """The site's kit and federation, replaced as a whole on SIGHUP."""

    kit: Kit
    federation: Federation
    federation_file: Path | None

    def reload(self) -> None:
        """Read them again; a refused update keeps the ones loaded before."""
        try:
            reloaded = reload_kit(self.kit, self.federation_file)
        except Exception as exc:  # a bad file must not stop the daemon
            text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            reason = "; ".join(text.splitlines())
            log.event(
                logger, "reload-refused", logging.ERROR, site=self.kit.name,
                reason=f"{reason} (the directory loaded before stays in use)",
            )  # fmt: skip
            return
        self.kit, self.federation = reloaded.kit, reloaded.federation
        directory = reloaded.kit.directory
        log.event(
            logger, "reload", site=self.kit.name, directory=directory.path / "directory.json",
            analysts=",".join(directory.analysts) or "none",
            added=",".join(reloaded.added) or "none", removed=",".join(reloaded.removed) or "none",
        )  # fmt: skip


async def serve(config: SiteConfig, stop: asyncio.Event) -> None:
    """Answer every open job this site can answer, once each, until ``stop``.

    A fedavg job goes to the trainer when one is configured (every round of
    multi-round training is a job of its own); otherwise the job's protocol reads
    its ``data`` file, or computes its statistics from ``inputs``. Every job not
    answered gets one ``event=job-skipped`` line with the reason; a job whose inputs
    fail (a bad file, a value out of range) one ``event=upload-failed`` line, and the
    daemon goes on with the next job. Each upload runs beside the message loop, so one
    that still re-publishes to a party that is down (until its deadline) does not hold
    up the next job.
    """
    from smpc.protocols.fedavg.training import load_trainer

    kit = load_kit(config.kit)
    keys = _Keys(kit, load_federation(config.federation or kit.federation_file), config.federation)
    topics = Topics(keys.federation.name)
    state = config.state
    assert state is not None  # load_site_config defaults it next to the config file
    answered = set(state.read_text().split()) if state.exists() else set()
    trainer = (
        load_trainer(config.trainer, site=kit.name, args=config.trainer_args)
        if config.trainer
        else None
    )
    keep = state.parent / f"{state.name}.uploads"  # envelopes awaiting acks
    activity, broker = SiteActivity(answered), BrokerState()  # the operator page's
    web = await start_site_web(
        config.web, keys=keys, activity=activity, broker=broker, stopping=stop.is_set
    )
    inflight: dict[str, asyncio.Task] = {}  # job id -> its upload, until it ends

    def skipped(job: Job, reason: str) -> None:
        activity.record(job.id, job.protocol, "skipped", reason)
        log.event(logger, "job-skipped", job=job.id, site=kit.name, reason=reason)

    def failed(job: Job, reason: object) -> None:
        activity.record(job.id, job.protocol, "failed", str(reason))
        log.event(logger, "upload-failed", logging.ERROR, job=job.id, reason=reason)

    def connect() -> Connection:
        return Connection.from_kit(keys.kit, keys.federation)

    async def session(conn: Connection) -> None:
        await conn.subscribe(topics.jobs())
        broker.up()
        log.event(
            logger, "site-serving", site=keys.kit.name, inputs=",".join(config.inputs) or None,
            data=",".join(f"{k}={v}" for k, v in config.data.items())
            if isinstance(config.data, dict) else config.data,
            trainer=config.trainer,
        )  # fmt: skip
        async for message in until(conn.messages(), stop):
            if not message.body:
                continue  # a retained job cleared by the analyst
            kit, federation = keys.kit, keys.federation  # as reloaded by the last SIGHUP
            try:
                job = job_on_its_topic(topics, message.topic, message.body, kit)
            except (MessageError, ValueError) as exc:
                log.event(logger, "job-ignored", logging.WARNING, reason=exc)
                continue
            if job.id in inflight:
                continue  # its upload is running (the job again, or its close)
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
            inflight[job.id] = asyncio.create_task(answer(job, kit, federation, source))

    async def answer(job: Job, kit: Kit, federation: Federation, source: SiteSource) -> None:
        try:
            # a trainer answers within a round's upload window
            window = parse_spec(job.spec, job.id, federation).round_timeout if trainer else 120.0
            report = await upload(
                kit, federation, job, site_inputs(source, federation), keep=keep,
                policy=config.policy, timeout=window,
            )  # fmt: skip
        except SkipJob as exc:
            skipped(job, str(exc))
            return
        except UserError as exc:
            failed(job, exc)
            return
        except Exception as exc:  # a file no reader expected: log it, serve the next job
            logger.debug("job %s", job.id, exc_info=True)
            failed(job, f"{type(exc).__name__}: {exc}")
            return
        finally:
            inflight.pop(job.id, None)
        activity.sent(report.bytes_sent)
        activity.record(job.id, job.protocol, "uploaded")
        answered.add(job.id)
        state.write_text("\n".join(sorted(answered)) + "\n")

    def lost(exc: Exception, wait: float) -> None:
        broker.down(str(exc))
        logging.getLogger("smpc.transport").warning("%s; reconnecting in %.1f s", exc, wait)

    # a broker restart or a lost connection reconnects and re-subscribes; a refused
    # certificate or client id ends the daemon with the reason
    remove_sighup = on_sighup(keys.reload)
    try:
        await run_with_reconnect(connect, session, stop=stop, on_retry=lost)
    finally:
        remove_sighup()
        if web is not None:
            web.close()
        running = list(inflight.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
