"""Reassembly: collecting received frames back into whole, verified bodies, within bounds."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smpc.net.frames import FrameError, FrameHeader, decode_frame

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MAX_PENDING_SETS",
    "DEFAULT_PENDING_TTL",
    "Message",
    "Reassembler",
]

log = logging.getLogger("smpc.transport")

DEFAULT_MAX_BODY = 4 << 30
DEFAULT_MAX_PENDING_BYTES = 1 << 30
DEFAULT_MAX_PENDING_SETS = 256
DEFAULT_PENDING_TTL = 600.0


@dataclass(frozen=True)
class Message:
    """A complete, integrity-checked body received on ``topic``."""

    topic: str
    body: bytes
    retained: bool = False


@dataclass(eq=False)
class _Pending:
    """An incomplete body: the chunks received so far, in memory or in a spool file."""

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

    Chunk sets are keyed by (topic, message id), so chunks of several bodies may
    interleave on one topic and chunks on different topics (different senders, by the
    ACL) never mix. Chunks are accepted in any order, duplicates are ignored (QoS 1
    redelivers), and a body is yielded only when all chunks are there and the SHA-256
    matches. Sets that do not verify (hash mismatch, inconsistent headers, a body over
    ``max_body``) are dropped with a warning on the ``smpc.transport`` logger. When the
    incomplete sets hold too much, the topic holding the most loses its stalest set, so
    one sender cannot push out the others. A zero-length payload (how MQTT clears a
    retained message) is ignored silently; any other payload that is not a valid frame
    is dropped with a warning. A body whose message id was delivered already (one of
    the last ``remember``) is not yielded again.

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
        left = self._bytes_by_topic.get(entry.topic, 0) - entry.size
        if left:
            self._bytes_by_topic[entry.topic] = left
        else:  # (a set whose first chunk could not be kept has no bytes counted)
            self._bytes_by_topic.pop(entry.topic, None)
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
        frame = self._decode(topic, payload)
        if frame is None:
            return None
        header, data = frame
        key = (topic, header.message_id)
        if key in self._done:
            log.debug("duplicate chunk of a delivered body on %s", topic)
            return None
        if header.count == 1:
            message = self._verified(topic, bytes(data), header, retained)
            if message is not None:  # a frame that does not verify must not mask the real one
                self._mark_done(key)
            return message
        try:
            entry = self._entry(key, header)
            if entry is None:
                return None
            self._store(entry, header.index, data)
        except OSError as exc:  # the spool's file system is full (or failing)
            if key in self._pending:
                self._forget(key).discard()
            self._mark_done(key)  # its other chunks are ignored; the sender re-sends it
            self._drop(
                topic,
                f"cannot spool a body of {header.total} bytes in {self.spool_dir}: "
                f"{exc.strerror or exc}; not received (the sender re-sends it)",
            )
            return None
        if len(entry.present) == header.count:
            return self._complete(key, entry)
        self._enforce_limits()
        return None

    def _decode(
        self, topic: str, payload: bytes | bytearray | memoryview
    ) -> tuple[FrameHeader, memoryview] | None:
        """Header and chunk of a frame; None (dropped) if invalid or over ``max_body``."""
        try:
            header, data = decode_frame(payload)
        except FrameError as exc:
            self._drop(topic, str(exc))
            return None
        if header.total > self.max_body:
            self._drop(topic, f"body of {header.total} bytes exceeds max_body {self.max_body}")
            return None
        return header, data

    def _entry(self, key: tuple[str, bytes], header: FrameHeader) -> _Pending | None:
        """The pending set a chunk of a multi-chunk body goes to, started on its first
        chunk; None for a duplicate chunk or one that disagrees with its set (dropped)."""
        topic = key[0]
        now = self._clock()
        entry = self._pending.get(key)
        if entry is None:
            entry = _Pending(topic, header, now, now)
            if self.spool_dir is not None and header.total >= self.spool_threshold:
                entry.spool_path = self.spool_dir / f"{header.message_id.hex()}.part"
                entry.spool = os.open(entry.spool_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self._pending[key] = entry
            return entry
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
        return entry

    def _store(self, entry: _Pending, index: int, data: memoryview) -> None:
        """Keep chunk ``index`` of ``entry``, count its bytes and hash what is in order."""
        entry.store(index, data)
        entry.size += len(data)
        self._pending_bytes += len(data)
        self._bytes_by_topic[entry.topic] = self._bytes_by_topic.get(entry.topic, 0) + len(data)
        entry.advance_hash()

    def _complete(self, key: tuple[str, bytes], entry: _Pending) -> Message | None:
        """The body of a set that has all its chunks, if its SHA-256 matches."""
        self._forget(key)
        try:
            if entry.hasher.digest() != entry.header.digest:
                self._drop(
                    entry.topic, f"SHA-256 mismatch for a body of {entry.header.total} bytes"
                )
                return None
            self._mark_done(key)
            return Message(entry.topic, entry.body(), False)
        finally:
            entry.discard()
