"""The MQTT connection to the federation's broker: TLS, connect, publish and subscribe."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import ssl
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from smpc.errors import UserError
from smpc.names import NAME_PATTERN
from smpc.net.errors import (
    ConnectFailed,
    ConnectionLost,
    PublishTimeout,
    SubscriptionRefused,
    TransportError,
)
from smpc.net.frames import DEFAULT_CHUNK, MAX_CHUNK, byte_view, check_chunk, encode_frames
from smpc.net.reassembly import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_PENDING_SETS,
    DEFAULT_PENDING_TTL,
    Message,
    Reassembler,
)

if TYPE_CHECKING:
    import aiomqtt

    from smpc.config.federation import Federation
    from smpc.pki.kit import Kit, TlsFiles

__all__ = ["DEFAULT_WINDOW", "QOS", "Connection", "client_tls_context"]

DEFAULT_WINDOW = 16 << 20  # bytes of chunks awaiting PUBACK per publish_body
QOS = 1

_CLIENT_ID = re.compile(NAME_PATTERN.pattern + r"(\.[A-Za-z0-9_-]{1,128})?")


def client_tls_context(tls: TlsFiles) -> ssl.SSLContext:
    """TLS ≥ 1.2 with our client certificate; the broker must present a federation-CA
    certificate whose SANs match the host we connect to."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(tls.cert), str(tls.key))
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: not found (TLS files of the broker client)") from None
    except (ssl.SSLError, OSError) as exc:
        raise UserError(f"cannot load TLS files {tls.cert}, {tls.key}, {tls.ca}: {exc}") from None
    return context


class _ErrorCapture(logging.Handler):
    """Keeps the last error paho logs (e.g. the TLS alert of a refused certificate) and
    passes every record on to the ``smpc.transport.mqtt`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.last: str | None = None
        self.forward = logging.getLogger("smpc.transport.mqtt")

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            if record.levelno >= logging.WARNING:
                self.last = record.getMessage()
            if self.forward.isEnabledFor(record.levelno):
                self.forward.handle(record)


_PERMANENT_HINTS = (
    "certificate verify failed",
    "alert certificate required",
    "alert unknown ca",
    "alert certificate expired",
    "alert bad certificate",
    "certificate unknown",
    "alert handshake failure",
    "not authori",
    "bad username",
    "invalid client identifier",
)

_T = TypeVar("_T")


class Connection:
    """One MQTT connection to the federation's broker (async context manager).

    >>> async with Connection(host, port, kit.tls, client_id=kit.name) as conn:
    ...     await conn.subscribe(topics.uploads_for(kit.name))
    ...     async for message in conn.messages():
    ...         ...

    ``tls=None`` connects without TLS (tests of plain brokers only); ``ssl_context``
    replaces the context built from ``tls`` (e.g. keys in an HSM).
    ``max_chunk``: body bytes per MQTT message for :meth:`publish_body` (64 KiB..15 MiB).
    ``timeout``: seconds to wait for CONNACK/SUBACK/PUBACK.

    Delivery (details: docs/wire.md): QoS 1, MQTT 3.1.1. ``persistent=True`` means
    ``clean_session=False`` with a stable client id, so the broker keeps the
    subscriptions and queues messages while the client is away. A received MQTT message
    is acknowledged when :meth:`messages` takes it off the client's queue (manual acks:
    back-pressure). A body may arrive twice (a retried publish has a new message id) and
    bodies of one sender need not arrive in order, so consumers must be idempotent and
    not rely on order; end-to-end delivery is the business of the signed application
    acks. ``Message.retained`` is a hint only.
    """

    def __init__(
        self,
        host: str,
        port: int,
        tls: TlsFiles | None,
        *,
        client_id: str,
        persistent: bool = True,
        max_chunk: int = DEFAULT_CHUNK,
        window: int = DEFAULT_WINDOW,
        keepalive: int = 30,
        timeout: float = 60.0,
        connect_timeout: float = 15.0,
        max_body: int = DEFAULT_MAX_BODY,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_pending_sets: int = DEFAULT_MAX_PENDING_SETS,
        pending_ttl: float = DEFAULT_PENDING_TTL,
        spool_dir: Path | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not _CLIENT_ID.fullmatch(client_id):
            raise ValueError(
                f"invalid client id {client_id!r}: expected a participant name, "
                "optionally followed by '.' and a suffix of letters, digits, '_' or '-'"
            )
        self.host = host
        self.port = port
        self.tls = tls
        self.ssl_context = ssl_context
        self.client_id = client_id
        self.persistent = persistent
        self.max_chunk = check_chunk(max_chunk)
        self.window = max(window, max_chunk)
        self.keepalive = keepalive
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._reassembler_args: dict[str, Any] = {
            "max_body": max_body,
            "max_pending_bytes": max_pending_bytes,
            "max_pending_sets": max_pending_sets,
            "pending_ttl": pending_ttl,
            "spool_dir": spool_dir,
        }
        self.reassembler = Reassembler(**self._reassembler_args)
        self._client: aiomqtt.Client | None = None
        self._capture = _ErrorCapture()
        # not registered with logging (one per connection); paho and aiomqtt log here
        self._logger = logging.Logger("smpc.transport.mqtt")
        self._logger.addHandler(self._capture)

    @classmethod
    def from_kit(
        cls,
        kit: Kit,
        federation: Federation,
        *,
        suffix: str | None = None,
        persistent: bool | None = None,
        **options: Any,
    ) -> Connection:
        """A connection as ``kit``'s participant to ``federation``'s broker.

        Without ``suffix``: the participant's durable session (client id = its name,
        persistent). With one: client id ``<name>.<suffix>``, a clean session by
        default (for one-shot commands next to a running daemon).
        """
        client_id = kit.name if suffix is None else f"{kit.name}.{suffix}"
        if persistent is None:
            persistent = suffix is None
        return cls(
            federation.broker.host,
            federation.broker.port,
            kit.tls,
            client_id=client_id,
            persistent=persistent,
            **options,
        )

    def __repr__(self) -> str:
        return f"Connection({self.host}:{self.port}, client_id={self.client_id!r})"

    @property
    def _where(self) -> str:
        return f"broker {self.host}:{self.port} (client id {self.client_id})"

    # -- connect / disconnect --

    async def __aenter__(self) -> Connection:
        import aiomqtt

        client = self._new_client()
        self.reassembler = Reassembler(**self._reassembler_args)
        self._capture.last = None
        self._logger.setLevel(min(logging.WARNING, self._capture.forward.getEffectiveLevel()))
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise self._connect_failed(exc) from None
        except OSError as exc:  # pragma: no cover - aiomqtt wraps these
            raise ConnectFailed(f"cannot connect to {self._where}: {exc}") from None
        client.timeout = self.timeout
        self._client = client
        return self

    def _new_client(self) -> aiomqtt.Client:
        """An aiomqtt client for this connection (not connected yet), with manual acks."""
        import aiomqtt

        context = self.ssl_context
        if context is None and self.tls is not None:
            context = client_tls_context(self.tls)
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            clean_session=not self.persistent,
            protocol=aiomqtt.ProtocolVersion.V311,
            tls_context=context,
            keepalive=self.keepalive,
            timeout=self.connect_timeout,
            max_inflight_messages=max(20, 2 * math.ceil(self.window / self.max_chunk)),
            logger=self._logger,
        )
        client.pending_calls_threshold = 1 << 16  # we bound concurrency ourselves
        client._client.manual_ack_set(True)
        self._fail_fast_before_connack(client)
        _skip_closed_socket_writes(client)
        return client

    def _fail_fast_before_connack(self, client: aiomqtt.Client) -> None:
        """Make a disconnect before CONNACK fail the connect at once, with its reason."""
        import aiomqtt

        paho_client = client._client
        original_on_disconnect = paho_client.on_disconnect
        assert original_on_disconnect is not None  # aiomqtt installs its own

        def on_disconnect(*args: Any, **kwargs: Any) -> None:
            # aiomqtt ignores a disconnect before CONNACK (e.g. a TLS 1.3 alert when the
            # broker refuses our certificate) and would wait for the timeout instead.
            connected = client._connected
            if not connected.done():
                reason = self._capture.last or "connection closed before CONNACK"
                connected.set_exception(aiomqtt.MqttError(reason))
            original_on_disconnect(*args, **kwargs)

        paho_client.on_disconnect = on_disconnect

    def _connect_failed(self, exc: Exception) -> ConnectFailed:
        reason = str(exc) or type(exc).__name__
        last = (self._capture.last or "").removeprefix("failed to receive on socket: ")
        if reason == "Operation timed out":
            reason = f"no answer (CONNACK) in {self.connect_timeout:g} s"
            if last:
                reason += f" ({last})"
        elif reason.startswith("failed to receive on socket: "):
            reason = reason.removeprefix("failed to receive on socket: ")
        lower = reason.lower()
        permanent = any(hint in lower for hint in _PERMANENT_HINTS)
        if any(s in lower for s in ("closed before connack", "eof occurred", "reset by peer")):
            reason += (
                " - the broker closed the connection before accepting it, as it does for a "
                "client certificate it does not accept or a client id it refuses"
            )
        elif "certificate" in lower or "unknown ca" in lower:
            reason += (
                " - check that the kit's tls/ files come from this federation's CA and that "
                "the broker certificate names the host"
            )
        return ConnectFailed(f"cannot connect to {self._where}: {reason}", permanent=permanent)

    async def __aexit__(self, *exc_info: object) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        lost = client._disconnected
        if lost.done() and not lost.cancelled():
            lost.exception()  # retrieved: asyncio would log it as never retrieved
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.__aexit__(None, None, None), 5)

    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and not client._disconnected.done()

    def _require(self) -> aiomqtt.Client:
        client = self._client
        if client is None:
            raise ConnectionLost(f"not connected to {self._where}")
        if client._disconnected.done():
            raise self._lost()
        return client

    def _lost(self) -> ConnectionLost:
        client = self._client
        reason = "disconnected"
        if client is not None and client._disconnected.done():
            exc = client._disconnected.exception()
            if exc is not None:
                reason = str(exc) or type(exc).__name__
        return ConnectionLost(f"lost the connection to {self._where}: {reason}")

    async def _call(self, what: str, awaitable: Awaitable[_T]) -> _T:
        """Await an aiomqtt call, failing fast if the connection drops meanwhile."""
        import aiomqtt

        client = self._require()
        task = asyncio.ensure_future(awaitable)
        try:
            done, _ = await asyncio.wait(
                (task, client._disconnected), return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            task.cancel()
            raise
        if task not in done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise self._lost()
        try:
            return task.result()
        except aiomqtt.MqttCodeError as exc:
            if client._disconnected.done():
                raise self._lost() from None
            raise TransportError(f"{what} failed on {self._where}: {exc}") from None
        except aiomqtt.MqttError as exc:
            if client._disconnected.done():
                raise self._lost() from None
            if str(exc) == "Operation timed out":
                raise PublishTimeout(
                    f"{what}: no acknowledgement from {self._where} in {self.timeout:g} s"
                ) from None
            raise TransportError(f"{what} failed on {self._where}: {exc}") from None

    # -- publish --

    async def publish(
        self, topic: str, payload: bytes | bytearray | memoryview, *, retain: bool = False
    ) -> None:
        """Publish a body as exactly one MQTT message (framed; may be retained).

        The body may be up to :data:`~smpc.net.frames.MAX_CHUNK` bytes, larger than
        ``max_chunk`` (which sizes the chunks of :meth:`publish_body`): a retained job
        message cannot be split. ValueError beyond that: use :meth:`publish_body`.
        """
        view = byte_view(payload)
        if len(view) > MAX_CHUNK:
            raise ValueError(
                f"payload of {len(view)} bytes does not fit in one message "
                f"(at most {MAX_CHUNK}); use publish_body"
            )
        (frame,) = encode_frames(view, max(self.max_chunk, len(view)))
        client = self._require()
        await self._call(
            f"publish to {topic}", client.publish(topic, frame, qos=QOS, retain=retain)
        )

    async def clear_retained(self, topic: str) -> None:
        """Delete the retained message of ``topic`` (an empty retained publish)."""
        client = self._require()
        await self._call(f"clear {topic}", client.publish(topic, b"", qos=QOS, retain=True))

    async def publish_body(self, topic: str, body: bytes | bytearray | memoryview) -> None:
        """Publish a body of any size, split into frames of at most ``max_chunk`` bytes.

        Returns when the broker has acknowledged every chunk. At most ``window`` bytes
        of chunks await acknowledgement at a time.
        """
        view = byte_view(body)
        if len(view) >= 4 * 1024 * 1024:  # keep the event loop responsive
            digest = await asyncio.to_thread(lambda: hashlib.sha256(view).digest())
        else:
            digest = hashlib.sha256(view).digest()
        client = self._require()
        limit = asyncio.Semaphore(max(1, self.window // self.max_chunk))
        tasks: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []

        async def send(frame: bytes, index: int) -> None:
            try:
                await self._call(
                    f"publish chunk {index} to {topic}",
                    client.publish(topic, frame, qos=QOS),
                )
            except BaseException as exc:
                failure.append(exc)
            finally:
                limit.release()

        try:
            for index, frame in enumerate(encode_frames(view, self.max_chunk, digest=digest)):
                await limit.acquire()
                if failure:
                    break
                task = asyncio.create_task(send(frame, index))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        if failure:
            raise failure[0]

    # -- subscribe --

    async def subscribe(self, *filters: str) -> None:
        """Subscribe (QoS 1); SubscriptionRefused if the broker refuses any filter."""
        if not filters:
            return
        client = self._require()
        granted = await self._call(
            f"subscribe to {', '.join(filters)}",
            client.subscribe([(f, QOS) for f in filters]),
        )
        refused = [f for f, code in zip(filters, granted, strict=False) if _code(code) >= 0x80]
        if refused:
            raise SubscriptionRefused(
                f"{self._where} refused the subscription to {', '.join(refused)} "
                "(not allowed for this participant)"
            )

    async def unsubscribe(self, *filters: str) -> None:
        if filters:
            client = self._require()
            await self._call(f"unsubscribe {', '.join(filters)}", client.unsubscribe(list(filters)))

    async def messages(self) -> AsyncIterator[Message]:
        """Complete, verified bodies on the subscribed topics, as they complete.

        One consumer at a time. Each MQTT message is acknowledged to the broker when it
        is taken here (see the class docstring). Raises ConnectionLost when the broker
        connection drops.
        """
        import aiomqtt

        client = self._require()
        paho_client = client._client
        iterator = client.messages
        while True:
            try:
                raw = await iterator.__anext__()
            except aiomqtt.MqttError:
                raise self._lost() from None
            try:
                message = self.reassembler.add(str(raw.topic), raw.payload, bool(raw.retain))
            finally:
                if raw.qos > 0:
                    paho_client.ack(raw.mid, raw.qos)
            if message is not None:
                yield message


def _code(code: Any) -> int:
    value = getattr(code, "value", code)
    return int(value)


def _skip_closed_socket_writes(client: aiomqtt.Client) -> None:
    """Replace aiomqtt's socket-writer registration by one that skips a closed socket."""
    loop = asyncio.get_running_loop()

    def on_socket_register_write(paho: Any, userdata: Any, sock: Any) -> None:
        # as aiomqtt's, but the deferred add_writer skips a socket closed meanwhile
        # (a refused connection), instead of logging "Bad file descriptor"
        def writable() -> None:
            try:
                paho.loop_write()
            except Exception as exc:
                if not client._disconnected.done():
                    client._disconnected.set_exception(exc)

        def register() -> None:
            if paho.socket() is sock and sock.fileno() >= 0:
                loop.add_writer(sock.fileno(), writable)

        loop.call_soon_threadsafe(register)

    client._client.on_socket_register_write = on_socket_register_write
