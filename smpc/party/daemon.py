"""The computing-party daemon: ``smpc party serve --config parties/<party>.yaml``.

:func:`serve` wires :class:`smpc.party.service.PartyService` to the broker
(:mod:`smpc.net.connection`): it subscribes to the federation's jobs and to the uploads
addressed to this party, and publishes a signed ack for every envelope it stored or
rejected.

The daemon (:class:`_Daemon`) handles every message under a guard, so one bad
job or envelope is refused with its reason and never stops the party, and runs
each job's MPyC session as a background child process beside the message loop.
How quickly a session notices a missing or dead peer is stated in
:mod:`smpc.mpc.session`.

SIGHUP reloads the kit's public directory and the federation file without a restart
(:meth:`_Daemon.reload`): ``event=reload`` names who joined or left; files that are not
a usable update get one ``event=reload-refused`` line and the old directory stays.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smpc import log
from smpc.aio import on_sighup, until
from smpc.errors import UserError
from smpc.mpc.task import SessionTask
from smpc.net.connection import Connection
from smpc.net.errors import TransportError
from smpc.net.reconnect import run_with_reconnect
from smpc.net.topics import Topics
from smpc.net.webpage import BrokerState
from smpc.party.config import PartyConfig
from smpc.party.replies import JobReply, Reply
from smpc.party.service import PartyService
from smpc.party.web import start_party_web
from smpc.wire.envelope_errors import EnvelopeError
from smpc.wire.layout import envelope_id, peek_route
from smpc.wire.messages import Job

logger = logging.getLogger("smpc.party")


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
    log.event(logger, "party-start", party=name, index=service.index, store=config.store)
    removed = service.store.recover()  # what a crash left half-written: never acknowledged
    if removed:
        log.event(logger, "store-recovered", party=name, removed=len(removed))
    broker = BrokerState()  # what the operator page shows (config.web; off by default)
    web = await start_party_web(config.web, service, broker, stop.is_set)

    def connect() -> Connection:
        # Large uploads are reassembled on disk, so memory stays bounded
        # however many sites upload at once.
        return Connection.from_kit(
            service.kit, service.federation, spool_dir=Path(config.store) / "spool"
        )

    async def session(conn: Connection) -> None:
        await conn.subscribe(daemon.topics.jobs())
        await conn.subscribe(daemon.topics.uploads_for(name))
        log.event(logger, "party-connected", party=name, broker=service.federation.broker.host)
        daemon.conn = conn
        broker.up()
        try:
            async for message in until(conn.messages(), stop):
                await daemon.dispatch(message)
        finally:
            daemon.conn = None
            broker.down("the connection was lost" if not stop.is_set() else "stopping")

    def lost(exc: Exception, wait: float) -> None:
        broker.down(str(exc))
        log.event(logger, "broker-lost", logging.WARNING, party=name, reason=exc)

    remove_sighup = on_sighup(daemon.reload_soon)
    try:
        await run_with_reconnect(
            connect, session, max_delay=reconnect_max,
            transient=(TransportError,), stop=stop, on_retry=lost,
        )  # fmt: skip
    finally:
        remove_sighup()
        if web is not None:
            web.close()
        await asyncio.gather(*daemon.reloads, return_exceptions=True)
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
        self.reloads: set[asyncio.Task[None]] = set()

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
                await self.on_job(fields["job"], message.body, fields["analyst"])
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

    async def on_job(self, job_id: str, body: bytes, analyst: str) -> None:
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
        answer = await self.call(service.handle_job, body, job_id, analyst)
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
        started = time.monotonic()
        try:
            reply = await self.service.run_session(job, task, call=self.call)
        except asyncio.CancelledError:
            self.service.metrics.session(time.monotonic() - started, "stopped")
            log.event(logger, "session-stopped", logging.WARNING, job=job.id)
            raise
        except Exception as exc:  # the session's own failures are replies, not raises
            self.service.metrics.session(time.monotonic() - started, "error")
            await self.crashed("job", job.id, exc, background=True)
            return
        state = "failed" if reply.results == () and reply.status is not None else "done"
        self.service.metrics.session(time.monotonic() - started, state)
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

    def reload_soon(self) -> None:
        """SIGHUP: reload the directory as soon as the message at hand is handled."""
        task = asyncio.create_task(self.reload(), name="reload")
        self.reloads.add(task)
        task.add_done_callback(self.reloads.discard)

    async def reload(self) -> None:
        """Read the kit's directory and the federation file again, keep serving.

        Runs under the store lock, between two messages; a refused update leaves the
        directory loaded before in use.
        """
        try:
            reloaded = await self.call(self.service.reload)
        except Exception as exc:  # a bad file must not stop the daemon
            text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            reason = "; ".join(text.splitlines())
            log.event(
                logger, "reload-refused", logging.ERROR, party=self.name,
                reason=f"{reason} (the directory loaded before stays in use)",
            )  # fmt: skip
            return
        directory = reloaded.kit.directory
        log.event(
            logger, "reload", party=self.name, directory=directory.path / "directory.json",
            sites=",".join(directory.sites) or "none", added=",".join(reloaded.added) or "none",
            removed=",".join(reloaded.removed) or "none",
        )  # fmt: skip

    async def stop_sessions(self) -> None:
        """Cancel every running session (each kills its process) and wait for them."""
        running = list(self.sessions.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


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
