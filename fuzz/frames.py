"""Coverage-guided fuzzing of frame decoding and reassembly (atheris).

    python fuzz/frames.py -atheris_runs=100000     # or -max_total_time=60

An input is a sequence of MQTT payloads, each ``u8 control | u16 length | payload``:
bit 0 of ``control`` picks one of two topics, bit 1 first moves the reassembler's clock
past its ``pending_ttl`` (so incomplete sets expire). Every payload goes to
``decode_frame`` (which may raise only ``FrameError``) and to one ``Reassembler`` with
small bounds (4 KiB pending, 4 sets, 16 KiB bodies, 8 remembered ids), which must never
raise and must stay within its bounds. Frames are not authenticated, so what a body may
be is: the chunks received for one (topic, message id), whose SHA-256 and length are
the ones its frames declare; the oracle checks exactly that, and that an id is
delivered at most once among the last ``remember``.

The harness lowers the smallest chunk size to 64 bytes (``smpc.net.frames.MIN_CHUNK``),
so sets of several chunks fit in small inputs; nothing else in the code changes.
Seeds: the frames of an envelope, a signed ack, an empty body and a 5-chunk body,
in order, shuffled with duplicates, and interleaved on two topics.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["smpc", "fuzz.common"]):
    from fuzz import common
    from smpc.net import frames
    from smpc.net.frames import FrameError, decode_frame, encode_frames
    from smpc.net.reassembly import Reassembler

frames.MIN_CHUNK = 64
logging.getLogger("smpc.transport").addHandler(logging.NullHandler())  # drops are expected
logging.getLogger("smpc.transport").propagate = False
RECORD = struct.Struct("<BH")
TOPICS = ("smpc/fuzz/up/oslo/alpha", "smpc/fuzz/up/bergen/alpha")
TTL = 10.0
MAX_PENDING = 4096


def _record(payload: bytes, control: int = 0) -> bytes:
    return RECORD.pack(control, len(payload)) + payload


def seeds() -> dict[str, bytes]:
    bodies = [common.envelopes(large=False)[0].data, common.messages()["ack"], b"", bytes(300)]
    sets = [list(encode_frames(b, 64, message_id=bytes([i]) * 16)) for i, b in enumerate(bodies)]
    out = {f"set-{i}": b"".join(_record(f) for f in s) for i, s in enumerate(sets)}
    five = sets[3]
    out["shuffled"] = b"".join(_record(f) for f in [five[3], five[0], five[3], *five[1:]])
    ack = sets[1]  # its frames and the five chunks interleaved, on alternating topics
    interleaved = [f for pair in zip(five, ack[:5], strict=True) for f in pair]
    mixed = [_record(f, i % 2) for i, f in enumerate(interleaved)]
    mixed += [_record(f, 1) for f in ack[5:]]
    out["two-topics"] = b"".join(mixed)
    out["expired"] = b"".join(_record(f, 2 * (i == 2)) for i, f in enumerate(five))
    return out


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@atheris.instrument_func
def TestOneInput(data: bytes) -> None:
    clock = Clock()
    r = Reassembler(
        max_body=16 * 1024,
        max_pending_bytes=MAX_PENDING,
        max_pending_sets=4,
        pending_ttl=TTL,
        remember=8,
        clock=clock,
    )
    declared: dict[tuple[str, bytes], set[tuple[int, bytes]]] = {}
    delivered: list[tuple[str, bytes]] = []
    pos = 0
    while pos + RECORD.size <= len(data):
        control, n = RECORD.unpack_from(data, pos)
        payload = data[pos + RECORD.size : pos + RECORD.size + n]
        pos += RECORD.size + n
        topic = TOPICS[control & 1]
        if control & 2:
            clock.now += TTL + 1
        try:
            header, chunk = decode_frame(payload)
        except FrameError:
            header = None
        else:
            assert len(chunk) == header.chunk_length() and header.index < header.count
            key = (topic, header.message_id)
            declared.setdefault(key, set()).add((header.total, header.digest))
        message = r.add(topic, payload)
        assert r.pending_bytes <= MAX_PENDING and r.pending_sets <= 4, "over the bounds"
        if message is None:
            continue
        assert header is not None, "a body from a payload that is not a frame"
        assert message.topic == topic
        key = (topic, header.message_id)
        body = message.body
        assert (len(body), hashlib.sha256(body).digest()) in declared[key], "unverified body"
        assert key not in delivered[-8:], "one message id delivered twice"
        delivered.append(key)


if __name__ == "__main__":
    from fuzz.harness import main

    main("frames", TestOneInput, seeds())
