"""Framing: how one body is cut into MQTT messages of at most one chunk each, and read back."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CHUNK",
    "FRAME_HEADER_SIZE",
    "MAX_CHUNK",
    "MIN_CHUNK",
    "FrameError",
    "FrameHeader",
    "byte_view",
    "check_chunk",
    "decode_frame",
    "encode_frames",
]

MIN_CHUNK = 64 * 1024
MAX_CHUNK = 15 * 1024 * 1024  # the Mosquitto config allows 16 MiB packets
DEFAULT_CHUNK = 1 << 20

FRAME_MAGIC = b"SMPT"
FRAME_VERSION = 1
_FRAME = struct.Struct("<4sBBH16sIIIQ32s")
FRAME_HEADER_SIZE = _FRAME.size  # 76


class FrameError(ValueError):
    """A payload that is not a valid frame; the message is the reason."""


@dataclass(frozen=True)
class FrameHeader:
    """The 76-byte header that starts every MQTT message smpc publishes.

    A body larger than the connection's ``max_chunk`` travels as several MQTT messages
    (frames) that the receiver reassembles (:mod:`smpc.net.reassembly`); a small one is
    a single frame. Frame header, version 1, integers little-endian:

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
    """

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


def check_chunk(max_chunk: int) -> int:
    """``max_chunk`` if it is a valid chunk size, else ValueError."""
    if not isinstance(max_chunk, int) or not MIN_CHUNK <= max_chunk <= MAX_CHUNK:
        raise ValueError(
            f"max_chunk must be between {MIN_CHUNK} (64 KiB) and {MAX_CHUNK} bytes, "
            f"got {max_chunk!r}"
        )
    return max_chunk


def _chunk_count(total: int, chunk_size: int) -> int:
    return max(1, -(-total // chunk_size))


def byte_view(body: bytes | bytearray | memoryview) -> memoryview:
    """A flat byte view of ``body`` (no copy)."""
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
    check_chunk(max_chunk)
    view = byte_view(body)
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
    view = byte_view(payload)
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
