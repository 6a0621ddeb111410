"""MQTT transport: topics, framed bodies and broker connections. Nothing else talks MQTT.

Topic layout
------------
Every topic of federation ``<fed>`` lives under ``smpc/<fed>/``. All names (federation,
participants, job ids) match ``[a-z0-9][a-z0-9_-]{0,62}``, so they are always exactly
one topic level and never contain a wildcard.

=======================================  ======================  =========================
topic                                    who publishes           who subscribes (filter)
=======================================  ======================  =========================
``smpc/<fed>/jobs/<job>``                analysts (retained)     everyone: ``jobs/+``
``smpc/<fed>/up/<site>/<party>``         site ``<site>``         party: ``up/+/<party>``
``smpc/<fed>/ack/<site>/<party>``        party ``<party>``       site: ``ack/<site>/+``
``smpc/<fed>/result/<a>/<job>/<party>``  party ``<party>``       analyst ``<a>`` only:
                                                                 ``result/<a>/<job>/+``
``smpc/<fed>/status/<job>/<party>``      party ``<party>``       parties, analysts:
                                                                 ``status/<job>/+``
=======================================  ======================  =========================

``up`` carries share envelopes (one site to one party), ``ack`` the party's signed
receipts, ``result`` a party's result envelopes for the job's analyst (sealed to that
analyst's key, whether opened inside MPyC or reconstructed by the analyst), ``status`` a party's
acceptance or refusal of a job and its view of which sites' shares it holds (what the
parties need to agree on before they open anything). The broker enforces who may
publish and read what (:mod:`smpc.broker.acl` generates the per-participant ACL from the
federation file); everything on these topics is also signed end to end, so the ACL is
a second line of defence, not the only one.

Frames
------
Everything published on these topics is *framed*: an MQTT message is a 76-byte frame
header followed by (a chunk of) the body. A body larger than the connection's
``max_chunk`` travels as several MQTT messages that the receiver reassembles; a small
one is a single frame. Frame header, version 1, integers little-endian:

======  ====  ===============================================================
offset  size  field
======  ====  ===============================================================
0       4     magic ``b"SMPT"``
4       1     version = 1
5       1     flags = 0 (reserved; a receiver drops frames with other flags)
6       2     reserved, zero
8       16    message id: 16 random bytes, the same in every chunk of a body
24      4     chunk index, u32, ``0 <= index < count``
28      4     chunk count, u32 = ``max(1, ceil(total / chunk_size))``
32      4     chunk size, u32, ``MIN_CHUNK <= chunk_size <= MAX_CHUNK``: every chunk
              but the last carries exactly ``chunk_size`` bytes of the body
36      8     total body length, u64
44      32    SHA-256 of the whole body
76      ...   the chunk: ``body[index*chunk_size : (index+1)*chunk_size]``
======  ====  ===============================================================

A receiver keys chunk sets by (topic, message id), so chunks of several bodies may
interleave on one topic and chunks on different topics (different senders, by the ACL)
never mix. It accepts chunks in any order, ignores duplicates (QoS 1 redelivers), and
yields a body only when all chunks are there and the SHA-256 matches. Sets that do not
verify (hash mismatch, inconsistent headers, a body over ``max_body``) are dropped with
a warning on the ``smpc.net.transport`` logger. Incomplete sets are bounded: in number, in
bytes held (when over the limit, the topic holding the most loses its stalest set, so
one sender cannot push out the others) and in age (no chunk for ``pending_ttl``
seconds). A zero-length MQTT payload (how MQTT clears a retained message) is ignored
silently; any other payload that is not a valid frame is dropped with a warning.

Delivery
--------
QoS 1 everywhere, MQTT 3.1.1 (Mosquitto and amqtt both implement it fully; amqtt has
no MQTT 5 session expiry). With ``persistent=True`` the connection uses
``clean_session=False`` and a stable client id, so the broker keeps the subscriptions
and queues QoS 1 messages while the client is away: a party that restarts receives what
the sites published meanwhile. Client ids are ``<participant name>`` for the durable
session of a participant's daemon and ``<name>.<suffix>`` for anything else (see
:meth:`Connection.from_kit`); the embedded broker enforces that prefix.

A received MQTT message is acknowledged to the broker when :meth:`Connection.messages`
takes it off the client's queue (manual acks), which gives back-pressure: the broker
stops sending after its in-flight window until the consumer catches up. A chunk held
in memory is lost if the process dies, so end-to-end delivery is the business of the
signed application acks (a site republishes an envelope until the party acknowledges
it); the transport may also deliver a body twice (a retried publish has a new message
id) and consumers must be idempotent. Within one connection a body with an already
delivered message id is not yielded again.

Order: Mosquitto keeps the order of QoS 1 messages per topic, so bodies of one sender
complete in the order they were published; the embedded amqtt broker does not, so
consumers must not rely on the order of bodies. ``Message.retained`` is a hint only:
amqtt also sets the retain flag on messages it queued for an offline persistent session.

Errors
------
:class:`ConnectFailed` (``permanent`` when retrying cannot help: the broker refused our
certificate, or its certificate is not from the federation CA), :class:`ConnectionLost`
(from :meth:`~Connection.messages` and the publish methods when the broker goes away),
:class:`SubscriptionRefused`, :class:`PublishTimeout`. A daemon reconnects with
:func:`smpc.net.reconnect.run_with_reconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import ssl
import struct
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from smpc.errors import UserError
from smpc.names import NAME_PATTERN

if TYPE_CHECKING:
    import aiomqtt

    from smpc.config.federation import Federation
    from smpc.pki.kit import Kit, TlsFiles

__all__ = [
    "DEFAULT_CHUNK",
    "FRAME_HEADER_SIZE",
    "MAX_CHUNK",
    "MIN_CHUNK",
    "ConnectFailed",
    "Connection",
    "ConnectionLost",
    "FrameError",
    "FrameHeader",
    "Message",
    "PublishTimeout",
    "Reassembler",
    "SubscriptionRefused",
    "TransportError",
    "client_tls_context",
    "decode_frame",
    "encode_frames",
]

log = logging.getLogger("smpc.transport")

MIN_CHUNK = 64 * 1024
MAX_CHUNK = 15 * 1024 * 1024  # the Mosquitto config allows 16 MiB packets
DEFAULT_CHUNK = 1 << 20
DEFAULT_MAX_BODY = 4 << 30
DEFAULT_MAX_PENDING_BYTES = 1 << 30
DEFAULT_MAX_PENDING_SETS = 256
DEFAULT_PENDING_TTL = 600.0
DEFAULT_WINDOW = 16 << 20  # bytes of chunks awaiting PUBACK per publish_body
QOS = 1

FRAME_MAGIC = b"SMPT"
FRAME_VERSION = 1
_FRAME = struct.Struct("<4sBBH16sIIIQ32s")
FRAME_HEADER_SIZE = _FRAME.size  # 76

_CLIENT_ID = re.compile(NAME_PATTERN.pattern + r"(\.[A-Za-z0-9_-]{1,128})?")


# --- errors ---------------------------------------------------------------------------


class TransportError(UserError):
    """A problem talking to the broker; the message says which broker and why."""


class ConnectFailed(TransportError):
    """Could not connect. ``permanent``: retrying will not help (certificates, refusal)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class ConnectionLost(TransportError):
    """The broker connection dropped; reconnect (:func:`smpc.net.reconnect.run_with_reconnect`)."""


class SubscriptionRefused(TransportError):
    """The broker refused a subscription (SUBACK failure: not allowed by its ACL)."""


class PublishTimeout(TransportError):
    """The broker did not acknowledge a publish in time."""


class FrameError(ValueError):
    """A payload that is not a valid frame; the message is the reason."""


# --- frames ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameHeader:
    message_id: bytes
    index: int
    count: int
    chunk_size: int
    total: int
    digest: bytes

    def chunk_length(self, index: int | None = None) -> int:
        """Length of chunk ``index`` (default: this frame's) of the body."""
        i = self.index if index is None else index
        return min(self.chunk_size, self.total - i * self.chunk_size)


def _check_chunk(max_chunk: int) -> int:
    if not isinstance(max_chunk, int) or not MIN_CHUNK <= max_chunk <= MAX_CHUNK:
        raise ValueError(
            f"max_chunk must be between {MIN_CHUNK} (64 KiB) and {MAX_CHUNK} bytes, "
            f"got {max_chunk!r}"
        )
    return max_chunk


def _chunk_count(total: int, chunk_size: int) -> int:
    return max(1, -(-total // chunk_size))


def _byte_view(body: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(body)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def encode_frames(
    body: bytes | bytearray | memoryview,
    max_chunk: int = DEFAULT_CHUNK,
    *,
    message_id: bytes | None = None,
    digest: bytes | None = None,
) -> Iterator[bytes]:
    """The MQTT payloads of one body, lazily: one frame per chunk of at most ``max_chunk``.

    ``digest`` (SHA-256 of the body) may be passed if already known.
    """
    _check_chunk(max_chunk)
    view = _byte_view(body)
    total = len(view)
    if digest is None:
        digest = hashlib.sha256(view).digest()
    if message_id is None:
        message_id = os.urandom(16)
    if len(message_id) != 16 or len(digest) != 32:
        raise ValueError("message_id must be 16 bytes and digest 32 bytes")
    count = _chunk_count(total, max_chunk)
    for index in range(count):
        header = _FRAME.pack(
            FRAME_MAGIC,
            FRAME_VERSION,
            0,
            0,
            message_id,
            index,
            count,
            max_chunk,
            total,
            digest,
        )
        yield header + view[index * max_chunk : (index + 1) * max_chunk]


def decode_frame(payload: bytes | bytearray | memoryview) -> tuple[FrameHeader, memoryview]:
    """Header and chunk of one frame, checked for internal consistency; FrameError if not."""
    view = _byte_view(payload)
    if len(view) < FRAME_HEADER_SIZE:
        raise FrameError(f"payload of {len(view)} bytes is shorter than a frame header")
    magic, version, flags, reserved, mid, index, count, chunk_size, total, digest = (
        _FRAME.unpack_from(view)
    )
    if magic != FRAME_MAGIC:
        raise FrameError(f"not an smpc frame (magic {bytes(magic)!r})")
    if version != FRAME_VERSION:
        raise FrameError(f"unsupported frame version {version} (this reader knows 1)")
    if flags or reserved:
        raise FrameError(f"unknown frame flags {flags:#x}/{reserved:#x}")
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise FrameError(f"chunk size {chunk_size} outside {MIN_CHUNK}..{MAX_CHUNK}")
    if count != _chunk_count(total, chunk_size):
        raise FrameError(
            f"chunk count {count} inconsistent with {total} bytes in chunks of {chunk_size}"
        )
    if index >= count:
        raise FrameError(f"chunk index {index} out of range (count {count})")
    header = FrameHeader(bytes(mid), index, count, chunk_size, total, bytes(digest))
    data = view[FRAME_HEADER_SIZE:]
    if len(data) != header.chunk_length():
        raise FrameError(
            f"chunk {index}/{count} carries {len(data)} bytes, expected {header.chunk_length()}"
        )
    return header, data


# --- reassembly -----------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A complete, integrity-checked body received on ``topic``."""

    topic: str
    body: bytes
    retained: bool = False


@dataclass(eq=False)
class _Pending:
    topic: str
    header: FrameHeader
    started: float
    updated: float
    chunks: dict[int, memoryview] = field(default_factory=dict)
    size: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)
    hashed: int = 0  # chunks 0..hashed-1 are in the hasher
    spool: int | None = None  # file descriptor: chunks live on disk, not in ``chunks``
    spool_path: Path | None = None
    present: set[int] = field(default_factory=set)

    def store(self, index: int, data: memoryview) -> None:
        if self.spool is None:
            self.chunks[index] = data
        else:
            os.pwrite(self.spool, data, index * self.header.chunk_size)
        self.present.add(index)

    def chunk(self, index: int) -> bytes | memoryview:
        if self.spool is None:
            return self.chunks[index]
        return os.pread(self.spool, self.header.chunk_length(index), index * self.header.chunk_size)

    def advance_hash(self) -> None:
        while self.hashed in self.present:
            self.hasher.update(self.chunk(self.hashed))
            self.hashed += 1

    def body(self) -> bytes:
        if self.spool is None:
            return b"".join(self.chunks[i] for i in range(self.header.count))
        return os.pread(self.spool, self.header.total, 0)

    def discard(self) -> None:
        """Close and delete the spool file, if any."""
        if self.spool is not None:
            os.close(self.spool)
            self.spool = None
            if self.spool_path is not None:
                self.spool_path.unlink(missing_ok=True)


class Reassembler:
    """Turns frames (in any order, with duplicates) into complete, verified bodies.

    ``add`` returns a :class:`Message` when a body completes and verifies, else None.
    Limits: ``max_body`` per body; ``max_pending_bytes`` and ``max_pending_sets`` for all
    incomplete bodies together; ``pending_ttl`` seconds without a new chunk.

    With ``spool_dir``, an incomplete body of at least ``spool_threshold`` bytes keeps
    its chunks in a file there instead of in memory: a party receiving ten 80 MB
    uploads at once then holds one body in memory at a time, not ten. Spooled bytes
    count against ``max_pending_bytes`` like the others (it bounds disk use too).
    """

    def __init__(
        self,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_pending_sets: int = DEFAULT_MAX_PENDING_SETS,
        pending_ttl: float = DEFAULT_PENDING_TTL,
        remember: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        spool_dir: Path | None = None,
        spool_threshold: int = 8 << 20,
    ) -> None:
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.spool_threshold = spool_threshold
        if self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.spool_dir.glob("*.part"):  # left by a crash: re-sent anyway
                stale.unlink()
        self.max_body = max_body
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_sets = max_pending_sets
        self.pending_ttl = pending_ttl
        self._clock = clock
        self._pending: OrderedDict[tuple[str, bytes], _Pending] = OrderedDict()  # LRU order
        self._bytes_by_topic: dict[str, int] = {}
        self._pending_bytes = 0
        self._done: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._remember = remember
        self.dropped = 0  # sets and frames dropped, for tests and monitoring

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def pending_sets(self) -> int:
        return len(self._pending)

    def _drop(self, topic: str, reason: str) -> None:
        self.dropped += 1
        log.warning("dropped a message on %s: %s", topic, reason)

    def _forget(self, key: tuple[str, bytes]) -> _Pending:
        """Remove a pending set; the caller reads its body (if complete) and discards it."""
        entry = self._pending.pop(key)
        self._pending_bytes -= entry.size
        left = self._bytes_by_topic[entry.topic] - entry.size
        if left:
            self._bytes_by_topic[entry.topic] = left
        else:
            del self._bytes_by_topic[entry.topic]
        return entry

    def _mark_done(self, key: tuple[str, bytes]) -> None:
        self._done[key] = None
        while len(self._done) > self._remember:
            self._done.popitem(last=False)

    def _verified(
        self, topic: str, body: bytes, header: FrameHeader, retained: bool
    ) -> Message | None:
        if hashlib.sha256(body).digest() != header.digest:
            self._drop(topic, f"SHA-256 mismatch for a body of {header.total} bytes")
            return None
        return Message(topic, body, retained)

    def expire(self) -> None:
        """Drop incomplete bodies that saw no chunk for ``pending_ttl`` seconds."""
        now = self._clock()
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if now - entry.updated <= self.pending_ttl:
                break
            self._forget(key).discard()
            self._drop(
                entry.topic,
                f"incomplete body ({len(entry.present)}/{entry.header.count} chunks) "
                f"timed out after {now - entry.updated:.0f} s without a new chunk",
            )

    def _enforce_limits(self) -> None:
        while self._pending and (
            self._pending_bytes > self.max_pending_bytes
            or len(self._pending) > self.max_pending_sets
        ):
            # the topic (sender) holding the most loses its least recently updated set
            topic = max(self._bytes_by_topic, key=self._bytes_by_topic.__getitem__)
            key = next(k for k in self._pending if k[0] == topic)
            entry = self._forget(key)
            entry.discard()
            self._drop(
                topic,
                f"incomplete body ({len(entry.present)}/{entry.header.count} chunks, "
                f"{entry.size} bytes) evicted: incomplete bodies exceed "
                f"{self.max_pending_bytes} bytes or {self.max_pending_sets} sets",
            )

    def add(
        self, topic: str, payload: bytes | bytearray | memoryview, retained: bool = False
    ) -> Message | None:
        self.expire()
        if len(payload) == 0:
            return None  # a cleared retained message
        try:
            header, data = decode_frame(payload)
        except FrameError as exc:
            self._drop(topic, str(exc))
            return None
        if header.total > self.max_body:
            self._drop(topic, f"body of {header.total} bytes exceeds max_body {self.max_body}")
            return None
        key = (topic, header.message_id)
        if key in self._done:
            log.debug("duplicate chunk of a delivered body on %s", topic)
            return None
        if header.count == 1:
            self._mark_done(key)
            return self._verified(topic, bytes(data), header, retained)
        now = self._clock()
        entry = self._pending.get(key)
        if entry is None:
            entry = _Pending(topic, header, now, now)
            if self.spool_dir is not None and header.total >= self.spool_threshold:
                entry.spool_path = self.spool_dir / f"{header.message_id.hex()}.part"
                entry.spool = os.open(entry.spool_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self._pending[key] = entry
        else:
            first = entry.header
            if (first.count, first.chunk_size, first.total, first.digest) != (
                header.count,
                header.chunk_size,
                header.total,
                header.digest,
            ):
                self._forget(key).discard()
                self._drop(topic, "chunks of one message id disagree on count, size or digest")
                return None
            if header.index in entry.present:
                log.debug("duplicate chunk %d of a pending body on %s", header.index, topic)
                return None
            entry.updated = now
            self._pending.move_to_end(key)
        entry.store(header.index, data)
        entry.size += len(data)
        self._pending_bytes += len(data)
        self._bytes_by_topic[topic] = self._bytes_by_topic.get(topic, 0) + len(data)
        entry.advance_hash()
        if len(entry.present) == header.count:
            self._forget(key)
            self._mark_done(key)
            try:
                if entry.hasher.digest() != header.digest:
                    self._drop(topic, f"SHA-256 mismatch for a body of {header.total} bytes")
                    return None
                return Message(topic, entry.body(), False)
            finally:
                entry.discard()
        self._enforce_limits()
        return None


# --- connection -----------------------------------------------------------------------


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
    passes every record on to the ``smpc.net.transport.mqtt`` logger."""

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
        self.max_chunk = _check_chunk(max_chunk)
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
        paho_client = client._client
        paho_client.manual_ack_set(True)
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

        paho_client.on_socket_register_write = on_socket_register_write
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
        """Publish a small body as exactly one MQTT message (framed; may be retained).

        ValueError if it does not fit in one chunk: use :meth:`publish_body`.
        """
        view = _byte_view(payload)
        if len(view) > self.max_chunk:
            raise ValueError(
                f"payload of {len(view)} bytes does not fit in one message "
                f"(max_chunk {self.max_chunk}); use publish_body"
            )
        (frame,) = encode_frames(view, self.max_chunk)
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
        view = _byte_view(body)
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
        is taken here (see the module docstring). Raises ConnectionLost when the broker
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
