"""Transport: topics, frames, reassembly (no broker) and connections through a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smpc.net.connection import Connection
from smpc.net.errors import ConnectionLost, SubscriptionRefused
from smpc.net.frames import (
    FRAME_HEADER_SIZE,
    MAX_CHUNK,
    MIN_CHUNK,
    FrameError,
    decode_frame,
    encode_frames,
)
from smpc.net.reassembly import Message, Reassembler
from smpc.net.reconnect import run_with_reconnect
from smpc.net.topics import Topics
from tests.brokers import connect, federation_of, kit, mosquitto, requires_mosquitto

KIB = 1024
MIB = 1024 * 1024


# --- topics ---------------------------------------------------------------------------


def test_topic_layout() -> None:
    t = Topics("example")
    assert t.job("ana", "j1") == "smpc/example/jobs/ana/j1"
    assert t.jobs() == "smpc/example/jobs/+/+"
    assert t.jobs_of("ana") == "smpc/example/jobs/ana/+"
    assert t.job_anywhere("j1") == "smpc/example/jobs/+/j1"
    assert t.upload("oslo", "alpha") == "smpc/example/up/oslo/alpha"
    assert t.uploads_for("alpha") == "smpc/example/up/+/alpha"
    assert t.ack("oslo", "alpha") == "smpc/example/ack/oslo/alpha"
    assert t.acks_for("oslo") == "smpc/example/ack/oslo/+"
    assert t.result("ana", "j1", "alpha") == "smpc/example/result/ana/j1/alpha"
    assert t.results("ana", "j1") == "smpc/example/result/ana/j1/+"
    assert t.status("j1", "beta") == "smpc/example/status/j1/beta"
    assert t.statuses("j1") == "smpc/example/status/j1/+"


def test_topic_parse_round_trip() -> None:
    t = Topics("example")
    assert t.parse(t.job("ana", "job-7")) == ("job", {"analyst": "ana", "job": "job-7"})
    assert t.parse(t.upload("oslo", "alpha")) == ("upload", {"site": "oslo", "party": "alpha"})
    assert t.parse(t.ack("oslo", "alpha")) == ("ack", {"site": "oslo", "party": "alpha"})
    assert t.parse(t.result("ana", "j1", "beta")) == (
        "result",
        {"analyst": "ana", "job": "j1", "party": "beta"},
    )
    kind, fields = t.parse(t.status("j1", "beta"))
    assert (kind, fields) == ("status", {"job": "j1", "party": "beta"})


@pytest.mark.parametrize(
    "topic",
    [
        "smpc/other/jobs/ana/j1",  # another federation
        "smpc/example/jobs/j1",  # too short
        "smpc/example/jobs/ana/j1/extra",  # too long
        "smpc/example/up/oslo",  # too short
        "smpc/example/nope/a/b",  # unknown kind
        "smpc/example/jobs/ana/+",  # a filter, not a topic
        "smpc/example/up/#",
        "smpc/example/jobs/ana/J1",  # not a name
        "smpc/example/up//alpha",
        "other/example/jobs/ana/j1",
        "",
    ],
)
def test_topic_parse_rejects(topic: str) -> None:
    with pytest.raises(ValueError):
        Topics("example").parse(topic)


@pytest.mark.parametrize("name", ["", "A", "a/b", "+", "#", "a b", "-a", "é", "x" * 64])
def test_topic_names_are_validated(name: str) -> None:
    t = Topics("example")
    with pytest.raises(ValueError):
        t.job("ana", name)
    with pytest.raises(ValueError):
        t.job(name, "j1")
    with pytest.raises(ValueError):
        t.upload(name, "alpha")
    with pytest.raises(ValueError):
        t.uploads_for(name)
    with pytest.raises(ValueError):
        Topics(name)


# --- frames ---------------------------------------------------------------------------


def test_frame_layout() -> None:
    body = os.urandom(3 * MIN_CHUNK + 5)
    frames = list(encode_frames(body, MIN_CHUNK, message_id=b"m" * 16))
    assert FRAME_HEADER_SIZE == 76
    assert len(frames) == 4
    assert [len(f) - FRAME_HEADER_SIZE for f in frames] == [MIN_CHUNK] * 3 + [5]
    magic, version, flags, reserved, mid, index, count, size, total, digest = struct.unpack_from(
        "<4sBBH16sIIIQ32s", frames[3]
    )
    assert (magic, version, flags, reserved) == (b"SMPT", 1, 0, 0)
    assert (mid, index, count, size, total) == (b"m" * 16, 3, 4, MIN_CHUNK, len(body))
    assert digest == hashlib.sha256(body).digest()
    header, data = decode_frame(frames[3])
    assert (header.index, header.count, header.total) == (3, 4, len(body))
    assert bytes(data) == body[-5:]


def test_empty_and_small_bodies_are_one_frame() -> None:
    for body in (b"", b"x", os.urandom(MIN_CHUNK)):
        (frame,) = encode_frames(body, MIN_CHUNK)
        header, data = decode_frame(frame)
        assert (header.count, header.total, bytes(data)) == (1, len(body), body)


@pytest.mark.parametrize("max_chunk", [0, MIN_CHUNK - 1, 16 * MIB, 1.5])
def test_chunk_size_bounds(max_chunk) -> None:
    with pytest.raises(ValueError, match="max_chunk"):
        list(encode_frames(b"x", max_chunk))


def _frame(**fields) -> bytes:
    values = {
        "magic": b"SMPT",
        "version": 1,
        "flags": 0,
        "reserved": 0,
        "mid": b"i" * 16,
        "index": 0,
        "count": 1,
        "size": MIN_CHUNK,
        "total": 3,
        "digest": hashlib.sha256(b"abc").digest(),
    }
    data = fields.pop("data", b"abc")
    values.update(fields)
    return struct.pack("<4sBBH16sIIIQ32s", *values.values()) + data


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"short", "shorter than a frame header"),
        (_frame(magic=b"XXXX"), "not an smpc frame"),
        (_frame(version=2), "unsupported frame version 2"),
        (_frame(flags=1), "unknown frame flags"),
        (_frame(size=1024), "chunk size 1024 outside"),
        (_frame(count=2), "chunk count 2 inconsistent"),
        (_frame(index=1), "chunk index 1 out of range"),
        (_frame(data=b"abcd"), "carries 4 bytes, expected 3"),
        (_frame(total=MIN_CHUNK + 1, count=2, data=b"x"), "carries 1 bytes, expected 65536"),
    ],
)
def test_decode_rejects(payload: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode_frame(payload)
    assert decode_frame(_frame())[0].total == 3


# --- reassembly -----------------------------------------------------------------------


def _body(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _feed(r: Reassembler, topic: str, frames: list[bytes]) -> list[Message]:
    return [m for f in frames if (m := r.add(topic, f)) is not None]


def test_reassembly_in_any_order_with_duplicates() -> None:
    body = _body(10 * MIN_CHUNK + 123)
    frames = list(encode_frames(body, MIN_CHUNK))
    shuffled = frames + frames[:4]  # QoS 1 redeliveries
    random.Random(1).shuffle(shuffled)
    r = Reassembler()
    out = _feed(r, "t", shuffled)
    assert out == [Message("t", body, False)]
    assert r.pending_sets == 0 and r.pending_bytes == 0 and r.dropped == 0


def test_interleaved_bodies_and_topics_do_not_mix() -> None:
    a, b = _body(5 * MIN_CHUNK, 1), _body(3 * MIN_CHUNK + 1, 2)
    fa, fb = list(encode_frames(a, MIN_CHUNK)), list(encode_frames(b, MIN_CHUNK))
    r = Reassembler()
    got: list[Message] = []
    for x, y in zip(fa, [*fb, None], strict=True):
        got += _feed(r, "t", [x])
        got += _feed(r, "other", [x])  # same message id on another topic: its own set
        if y is not None:
            got += _feed(r, "t", [y])
    assert sorted((m.topic, m.body) for m in got) == sorted([("t", a), ("t", b), ("other", a)])
    assert r.pending_sets == 0


def test_a_delivered_body_is_not_delivered_again() -> None:
    frames = list(encode_frames(_body(2 * MIN_CHUNK), MIN_CHUNK))
    small = list(encode_frames(b"job", MIN_CHUNK))
    r = Reassembler()
    assert len(_feed(r, "t", frames + small)) == 2
    assert _feed(r, "t", frames + small + frames[:1]) == []
    assert r.pending_sets == 0  # a late duplicate does not start a new set


def test_corrupt_chunk_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    body = _body(3 * MIN_CHUNK)
    frames = list(encode_frames(body, MIN_CHUNK))
    bad = bytearray(frames[1])
    bad[FRAME_HEADER_SIZE + 10] ^= 1
    frames[1] = bytes(bad)
    r = Reassembler()
    with caplog.at_level(logging.WARNING, logger="smpc.transport"):
        assert _feed(r, "smpc/x/up/oslo/alpha", frames) == []
    assert r.dropped == 1 and r.pending_sets == 0
    assert "SHA-256 mismatch" in caplog.text and "smpc/x/up/oslo/alpha" in caplog.text
    # a single-frame body too
    (frame,) = encode_frames(b"hello", MIN_CHUNK)
    assert r.add("t", frame[:-1] + b"X") is None
    assert r.dropped == 2


def test_inconsistent_chunk_headers_drop_the_set(caplog: pytest.LogCaptureFixture) -> None:
    mid = b"s" * 16
    first = list(encode_frames(_body(3 * MIN_CHUNK, 1), MIN_CHUNK, message_id=mid))
    other = list(encode_frames(_body(4 * MIN_CHUNK, 2), MIN_CHUNK, message_id=mid))
    r = Reassembler()
    with caplog.at_level(logging.WARNING, logger="smpc.transport"):
        assert _feed(r, "t", [first[0], other[1]]) == []
    assert "disagree" in caplog.text
    assert r.pending_sets == 0 and r.dropped == 1


def test_invalid_and_empty_payloads(caplog: pytest.LogCaptureFixture) -> None:
    r = Reassembler()
    with caplog.at_level(logging.WARNING, logger="smpc.transport"):
        assert r.add("t", b"") is None  # a cleared retained message: silent
        assert caplog.text == ""
        assert r.add("t", b"not a frame at all" * 10) is None
    assert "not an smpc frame" in caplog.text and r.dropped == 1


def test_oversize_body_is_refused_before_buffering() -> None:
    r = Reassembler(max_body=4 * MIN_CHUNK)
    frames = list(encode_frames(_body(5 * MIN_CHUNK), MIN_CHUNK))
    assert _feed(r, "t", frames) == []
    assert r.pending_sets == 0 and r.dropped == len(frames)


def test_pending_bytes_cap_evicts_the_biggest_sender(caplog: pytest.LogCaptureFixture) -> None:
    r = Reassembler(max_pending_bytes=6 * MIN_CHUNK)
    honest = list(encode_frames(_body(3 * MIN_CHUNK, 1), MIN_CHUNK))
    flood = [list(encode_frames(_body(3 * MIN_CHUNK, 10 + i), MIN_CHUNK)) for i in range(4)]
    assert _feed(r, "honest", honest[:2]) == []
    with caplog.at_level(logging.WARNING, logger="smpc.transport"):
        for frames in flood:  # two chunks of each of four bodies, never completed
            assert _feed(r, "flood", frames[:2]) == []
    assert r.pending_bytes <= 6 * MIN_CHUNK
    assert "evicted" in caplog.text
    # the honest sender's set survived and completes
    assert [m.topic for m in _feed(r, "honest", honest[2:])] == ["honest"]


def test_pending_sets_cap() -> None:
    r = Reassembler(max_pending_sets=3)
    for i in range(10):
        _feed(r, "t", list(encode_frames(_body(2 * MIN_CHUNK, i), MIN_CHUNK))[:1])
    assert r.pending_sets == 3 and r.dropped == 7


def test_stale_sets_expire() -> None:
    now = [0.0]
    r = Reassembler(pending_ttl=10, clock=lambda: now[0])
    frames = list(encode_frames(_body(3 * MIN_CHUNK), MIN_CHUNK))
    _feed(r, "t", frames[:1])
    now[0] = 5
    _feed(r, "t", frames[1:2])  # a new chunk keeps it alive
    now[0] = 14
    r.expire()
    assert r.pending_sets == 1
    now[0] = 16
    assert _feed(r, "t", frames[2:]) == []  # expired before the last chunk came
    assert r.dropped == 1 and r.pending_sets == 1  # the last chunk starts a new set


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 5 * MIN_CHUNK), min_size=1, max_size=3),
    seed=st.integers(0, 2**32),
    duplicates=st.integers(0, 5),
)
def test_reassembly_property(sizes: list[int], seed: int, duplicates: int) -> None:
    rng = random.Random(seed)
    bodies = [rng.randbytes(n) for n in sizes]
    frames = [f for b in bodies for f in encode_frames(b, MIN_CHUNK)]
    frames += [rng.choice(frames) for _ in range(duplicates)]
    rng.shuffle(frames)
    r = Reassembler()
    got = _feed(r, "t", frames)
    assert sorted(m.body for m in got) == sorted(bodies)
    assert r.pending_sets == 0 and r.dropped == 0


# --- through Mosquitto ----------------------------------------------------------------

T = Topics("test")

SUBSCRIBER = textwrap.dedent(
    """
    import asyncio, hashlib, sys
    from smpc.pki.kit import load_kit
    from smpc.net.connection import Connection
    from smpc.net.topics import Topics

    async def main(port, kit_dir, count):
        kit = load_kit(kit_dir)
        async with Connection("127.0.0.1", port, kit.tls, client_id="alpha.sub",
                              persistent=False) as conn:
            await conn.subscribe(Topics("test").uploads_for("alpha"))
            print("ready", flush=True)
            async for message in conn.messages():
                print(message.topic, len(message.body),
                      hashlib.sha256(message.body).hexdigest(), flush=True)
                count -= 1
                if not count:
                    return

    asyncio.run(asyncio.wait_for(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])), 40))
    """
)


async def _collect(conn, timeout: float, count: int | None = None) -> list[Message]:
    """Messages arriving within ``timeout`` seconds (or until ``count`` arrived)."""
    out: list[Message] = []
    try:
        async with asyncio.timeout(timeout):
            async for message in conn.messages():
                out.append(message)
                if count is not None and len(out) >= count:
                    break
    except TimeoutError:
        pass
    return out


def _run(coro, timeout: float = 40):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@requires_mosquitto
@pytest.mark.timeout(60)
def test_multi_chunk_round_trip_between_processes(keys_dir: Path, tmp_path: Path) -> None:
    bodies = [_body(5 * MIB, 1), _body(10, 2)]
    with mosquitto(keys_dir, tmp_path / "broker") as broker:
        sub = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SUBSCRIBER,
                str(broker.port),
                str(kit(keys_dir, "alpha").path),
                str(len(bodies)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert sub.stdout is not None
            assert sub.stdout.readline().strip() == "ready"

            async def publish() -> None:
                async with connect(broker, keys_dir, "oslo", max_chunk=MIB) as conn:
                    for body in bodies:
                        await conn.publish_body(T.upload("oslo", "alpha"), body)

            _run(publish())
            out, _ = sub.communicate(timeout=40)
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
    assert sub.returncode == 0
    assert out.splitlines() == [
        f"{T.upload('oslo', 'alpha')} {len(b)} {hashlib.sha256(b).hexdigest()}" for b in bodies
    ]


@requires_mosquitto
@pytest.mark.timeout(60)
def test_persistent_session_receives_what_was_sent_while_away(
    keys_dir: Path, tmp_path: Path
) -> None:
    body = _body(3 * MIB)

    async def scenario(broker) -> list[Message]:
        async with connect(broker, keys_dir, "alpha") as conn:  # durable session "alpha"
            await conn.subscribe(T.uploads_for("alpha"))
        async with connect(broker, keys_dir, "oslo", max_chunk=MIB) as site:
            await site.publish_body(T.upload("oslo", "alpha"), body)
            await site.publish(T.upload("oslo", "alpha"), b"small")
        async with connect(broker, keys_dir, "alpha") as conn:  # back, no new subscribe
            return await _collect(conn, 10, count=2)

    with mosquitto(keys_dir, tmp_path / "broker") as broker:
        got = _run(scenario(broker))
    assert [m.body for m in got] == [body, b"small"]


@requires_mosquitto
@pytest.mark.timeout(60)
def test_messages_not_taken_are_redelivered(keys_dir: Path, tmp_path: Path) -> None:
    """A message is acknowledged to the broker only when messages() takes it."""

    async def scenario(broker) -> tuple[list[Message], list[Message]]:
        async with connect(broker, keys_dir, "alpha") as conn:
            await conn.subscribe(T.uploads_for("alpha"))
        async with connect(broker, keys_dir, "oslo") as site:
            for i in range(3):
                await site.publish(T.upload("oslo", "alpha"), b"m%d" % i)
        async with connect(broker, keys_dir, "alpha") as conn:
            first = await _collect(conn, 10, count=1)
            await asyncio.sleep(0.3)  # the others are in the client's queue, not taken
        async with connect(broker, keys_dir, "alpha") as conn:
            rest = await _collect(conn, 10, count=2)
        return first, rest

    with mosquitto(keys_dir, tmp_path / "broker") as broker:
        first, rest = _run(scenario(broker))
    assert [m.body for m in first] == [b"m0"]
    assert [m.body for m in rest] == [b"m1", b"m2"]


@requires_mosquitto
@pytest.mark.timeout(60)
def test_retained_job(keys_dir: Path, tmp_path: Path) -> None:
    """A retained job is one MQTT message, however much larger than ``max_chunk``, up to
    MAX_CHUNK (a PCA round's basis); beyond that publish refuses before sending."""
    large = _body(12 * MIB, 3)

    async def scenario(broker):
        async with connect(broker, keys_dir, "analyst") as analyst:
            await analyst.publish(T.job("analyst", "j1"), b'{"job": "j1"}', retain=True)
            await analyst.publish(T.job("analyst", "j3"), large, retain=True)
        async with connect(broker, keys_dir, "beta", client_id="beta.t", persistent=False) as p:
            await p.subscribe(T.jobs())
            seen = await _collect(p, 10, count=2)
        async with connect(broker, keys_dir, "analyst") as analyst:
            await analyst.clear_retained(T.job("analyst", "j1"))
            await analyst.clear_retained(T.job("analyst", "j3"))
            with pytest.raises(ValueError, match="use publish_body"):
                await analyst.publish(T.job("analyst", "j2"), bytes(MAX_CHUNK + 1), retain=True)
        async with connect(broker, keys_dir, "beta", client_id="beta.t", persistent=False) as p:
            await p.subscribe(T.jobs())
            after = await _collect(p, 1)
        return seen, after

    with mosquitto(keys_dir, tmp_path / "broker") as broker:
        seen, after = _run(scenario(broker))
    assert sorted((m.topic, m.body, m.retained) for m in seen) == [
        (T.job("analyst", "j1"), b'{"job": "j1"}', True),
        (T.job("analyst", "j3"), large, True),
    ]
    assert after == []


@requires_mosquitto
@pytest.mark.timeout(60)
def test_broker_going_away_raises_connection_lost(keys_dir: Path, tmp_path: Path) -> None:
    with mosquitto(keys_dir, tmp_path / "broker") as broker:

        async def scenario() -> None:
            async with connect(broker, keys_dir, "alpha", client_id="alpha.lost") as conn:
                await conn.subscribe(T.uploads_for("alpha"))
                loop = asyncio.get_running_loop()
                loop.call_later(0.3, broker.stop)
                with pytest.raises(ConnectionLost, match="lost the connection"):
                    async for _ in conn.messages():
                        pass
                assert not conn.connected
                with pytest.raises(ConnectionLost):
                    await conn.publish(T.ack("oslo", "alpha"), b"x")

        _run(scenario(), 20)


@requires_mosquitto
@pytest.mark.timeout(60)
def test_run_with_reconnect_survives_a_broker_restart(keys_dir: Path, tmp_path: Path) -> None:
    """A daemon keeps its session across a broker restart (Mosquitto persistence)."""
    workdir = tmp_path / "broker"
    received: list[bytes] = []
    connections = 0

    async def daemon(conn) -> None:
        nonlocal connections
        connections += 1
        await conn.subscribe(T.uploads_for("alpha"))
        async for message in conn.messages():
            received.append(message.body)
            if len(received) == 2:
                return

    async def publish(body: bytes) -> None:
        async with connect(broker, keys_dir, "oslo", client_id="oslo.pub") as site:
            await site.publish(T.upload("oslo", "alpha"), body)

    async def scenario() -> None:
        task = asyncio.create_task(
            run_with_reconnect(
                lambda: connect(broker, keys_dir, "alpha", client_id="alpha.daemon"),
                daemon,
                min_delay=0.2,
                max_delay=0.5,
            )
        )
        await asyncio.sleep(0.5)
        await publish(b"before")
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(0.5)  # the daemon retries meanwhile
        await asyncio.to_thread(broker.start)
        await publish(b"after")
        await asyncio.wait_for(task, 20)

    with mosquitto(keys_dir, workdir) as broker:
        _run(scenario())
    assert received == [b"before", b"after"]
    assert connections >= 2


@requires_mosquitto
@pytest.mark.timeout(60)
def test_a_site_cannot_publish_to_another_sites_topic(keys_dir: Path, tmp_path: Path) -> None:
    async def scenario(broker) -> list[Message]:
        async with connect(broker, keys_dir, "alpha", client_id="alpha.acl") as party:
            await party.subscribe(T.uploads_for("alpha"))
            async with connect(broker, keys_dir, "oslo", client_id="oslo.acl") as site:
                # all silently dropped by the broker (MQTT 3.1.1 has no error for it)
                await site.publish(T.upload("bergen", "alpha"), b"forged")
                await site.publish(T.ack("oslo", "alpha"), b"forged ack")
                await site.publish(T.job("analyst", "j1"), b"forged job")
                await site.publish_body(T.upload("bergen", "alpha"), _body(2 * MIB))
                await site.publish(T.upload("oslo", "alpha"), b"control")  # still connected
            return await _collect(party, 1.5)

    with mosquitto(keys_dir, tmp_path / "broker") as broker:
        got = _run(scenario(broker))
    assert [(m.topic, m.body) for m in got] == [(T.upload("oslo", "alpha"), b"control")]


@requires_mosquitto
@pytest.mark.timeout(60)
def test_a_party_cannot_read_another_partys_uploads(keys_dir: Path, tmp_path: Path) -> None:
    async def scenario(broker) -> tuple[list[Message], list[Message]]:
        async with (
            connect(broker, keys_dir, "alpha", client_id="alpha.r") as alpha,
            connect(broker, keys_dir, "beta", client_id="beta.r") as beta,
        ):
            await alpha.subscribe(T.uploads_for("alpha"))
            for filt in (T.uploads_for("alpha"), T.upload("oslo", "alpha"), "smpc/test/#", "#"):
                # Mosquitto accepts any subscription and checks every delivery against the
                # ACL; the embedded broker refuses filters that cannot match a readable topic
                with contextlib.suppress(SubscriptionRefused):
                    await beta.subscribe(filt)
            async with connect(broker, keys_dir, "oslo", client_id="oslo.r") as site:
                await site.publish(T.upload("oslo", "alpha"), b"for alpha only")
            return await _collect(beta, 1.5), await _collect(alpha, 5, count=1)

    with mosquitto(keys_dir, tmp_path / "broker") as broker:
        beta_got, alpha_got = _run(scenario(broker))
    assert beta_got == []
    assert [m.body for m in alpha_got] == [b"for alpha only"]


@requires_mosquitto
@pytest.mark.timeout(60)
def test_from_kit_uses_the_federation_broker(keys_dir: Path, tmp_path: Path) -> None:
    federation = federation_of(keys_dir)
    daemon = Connection.from_kit(kit(keys_dir, "gamma"), federation)
    oneshot = Connection.from_kit(kit(keys_dir, "gamma"), federation, suffix="cli", max_chunk=MIB)
    assert (daemon.client_id, daemon.persistent) == ("gamma", True)
    assert (oneshot.client_id, oneshot.persistent, oneshot.max_chunk) == ("gamma.cli", False, MIB)
    assert (daemon.host, daemon.port) == (federation.broker.host, federation.broker.port)

    async def scenario() -> None:
        async with daemon, oneshot:  # both at once: different client ids
            await oneshot.publish(T.status("j1", "gamma"), b"ok")

    with mosquitto(keys_dir, tmp_path / "broker", at_federation_port=True):
        _run(scenario())


def test_client_ids_are_validated() -> None:
    for bad in ("", "Alpha", "alpha/x", "alpha.", "alpha.a.b", "+", "alpha.x y"):
        with pytest.raises(ValueError, match="client id"):
            Connection("127.0.0.1", 1, None, client_id=bad)
    with pytest.raises(ValueError, match="max_chunk"):
        Connection("127.0.0.1", 1, None, client_id="alpha", max_chunk=1000)
