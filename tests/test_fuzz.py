"""Mutation fuzzing of every parser that reads bytes from the network, and bounded memory.

Valid envelopes, frame sets and signed messages come from the real writers and keys
(``fuzz/common.py``); hypothesis mutates them (bit flips, truncation, extension, byte
insertion and deletion, splicing two messages, fields re-packed or re-serialised with
other values, headers re-encrypted by the recipient, messages re-signed by someone else).
What each parser may accept, precisely (the oracles in ``fuzz/common.py``):

* share envelope (``open_share``: ``open_envelope`` and the body's field elements):
  every byte is authenticated, so only a byte-identical valid envelope is accepted;
  any refusal is an ``EnvelopeError``.
* frames (``decode_frame``, ``Reassembler``): the frame header is not authenticated
  (message id, and the chunk size of a one-chunk body, may change), so a delivered body
  must be byte-identical to a body that was framed; the reassembler never raises, stays
  within its bounds, and still delivers a body sent after the hostile frames.
* signed messages (``verify_job``/``ack``/``status``/``result``, ``open_result``): the
  signature covers the canonical JSON, so bytes may differ (whitespace, key order) but
  an accepted message carries exactly a valid message's signer and canonical payload;
  any refusal is a ``MessageError``.

``tests/test_fuzz_atheris.py`` runs the coverage-guided harnesses of ``fuzz/``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import struct
import tracemalloc
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import common as c
from smpc.net.frames import FRAME_HEADER_SIZE, MAX_CHUNK, MIN_CHUNK, encode_frames
from smpc.net.reassembly import Reassembler
from smpc.wire.crypto import HEADER_NONCE, derive_keys, raw_key
from smpc.wire.envelope_errors import (
    EnvelopeError,
    TruncatedEnvelope,
    WrongSigner,
)
from smpc.wire.layout import FIXED, FIXED_SIZE, parse_prefix
from smpc.wire.messages import MessageError, decode_model, sign, verify_job

FUZZ = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

ENVELOPES = c.envelopes()
ENVELOPE_BYTES = [e.data for e in ENVELOPES]
SMALL = [e for e in ENVELOPES if len(e.data) < 4096]

# --- byte-level mutations ----------------------------------------------------------------

# positions: mostly in the first 256 bytes (where the structure is), some anywhere
_pos = st.one_of(st.integers(0, 255), st.integers(0, 1 << 24))
_blob = st.binary(min_size=1, max_size=64)

Mutation = tuple[Any, ...]

MUTATION: st.SearchStrategy[Mutation] = st.one_of(
    st.tuples(st.just("flip"), _pos, st.integers(0, 7)),
    st.tuples(st.just("set"), _pos, st.integers(0, 255)),
    st.tuples(st.just("truncate"), _pos),
    st.tuples(st.just("cut-end"), st.integers(1, 64)),
    st.tuples(st.just("extend"), _blob),
    st.tuples(st.just("insert"), _pos, _blob),
    st.tuples(st.just("delete"), _pos, st.integers(1, 64)),
    st.tuples(st.just("overwrite"), _pos, _blob),
    st.tuples(st.just("splice"), st.integers(0, 63), _pos, _pos),
)


def mutate(data: bytes, mutation: Mutation, others: list[bytes]) -> bytes:
    """``data`` with one mutation applied (``others``: what a splice takes its tail from)."""
    kind, *args = mutation
    n = max(len(data), 1)
    b = bytearray(data)
    if kind == "flip":
        if data:
            b[args[0] % n] ^= 1 << args[1]
    elif kind == "set":
        if data:
            b[args[0] % n] = args[1]
    elif kind == "truncate":
        del b[args[0] % n :]
    elif kind == "cut-end":
        del b[-args[0] :]
    elif kind == "extend":
        b += args[0]
    elif kind == "insert":
        b[args[0] % n : args[0] % n] = args[1]
    elif kind == "delete":
        del b[args[0] % n : args[0] % n + args[1]]
    elif kind == "overwrite":
        p = args[0] % n
        b[p : p + len(args[1])] = args[1]
    elif kind == "splice":
        other = others[args[0] % len(others)]
        b = b[: args[1] % n] + other[args[2] % max(len(other), 1) :]
    return bytes(b)


def mutations(data: bytes, sequence: list[Mutation], others: list[bytes]) -> bytes:
    for m in sequence:
        data = mutate(data, m, others)
    return data


MUTATIONS = st.lists(MUTATION, min_size=1, max_size=3)


# --- share envelopes ---------------------------------------------------------------------


def test_valid_envelopes_are_accepted() -> None:
    """The oracle's positive side: every valid envelope opens (else nothing below means much)."""
    for e in ENVELOPES:
        assert c.check_envelope(e.data, e.party, ENVELOPE_BYTES)
    assert len({parse_prefix(memoryview(e.data)).route.chunks for e in ENVELOPES}) == 2


@FUZZ
@given(which=st.integers(0, len(ENVELOPES) - 1), sequence=MUTATIONS)
def test_mutated_envelopes_are_refused(which: int, sequence: list[Mutation]) -> None:
    e = ENVELOPES[which]
    data = mutations(e.data, sequence, ENVELOPE_BYTES)
    accepted = c.check_envelope(data, e.party, ENVELOPE_BYTES)  # accepted: a valid one
    assert accepted or data != e.data


_ROUTING_FIELDS = (
    "party",
    "chunk_size",
    "body_len",
    "header_len",
    "job_len",
    "input_len",
    "site_len",
)
_FIELD_INDEX = {
    "party": 2,
    "chunk_size": 6,
    "body_len": 7,
    "header_len": 8,
    "job_len": 9,
    "input_len": 10,
    "site_len": 11,
}
_FIELD_BITS = {
    "party": 16,
    "chunk_size": 32,
    "body_len": 64,
    "header_len": 32,
    "job_len": 16,
    "input_len": 16,
    "site_len": 16,
}


def repack(data: bytes, name: str, value: int) -> bytes:
    fields = list(FIXED.unpack_from(data))
    fields[_FIELD_INDEX[name]] = value % (1 << _FIELD_BITS[name])
    return FIXED.pack(*fields) + data[FIXED_SIZE:]


_FIELD_VALUE = st.one_of(
    st.integers(0, 3),
    st.sampled_from([1 << 16, 1 << 20, 1 << 30, (1 << 30) + 1, 1 << 40, (1 << 64) - 1]),
    st.integers(0, (1 << 64) - 1),
)


@FUZZ
@given(
    which=st.integers(0, len(ENVELOPES) - 1),
    changes=st.lists(
        st.tuples(st.sampled_from(_ROUTING_FIELDS), _FIELD_VALUE), min_size=1, max_size=3
    ),
)
def test_repacked_routing_fields_are_refused(which: int, changes: list[tuple[str, int]]) -> None:
    """The routing part re-serialised with other lengths, sizes or party: never accepted."""
    e = ENVELOPES[which]
    data = e.data
    for name, value in changes:
        data = repack(data, name, value)
    assert c.check_envelope(data, e.party, ENVELOPE_BYTES) == (data == e.data)


def _header_keys(data: bytes, party: int) -> tuple[bytes, bytes]:
    """What the recipient can derive: the header key, and the routing hash (its AAD)."""
    pre = parse_prefix(memoryview(data))
    recipient = c.keys().party(party)
    shared = recipient.exchange(X25519PublicKey.from_public_bytes(pre.ephemeral))
    header_key, _ = derive_keys(shared, pre.ephemeral, raw_key(recipient.public_key()))
    return header_key, hashlib.sha256(data[: pre.end]).digest()


_JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.text(max_size=8),
    st.floats(allow_nan=False, allow_infinity=False),
)
_JSON = st.recursive(
    _JSON_SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@FUZZ
@given(
    which=st.sampled_from(SMALL),
    key=st.sampled_from(sorted(json.loads(c.header_plain(b"")))),
    value=_JSON,
)
def test_header_reencrypted_by_the_recipient_is_refused(
    which: c.Envelope, key: str, value: Any
) -> None:
    """The recipient knows the header key, so it can change the header and re-encrypt it
    validly; the site's signature (over the encrypted header) still refuses it."""
    data = which.data
    pre = parse_prefix(memoryview(data))
    header_key, routing = _header_keys(data, which.party)
    p, hl = pre.end, pre.header_len
    aead = ChaCha20Poly1305(header_key)
    doc = json.loads(aead.decrypt(HEADER_NONCE, data[p : p + hl], routing))
    if doc[key] == value:
        return
    doc[key] = value
    plain = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    forged = data[:p] + aead.encrypt(HEADER_NONCE, plain, routing) + data[p + hl :]
    if len(plain) + 16 != hl:  # the header length is in the routing part: re-pack it too
        forged = repack(forged, "header_len", len(plain) + 16)
    with pytest.raises(EnvelopeError):
        c.open_share_as(forged, which.party)


def test_envelope_resigned_by_another_site_is_refused() -> None:
    body = np.arange(3, dtype="<u8").tobytes()
    forged = c.seal_raw(c.header_plain(body), body, site="bergen")  # names oslo, signs bergen
    with pytest.raises(WrongSigner):
        c.open_share_as(forged, 1)


def test_hostile_but_signed_headers_are_refused_cleanly() -> None:
    """A signing site's own header, with wrong types or values: one EnvelopeError each."""
    body = np.arange(4, dtype="<u8").tobytes()
    cases: list[bytes] = [
        c.header_plain(body, **{k: v})
        for k, v in [
            ("shape", [2**40]),
            ("shape", [-1]),
            ("shape", [2] * 40),
            ("dtype", "<u8*99999"),
            ("modulus", "9" * 5000),
            ("modulus", "1"),
            ("party", True),
            ("t", 5),
            ("n", 0),
            ("digest", "AB" * 32),
            ("meta", {"x": [1]}),
            ("job", "other-job"),
            ("seed", 1),
            ("meta", {"upload": "u-oslo", "x\ud800": "y"}),  # lone surrogates: not text
            ("meta", {"upload": "\udfff"}),
        ]
    ]
    cases += [
        b"{" * 100_000,
        b"\xff\xfe",
        b"[]",
        b"{}",
        c.header_plain(body)[:-1] + b',"x":1}',
        c.header_plain(body).replace(b'"t":1', b'"t":1,"t":1'),
    ]
    for plain in cases:
        with pytest.raises(EnvelopeError):
            c.open_share_as(c.seal_raw(plain, body), 1)


# --- memory: huge declared sizes are refused before anything is allocated ---------------


def peak_traced(f: Callable[[], object]) -> int:
    """Peak bytes traced by tracemalloc while ``f`` runs (what it allocates)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        f()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_terabyte_envelope_is_refused_before_allocation() -> None:
    """A routing part that declares a terabyte body, plain and validly signed by a site."""
    e = SMALL[0]
    declared = [repack(e.data, "body_len", 1 << 40)]
    body = b"\0" * 64
    tera = c.header_plain(body, shape=[1 << 37])  # 2^37 elements of 8 bytes: 1 TiB
    declared.append(c.seal_raw(tera, body, body_len=1 << 40))

    for data in declared:

        def refuse(data: bytes = data) -> None:
            with pytest.raises(TruncatedEnvelope, match="1099511627776 body bytes"):
                c.open_share_as(data, e.party)

        assert peak_traced(refuse) < 256 * 1024


def test_terabyte_frames_are_refused_or_held_within_bounds() -> None:
    tera = 1 << 40
    chunk = b"\0" * MIN_CHUNK
    header = struct.Struct("<4sBBH16sIIIQ32s")

    def frame(index: int, count: int, chunk_size: int, data: bytes) -> bytes:
        return (
            header.pack(b"SMPT", 1, 0, 0, b"m" * 16, index, count, chunk_size, tera, bytes(32))
            + data
        )

    payloads = [
        frame(0, tera // MIN_CHUNK, MIN_CHUNK, chunk),  # consistent: refused by max_body
        frame(0, 1, MAX_CHUNK, chunk),  # inconsistent count
        frame(0, -(-tera // MAX_CHUNK), MAX_CHUNK, chunk),  # chunk shorter than declared
    ]
    r = Reassembler()
    peak = peak_traced(lambda: [r.add("smpc/fuzz/up/oslo/alpha", p) for p in payloads])
    assert r.dropped == 3 and r.pending_sets == 0 and peak < 256 * 1024
    # A receiver that allows such a body keeps only what arrived, nothing declared.
    big = Reassembler(max_body=tera)
    peak = peak_traced(lambda: big.add("smpc/fuzz/up/oslo/alpha", payloads[0]))
    assert big.pending_sets == 1 and big.pending_bytes == MIN_CHUNK and peak < 256 * 1024


def _npz(shape: tuple[int, ...], data: bytes = b"\0" * 64) -> str:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        npy = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            npy, {"descr": "<f8", "fortran_order": False, "shape": shape}
        )
        z.writestr("w.npy", npy.getvalue() + data)
    return base64.b64encode(out.getvalue()).decode()


def test_model_declaring_huge_arrays_is_refused_before_allocation() -> None:
    """A job's model (.npz) whose array header declares 1 GiB or 8 TiB in 64 bytes."""
    for shape in [(1 << 27,), (1 << 40,), (1 << 20, 1 << 20)]:

        def refuse(shape: tuple[int, ...] = shape) -> None:
            with pytest.raises(MessageError, match="needs"):
                decode_model(_npz(shape))

        assert peak_traced(refuse) < 1 << 20
    with pytest.raises(MessageError, match=r"not read here|magic"):
        decode_model(base64.b64encode(_zip_of(b"not an array")).decode())
    arrays = decode_model(json.loads(c.messages()["job"])["payload"]["payload"]["model"])
    assert arrays["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def _zip_of(member: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("x.npy", member)
    return out.getvalue()


# --- frames ------------------------------------------------------------------------------

BODIES = c.frame_bodies()
FRAME_SETS = c.frame_sets()
ALL_FRAMES = [f for s in FRAME_SETS for f in s]

_FRAME_FIELDS = {"index": 5, "count": 6, "chunk_size": 7, "total": 8}
_FRAME = struct.Struct("<4sBBH16sIIIQ32s")

FRAME_MUTATION = st.one_of(
    st.tuples(st.just("bytes"), st.integers(0, 15), MUTATION),
    st.tuples(
        st.just("field"), st.integers(0, 15), st.sampled_from(sorted(_FRAME_FIELDS)), _FIELD_VALUE
    ),
    st.tuples(st.just("drop"), st.integers(0, 15)),
    st.tuples(st.just("duplicate"), st.integers(0, 15)),
    st.tuples(st.just("swap"), st.integers(0, 15), st.integers(0, 15)),
    st.tuples(st.just("foreign"), st.integers(0, len(ALL_FRAMES) - 1), st.integers(0, 15)),
)


def mutate_frames(frames: list[bytes], mutation: Mutation) -> list[bytes]:
    kind, *args = mutation
    out = list(frames)
    i = args[0] % len(out) if out else 0
    if not out:
        return out
    if kind == "bytes":
        out[i] = mutate(out[i], args[1], ALL_FRAMES)
    elif kind == "field" and len(out[i]) >= FRAME_HEADER_SIZE:
        fields = list(_FRAME.unpack_from(out[i]))
        bits = 64 if args[1] == "total" else 32
        fields[_FRAME_FIELDS[args[1]]] = args[2] % (1 << bits)
        out[i] = _FRAME.pack(*fields) + out[i][FRAME_HEADER_SIZE:]
    elif kind == "drop":
        del out[i]
    elif kind == "duplicate":
        out.insert(i, out[i])
    elif kind == "swap":
        j = args[1] % len(out)
        out[i], out[j] = out[j], out[i]
    elif kind == "foreign":  # a frame of another body, at position args[1]
        out.insert(args[1] % (len(out) + 1), ALL_FRAMES[args[0]])
    return out


@FUZZ
@given(
    which=st.integers(0, len(FRAME_SETS) - 1),
    sequence=st.lists(FRAME_MUTATION, min_size=1, max_size=4),
)
def test_mutated_frames_deliver_only_framed_bodies(which: int, sequence: list[Mutation]) -> None:
    frames = FRAME_SETS[which]
    for m in sequence:
        frames = mutate_frames(frames, m)
    check = c.FrameCheck(frozenset(BODIES))
    for f in frames:
        check.add(f)
    # After the hostile frames, the sender's retry (a new message id) still arrives.
    for f in encode_frames(BODIES[which], MIN_CHUNK, message_id=b"retry-".ljust(16, b"r")):
        check.add(f)
    assert check.delivered[-1] == BODIES[which]


def test_a_bad_single_frame_does_not_mask_the_real_one() -> None:
    """A corrupted copy of a one-frame body arriving first (same message id): the real
    frame is still delivered (it used to be dropped as a duplicate of the bad one)."""
    frame = FRAME_SETS[1][0]
    bad = frame[:-1] + bytes([frame[-1] ^ 1])
    check = c.FrameCheck(frozenset(BODIES))
    check.add(bad)
    check.add(frame)
    check.add(frame)  # a QoS 1 redelivery of the delivered body: not delivered again
    assert check.delivered == [BODIES[1]]


def test_a_bad_chunk_set_does_not_mask_its_retransmission() -> None:
    """A multi-chunk set that fails its SHA-256 is dropped without marking its id done."""
    frames = FRAME_SETS[3]
    bad = [*frames[:-1], frames[-1][:-1] + bytes([frames[-1][-1] ^ 1])]
    check = c.FrameCheck(frozenset(BODIES))
    for f in [*bad, *frames]:
        check.add(f)
    assert check.delivered == [BODIES[3]] and check.reassembler.dropped == 1


# --- signed control messages -------------------------------------------------------------

MESSAGES = c.messages()
MESSAGE_BYTES = list(MESSAGES.values())


def test_valid_messages_are_accepted_in_any_formatting() -> None:
    for name, data in MESSAGES.items():
        assert c.check_message(data) == [c.kind_of(name)]
        doc = json.loads(data)
        for text in (json.dumps(doc, indent=2), json.dumps(dict(reversed(doc.items())))):
            assert c.check_message(text.encode()) == [c.kind_of(name)]
    for data in c.result_envelopes():
        assert c.check_result_envelope(data, c.result_envelopes())


@FUZZ
@given(which=st.sampled_from(sorted(MESSAGES)), sequence=MUTATIONS)
def test_mutated_messages_are_refused(which: str, sequence: list[Mutation]) -> None:
    data = mutations(MESSAGES[which], sequence, MESSAGE_BYTES)
    accepted = c.check_message(data)  # accepted: exactly a valid message's content
    assert len(accepted) <= 1 and (accepted or data != MESSAGES[which])


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any, how: str) -> Any:
    if not path:
        return value
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if how == "delete":
        del parent[last]
    elif how == "add" and isinstance(parent, dict):
        parent[f"{last}_x"] = value
    else:
        parent[last] = value
    return doc


@FUZZ
@given(
    which=st.sampled_from(sorted(MESSAGES)),
    pick=st.integers(0, 1 << 16),
    value=_JSON,
    how=st.sampled_from(["replace", "delete", "add"]),
    resign=st.sampled_from([None, *sorted(c.keys().signing)]),
    indent=st.sampled_from([None, 1]),
)
def test_reserialised_messages_with_other_values_are_refused(
    which: str, pick: int, value: Any, how: str, resign: str | None, indent: int | None
) -> None:
    """A field changed (or removed, or one added) and the JSON written again, optionally
    re-signed with another participant's key under the original signer's name."""
    doc = json.loads(MESSAGES[which])
    paths = _paths(doc)
    path = paths[pick % len(paths)]
    if how == "delete" and not path:
        return
    doc = _set(doc, path, value, how)
    # (a key of the participant the message names would be a real message, not a forgery)
    if resign is not None and isinstance(doc, dict) and resign != doc.get("signer"):
        try:
            forged = json.loads(
                sign(
                    c.kind_of(which),
                    _Raw(doc.get("payload")),
                    str(doc.get("signer")),
                    c.keys().signing[resign],
                )
            )
            doc["signature"] = forged["signature"]
        except (TypeError, ValueError):
            pass
    data = json.dumps(doc, indent=indent).encode()
    assert c.check_message(data) in ([], [c.kind_of(which)])


class _Raw:
    """Anything as a message payload (what :func:`sign` dumps)."""

    def __init__(self, payload: Any) -> None:
        self.payload = payload

    def model_dump(self, mode: str) -> Any:
        return self.payload


def test_hostile_message_shapes_are_message_errors() -> None:
    """Found by the fuzzers: each used to raise something other than MessageError."""
    d = c.keys().directory
    for data in [
        b'{"kind":"job","signer":["analyst"],"payload":{},"signature":""}',  # TypeError
        b'{"kind":"job","signer":{},"payload":{},"signature":""}',
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError
        b'{"kind":"job","signer":"analyst","payload":' + b"[" * 50_000 + b',"signature":""}',
        MESSAGES["job"][:-1] + b',"kind":"job"}',  # a duplicate key
        b'{"kind":"job","signer":"analyst","payload":{"t":' + b"9" * 5000 + b'},"signature":""}',
    ]:
        with pytest.raises(MessageError):
            verify_job(data, d)


@pytest.mark.parametrize(
    "change",
    [
        {"issued": math.nan, "deadline": math.nan},
        {"deadline": math.inf},
        {"spec": {"r": -math.inf}},
        {"spec": {"name": "\ud800"}},
        {"spec": {"\udfff": 1}},
    ],
)
def test_signed_values_that_do_not_round_trip_are_refused(change: dict[str, Any]) -> None:
    """Found by fuzz/messages.py: an analyst's job with NaN times (which pass every
    freshness comparison), an infinite number (which ``sign`` would have written as
    null) or a lone surrogate (a string no UTF-8 writer takes) verified; JSON's NaN,
    Infinity, 1e400 and ``\\ud800`` are refused now."""
    payload = {**json.loads(MESSAGES["job"])["payload"], **change}
    doc: dict[str, Any] = {"kind": "job", "signer": "analyst", "payload": payload}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    key = c.keys().signing["analyst"]
    doc["signature"] = base64.b64encode(
        key.sign(b"smpc signed message v1\x00" + canonical)
    ).decode()
    for data in (json.dumps(doc), json.dumps(doc).replace("Infinity", "1e400")):
        with pytest.raises(MessageError, match=r"not allowed|not finite|surrogate"):
            verify_job(data.encode(), c.keys().directory)


@FUZZ
@given(which=st.integers(0, 1), sequence=MUTATIONS)
def test_mutated_result_envelopes_are_refused(which: int, sequence: list[Mutation]) -> None:
    valid = c.result_envelopes()
    data = mutations(valid[which], sequence, [*valid, *ENVELOPE_BYTES])
    assert c.check_result_envelope(data, valid) == (data in valid)
