"""Reassembly on disk: large incomplete bodies live in spool files, not in memory."""

from __future__ import annotations

import random

from smpc.net.frames import encode_frames
from smpc.net.reassembly import Reassembler

KIB = 1024


def _frames(body: bytes, chunk: int = 64 * KIB) -> list[bytes]:
    return [bytes(f) for f in encode_frames(body, chunk)]


def test_interleaved_spooled_bodies_arrive_whole_and_leave_no_file(tmp_path):
    spool = tmp_path / "spool"
    r = Reassembler(spool_dir=spool, spool_threshold=100 * KIB)
    bodies = [random.Random(i).randbytes(300 * KIB + i) for i in range(3)]
    frames = [(i, f) for i, b in enumerate(bodies) for f in _frames(b)]
    random.Random(7).shuffle(frames)
    got = {}
    for i, frame in frames:
        message = r.add(f"t/{i}", frame)
        if message is not None:
            got[i] = message.body
        else:
            assert r.pending_sets >= 1
    assert got == dict(enumerate(bodies))
    assert list(spool.iterdir()) == []


def test_small_bodies_stay_in_memory_and_bad_sets_are_discarded(tmp_path):
    spool = tmp_path / "spool"
    r = Reassembler(spool_dir=spool, spool_threshold=1 << 20, max_pending_bytes=200 * KIB)
    small = random.Random(1).randbytes(150 * KIB)
    frames = _frames(small)
    for frame in frames[:-1]:
        assert r.add("a", frame) is None
    assert list(spool.iterdir()) == []  # below the threshold: in memory
    assert r.add("a", frames[-1]).body == small
    big = Reassembler(spool_dir=spool, spool_threshold=100 * KIB, max_pending_bytes=200 * KIB)
    for frame in _frames(random.Random(2).randbytes(400 * KIB))[:4]:
        big.add("b", frame)  # the fourth chunk exceeds the cap: the set is evicted
    assert big.dropped == 1 and big.pending_sets == 0
    assert list(spool.iterdir()) == []
