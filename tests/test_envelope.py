"""Share envelope: round trips, what the broker sees, and one test per refusal.

The refusal tests matter most: a party must never accept a share that was cut,
flipped, re-addressed or re-signed, and must say which envelope and why.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smpc.errors import UserError
from smpc.wire.crypto import key_fingerprint
from smpc.wire.envelope_errors import (
    DigestMismatch,
    EnvelopeError,
    InvalidHeader,
    NotAnEnvelope,
    ShapeMismatch,
    TamperedEnvelope,
    TruncatedEnvelope,
    UnknownSigner,
    UnsupportedVersion,
    WrongRecipient,
    WrongSigner,
)
from smpc.wire.header import ShareHeader, header_with_digest
from smpc.wire.layout import DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE, peek_route
from smpc.wire.reader import open_envelope
from smpc.wire.writer import EnvelopeWriter, _seal_unchecked, seal

P61 = 2**61 - 1
KIB = 1024

PARTY_KEYS = [X25519PrivateKey.generate() for _ in range(3)]
SITE_KEYS = {"st-olav": Ed25519PrivateKey.generate(), "karolinska": Ed25519PrivateKey.generate()}
DIRECTORY = {name: key.public_key() for name, key in SITE_KEYS.items()}


def header(**kw: object) -> ShareHeader:
    """A valid header for party 1 of 3; keyword arguments override fields."""
    fields: dict[str, object] = dict(
        job="job-42",
        input="allele_counts",
        site="st-olav",
        party=1,
        scheme="shamir",
        t=1,
        n=3,
        modulus=P61,
        shape=(4,),
    )
    fields.update(kw)
    return ShareHeader(**fields)  # type: ignore[arg-type]


def values(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, P61, count, dtype=np.uint64)


def sealed(h: ShareHeader, body: object, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytearray:
    return seal(h, body, PARTY_KEYS[h.party].public_key(), SITE_KEYS[h.site], chunk_size=chunk_size)


def opened(env: bytes | bytearray, party: int = 1, **kw: object):
    return open_envelope(env, PARTY_KEYS[party], DIRECTORY, **kw)  # type: ignore[arg-type]


def layout(env: bytes | bytearray) -> tuple[int, int]:
    """(end of routing part, encrypted header length), read as the docstring says."""
    header_len, lj, li, ls = struct.unpack_from("<IHHH", env, 84)
    return 94 + lj + li + ls, header_len


# A multi-chunk envelope shared by the hypothesis tests (sealing once keeps them fast).
FUZZ_BODY = values(20_000, seed=7)  # 160,000 bytes = 2 full 64 KiB chunks + a partial one
FUZZ_ENV = bytes(sealed(header(shape=(20_000,)), FUZZ_BODY, chunk_size=MIN_CHUNK_SIZE))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "numpy"])
def test_round_trip_body_types(kind: str) -> None:
    arr = values(12).reshape(3, 4)
    body = {
        "bytes": arr.tobytes(),
        "bytearray": bytearray(arr.tobytes()),
        "memoryview": memoryview(arr),
        "numpy": arr,
    }[kind]
    h = header(shape=(3, 4))
    got = opened(sealed(h, body))
    assert got.header == header_with_digest(h, arr)
    assert got.header.digest == hashlib.sha256(arr.tobytes()).hexdigest()
    assert bytes(got.body) == arr.tobytes()
    np.testing.assert_array_equal(got.array(), arr)


@pytest.mark.parametrize(
    "length",
    [
        0,
        1,
        MIN_CHUNK_SIZE - 8,
        MIN_CHUNK_SIZE,
        MIN_CHUNK_SIZE + 8,
        3 * MIN_CHUNK_SIZE,
        3 * MIN_CHUNK_SIZE + 24,
        # above the size where the body is hashed on a second thread
        (2 << 20) + 8,
    ],
)
@pytest.mark.parametrize("chunk_size", [MIN_CHUNK_SIZE, 96 * KIB, DEFAULT_CHUNK_SIZE])
def test_round_trip_chunk_boundaries(length: int, chunk_size: int) -> None:
    count = math.ceil(length / 8)
    arr = values(count, seed=length)
    h = header(shape=(count,))
    env = sealed(h, arr, chunk_size=chunk_size)
    chunks = max(1, math.ceil(arr.nbytes / chunk_size))
    p, hl = layout(env)
    assert len(env) == p + hl + 64 + arr.nbytes + 16 * chunks
    route = peek_route(env)
    assert (route.chunks, route.body_len, route.size) == (chunks, arr.nbytes, len(env))
    got = opened(env)
    np.testing.assert_array_equal(got.array(), arr)


def test_round_trip_empty_and_scalar_shapes() -> None:
    for shape in [(0,), (3, 0, 2), ()]:
        arr = values(math.prod(shape)).reshape(shape)
        got = opened(sealed(header(shape=shape), arr))
        assert got.header.shape == shape
        assert got.array().shape == shape
        np.testing.assert_array_equal(got.array(), arr)


def test_round_trip_seed_body() -> None:
    seed = bytes(range(32))
    h = header(shape=(1_000_000,), seed=True)  # stands for 8 MB, travels as 32 bytes
    assert h.body_size() == 32
    env = sealed(h, seed)
    assert len(env) < 1024
    got = opened(env)
    assert got.header.seed and got.header.shape == (1_000_000,)
    assert bytes(got.body) == seed
    with pytest.raises(ValueError, match="seed"):
        got.array()


def test_round_trip_wide_elements_big_modulus_and_meta() -> None:
    p521 = 2**521 - 1
    arr = np.arange(2 * 9, dtype="<u8").reshape(2, 9)  # 2 elements of 9 limbs
    meta = {"round": 3, "lr": 0.05, "label": "ΔBMI", "final": False}
    h = header(modulus=p521, dtype="<u8*9", shape=(2,), frac_bits=32, meta=meta, scheme="additive")
    assert h.element_size == 72 and h.body_size() == 144
    got = opened(sealed(h, memoryview(arr)))
    assert got.header.modulus == p521  # survives JSON exactly
    assert dict(got.header.meta) == meta
    assert got.array().shape == (2, 9)
    np.testing.assert_array_equal(got.array(), arr)


def test_seal_leaves_body_alone_and_envelopes_differ() -> None:
    arr = values(1000)
    before = arr.copy()
    a, b = sealed(header(shape=(1000,)), arr), sealed(header(shape=(1000,)), arr)
    np.testing.assert_array_equal(arr, before)
    assert a != b  # fresh ephemeral key each time
    ida, idb = opened(a).envelope_id, opened(b).envelope_id
    assert ida != idb and ida == opened(a).envelope_id


def test_open_does_not_modify_envelope() -> None:
    env = sealed(header(shape=(1000,)), values(1000))
    copy = bytes(env)
    opened(env)
    assert env == copy


def test_header_given_digest_is_checked_by_seal() -> None:
    arr = values(4)
    good = header_with_digest(header(), arr)
    assert opened(sealed(good, arr)).header == good
    with pytest.raises(DigestMismatch):
        sealed(good, values(4, seed=1))


# --------------------------------------------------------------------------- what the broker sees


def test_peek_route_shows_only_routing() -> None:
    arr = values(4096, seed=3)
    h = header(shape=(4096,), meta={"cohort": "secret-cohort-name"})
    env = sealed(h, arr)
    route = peek_route(env)
    assert (route.job, route.input, route.site, route.party) == (
        "job-42",
        "allele_counts",
        "st-olav",
        1,
    )
    assert route.recipient == key_fingerprint(PARTY_KEYS[1].public_key())
    assert route.recipient == key_fingerprint(PARTY_KEYS[1])
    assert route.signer == key_fingerprint(SITE_KEYS["st-olav"].public_key())
    assert route.version == 1 and route.size == len(env)
    p, _ = layout(env)
    assert peek_route(env[:p]) == route  # the routing part alone is enough
    blob = bytes(env)
    for secret in [b"shamir", str(P61).encode(), b"secret-cohort-name", b"<u8", arr[:8].tobytes()]:
        assert secret not in blob


# --------------------------------------------------------------------------- refusals


def test_errors_are_user_errors() -> None:
    for cls in [
        NotAnEnvelope,
        UnsupportedVersion,
        TruncatedEnvelope,
        TamperedEnvelope,
        DigestMismatch,
        WrongRecipient,
        UnknownSigner,
        WrongSigner,
        ShapeMismatch,
        InvalidHeader,
    ]:
        assert issubclass(cls, EnvelopeError) and issubclass(cls, UserError)


def test_not_an_envelope() -> None:
    env = bytearray(sealed(header(), values(4)))
    env[0:4] = b"PK\x03\x04"
    with pytest.raises(NotAnEnvelope, match="magic"):
        opened(env)
    for junk in [b'{"job": 1}', b"x", b"\x00" * 500]:
        with pytest.raises(NotAnEnvelope):
            opened(junk)
        with pytest.raises(NotAnEnvelope):
            peek_route(junk)


def test_unsupported_version() -> None:
    env = bytearray(sealed(header(), values(4)))
    env[4:6] = (2).to_bytes(2, "little")
    with pytest.raises(UnsupportedVersion, match="version 2"):
        opened(env)
    with pytest.raises(UnsupportedVersion):
        peek_route(env)


def test_truncated_names_the_envelope() -> None:
    env = sealed(header(), values(4))
    with pytest.raises(TruncatedEnvelope) as e:
        opened(env[:-1])
    msg = str(e.value)
    for part in ["job=job-42", "input=allele_counts", "site=st-olav", "party=1"]:
        assert part in msg
    assert (e.value.job, e.value.site, e.value.party) == ("job-42", "st-olav", 1)
    for short in [b"", b"SM", b"SMPE", b"SMPE\x01\x00"]:
        with pytest.raises(TruncatedEnvelope):
            opened(short)


def test_fewer_chunks_than_announced() -> None:
    p, hl = layout(FUZZ_ENV)
    first_chunk_end = p + hl + 64 + MIN_CHUNK_SIZE + 16
    with pytest.raises(TruncatedEnvelope, match="3 chunk"):
        opened(FUZZ_ENV[:first_chunk_end])


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(FUZZ_ENV) - 1))
def test_truncation_anywhere_raises(cut: int) -> None:
    with pytest.raises(TruncatedEnvelope):
        opened(FUZZ_ENV[:cut])


def test_trailing_bytes_refused() -> None:
    with pytest.raises(TamperedEnvelope, match="unexpected bytes"):
        opened(FUZZ_ENV + b"\x00")


def test_tampered_chunk_header_and_signature() -> None:
    p, hl = layout(FUZZ_ENV)
    for pos, what in [
        (p + 3, "signature"),  # encrypted header: covered by the signature
        (p + hl + 10, "signature"),  # the signature itself
        (p + hl + 64 + 5, "chunk 0"),  # first chunk
        (len(FUZZ_ENV) - 1, "chunk 2"),  # tag of the last chunk
    ]:
        env = bytearray(FUZZ_ENV)
        env[pos] ^= 0x01
        with pytest.raises(TamperedEnvelope, match=what):
            opened(env)


def test_chunks_cannot_be_reordered_or_spliced() -> None:
    p, hl = layout(FUZZ_ENV)
    start, step = p + hl + 64, MIN_CHUNK_SIZE + 16
    env = bytearray(FUZZ_ENV)
    env[start : start + step], env[start + step : start + 2 * step] = (
        FUZZ_ENV[start + step : start + 2 * step],
        FUZZ_ENV[start : start + step],
    )
    with pytest.raises(TamperedEnvelope, match="chunk 0"):
        opened(env)
    # the same share sealed again: same layout, other ephemeral key
    other = sealed(header(shape=(20_000,)), FUZZ_BODY, chunk_size=MIN_CHUNK_SIZE)
    env = bytearray(FUZZ_ENV)
    env[start + step : start + 2 * step] = other[start + step : start + 2 * step]
    with pytest.raises(TamperedEnvelope, match="chunk 1"):
        opened(env)


def test_every_byte_of_routing_header_and_signature_is_protected() -> None:
    p, hl = layout(FUZZ_ENV)
    for pos in range(p + hl + 64):
        env = bytearray(FUZZ_ENV)
        env[pos] ^= 0x80
        with pytest.raises(EnvelopeError):
            opened(env)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pos=st.integers(min_value=0, max_value=len(FUZZ_ENV) - 1) | st.integers(0, 400),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_flipped_byte_raises(pos: int, flip: int) -> None:
    env = bytearray(FUZZ_ENV)
    env[pos] ^= flip
    with pytest.raises(EnvelopeError):
        opened(env)


def test_wrong_recipient_key() -> None:
    env = sealed(header(party=1), values(4))
    with pytest.raises(WrongRecipient, match="encrypted to key") as e:
        opened(env, party=0)  # party 0's key, no index given
    assert e.value.party == 1
    # encrypted to party 2's key although the header says party 1
    misaddressed = seal(
        header(party=1), values(4), PARTY_KEYS[2].public_key(), SITE_KEYS["st-olav"]
    )
    with pytest.raises(WrongRecipient):
        opened(misaddressed, party=1)


def test_wrong_party_index() -> None:
    env = sealed(header(party=1), values(4))
    with pytest.raises(WrongRecipient, match="addressed to party 1, not to party 2"):
        open_envelope(env, PARTY_KEYS[1], DIRECTORY, party=2)
    assert opened(env, party=1).header.party == 1


def test_wrong_signer() -> None:
    # Karolinska's key signs an envelope that claims to come from St Olav.
    env = seal(header(), values(4), PARTY_KEYS[1].public_key(), SITE_KEYS["karolinska"])
    with pytest.raises(WrongSigner, match="st-olav"):
        opened(env)
    # the directory holds another key for the site (e.g. after a key rotation)
    rotated = {**DIRECTORY, "st-olav": Ed25519PrivateKey.generate().public_key()}
    with pytest.raises(WrongSigner):
        open_envelope(sealed(header(), values(4)), PARTY_KEYS[1], rotated)


def test_unknown_signer() -> None:
    env = sealed(header(), values(4))
    with pytest.raises(UnknownSigner, match="st-olav"):
        open_envelope(env, PARTY_KEYS[1], {"karolinska": DIRECTORY["karolinska"]})

    def lookup_raises(site: str):
        raise KeyError(site)

    with pytest.raises(UnknownSigner):
        open_envelope(env, PARTY_KEYS[1], lookup_raises)
    with pytest.raises(UnknownSigner):
        open_envelope(env, PARTY_KEYS[1], lambda site: None)
    assert open_envelope(env, PARTY_KEYS[1], DIRECTORY.__getitem__).header.site == "st-olav"


def test_shape_mismatch_refused_by_seal() -> None:
    with pytest.raises(ShapeMismatch, match="needs 32"):
        sealed(header(shape=(4,)), values(5))
    with pytest.raises(ShapeMismatch, match="seed"):
        sealed(header(seed=True), bytes(31))


def test_shape_mismatch_in_signed_envelope() -> None:
    h = header(shape=(4,))
    key, signer = PARTY_KEYS[1].public_key(), SITE_KEYS["st-olav"]
    env = _seal_unchecked(h, values(5), key, signer)
    with pytest.raises(ShapeMismatch, match="40 bytes") as e:
        opened(env)
    assert e.value.job == "job-42"
    env = _seal_unchecked(header(seed=True, shape=(10,)), bytes(33), key, signer)
    with pytest.raises(ShapeMismatch, match="seed"):
        opened(env)


def test_digest_mismatch_in_signed_envelope() -> None:
    lie = header_with_digest(header(), values(4, seed=9))
    env = _seal_unchecked(lie, values(4), PARTY_KEYS[1].public_key(), SITE_KEYS["st-olav"])
    with pytest.raises(DigestMismatch, match="signed digest"):
        opened(env)


def test_invalid_signed_header_refused() -> None:
    good = header().to_dict()
    key, signer = PARTY_KEYS[1].public_key(), SITE_KEYS["st-olav"]
    for bad, match in [
        ({**good, "t": 3}, "threshold"),
        ({**good, "scheme": "replicated"}, "scheme"),
        ({**good, "modulus": P61}, "decimal string"),
        ({**good, "modulus": "0x1fffffffffffffff"}, "decimal string"),
        ({**good, "extra": 1}, "unknown"),
        ({**good, "shape": [-1]}, "shape"),
        ({**good, "dtype": "<f8"}, "dtype"),
        ({**good, "n": True}, "int"),
    ]:
        env = _seal_unchecked(bad, values(4), key, signer)
        with pytest.raises(InvalidHeader, match=match):
            opened(env)


def test_chunk_size_limits() -> None:
    for size in [MIN_CHUNK_SIZE - 1, 4096, 0, -1, 2**31]:
        with pytest.raises(ValueError, match="chunk_size"):
            sealed(header(), values(4), chunk_size=size)


def test_body_buffer_requirements() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        sealed(header(shape=(4,)), values(8)[::2])
    with pytest.raises(TypeError, match="float64"):
        sealed(header(shape=(4,)), np.zeros(4))


# --------------------------------------------------------------------------- header validation


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"party": 3}, "party 3"),
        ({"party": -1}, "party"),
        ({"t": 3}, "threshold"),
        ({"t": -1}, "threshold"),
        ({"n": 0}, "number of parties"),
        ({"scheme": "spdz"}, "scheme"),
        ({"shape": (2, -1)}, "shape"),
        ({"shape": (2.0,)}, "shape"),
        ({"shape": (True,)}, "shape"),
        ({"shape": 4}, "shape"),
        ({"dtype": "<u4"}, "dtype"),
        ({"dtype": "<u8*0"}, "dtype"),
        ({"dtype": ">u8"}, "dtype"),
        ({"modulus": 2**64 + 13}, "does not fit"),
        ({"modulus": 1}, "modulus"),
        ({"frac_bits": -1}, "frac_bits"),
        ({"frac_bits": 61}, "frac_bits"),
        ({"party": True}, "party must be an int"),
        ({"job": ""}, "job"),
        ({"site": "a\nb"}, "control"),
        ({"digest": "ABC"}, "digest"),
        ({"seed": 1}, "seed"),
        ({"meta": {"x": float("nan")}}, "finite"),
        ({"meta": {"x": [1, 2]}}, "meta"),
        ({"meta": {1: "x"}}, "meta key"),
    ],
)
def test_header_validation(kw: dict, match: str) -> None:
    with pytest.raises(InvalidHeader, match=match):
        header(**kw)


def test_header_json_is_canonical_and_strict() -> None:
    h = header(shape=[2, 3], meta={"b": 1, "a": "x"})
    assert h.shape == (2, 3)
    assert ShareHeader.from_json(h.to_json()) == h
    assert b'"modulus":"2305843009213693951"' in h.to_json()
    assert h.body_size() == 48 and header(seed=True).body_size() == 32
    with pytest.raises(InvalidHeader, match="duplicate"):
        ShareHeader.from_json(h.to_json()[:-1] + b',"job":"x"}')
    with pytest.raises(InvalidHeader, match="NaN"):
        ShareHeader.from_json(h.to_json().replace(b'"b":1', b'"b":NaN'))
    with pytest.raises(InvalidHeader, match="JSON"):
        ShareHeader.from_json(b"\xff")
    hash(h)  # frozen and hashable despite meta


# --------------------------------------------------------------------------- buffers and threads


def test_every_output_byte_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """open decrypts into a buffer that is not zeroed first: no stale byte may survive."""
    import smpc.wire.reader as reader

    monkeypatch.setattr(reader, "_new_buffer", lambda size: bytearray(b"\xaa" * size))
    for count in [0, 1, 9000, 300_000]:  # 300,000 × 8 bytes: hashed on the worker thread
        arr = np.random.default_rng(count).integers(1, 2**62, count, dtype=np.uint64)
        env = sealed(header(shape=(count,)), arr, chunk_size=MIN_CHUNK_SIZE)
        np.testing.assert_array_equal(opened(env).array(), arr)  # compares every byte


def test_large_tampered_envelope_stops_hash_worker() -> None:
    import threading

    arr = values(300_000)
    env = bytearray(sealed(header(shape=(300_000,)), arr, chunk_size=MIN_CHUNK_SIZE))
    before = threading.active_count()
    env[-1] ^= 1
    with pytest.raises(TamperedEnvelope):
        opened(env)
    assert threading.active_count() == before


def test_concurrent_seals() -> None:
    from concurrent.futures import ThreadPoolExecutor

    arrays = [values(300_000, seed=i) for i in range(3)]
    heads = [header(party=i, shape=(300_000,)) for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        envs = list(pool.map(sealed, heads, arrays))
    for i, env in enumerate(envs):
        np.testing.assert_array_equal(opened(env, party=i).array(), arrays[i])


# --------------------------------------------------------------------------- streaming writer


def writer(h: ShareHeader, **kw: object) -> EnvelopeWriter:
    return EnvelopeWriter(h, PARTY_KEYS[h.party].public_key(), SITE_KEYS[h.site], **kw)  # type: ignore[arg-type]


def write_pieces(w: EnvelopeWriter, body: bytes, cuts: list[int]) -> None:
    """Feed ``body`` cut at ``cuts`` (sorted, repeats give 0-length pieces), varying types."""
    bounds = [0, *cuts, len(body)]
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        piece = body[lo:hi]
        w.write([piece, bytearray(piece), memoryview(piece), np.frombuffer(piece, np.uint8)][k % 4])


def same_structure(a: bytes | bytearray, b: bytes | bytearray) -> None:
    """Same layout byte for byte, except what is fresh per envelope (ephemeral key onwards)."""
    assert len(a) == len(b)
    assert peek_route(a) == peek_route(b)
    assert layout(a) == layout(b)
    p, _ = layout(a)
    assert a[:40] == b[:40] and a[72:p] == b[72:p]  # all routing but the ephemeral key


def test_writer_matches_seal() -> None:
    h = header(shape=(20_000,))
    w = writer(h, chunk_size=MIN_CHUNK_SIZE)
    assert w.size == len(FUZZ_ENV)
    for lo in range(0, 20_000, 4096):  # 32 KiB pieces: every chunk goes through staging
        w.write(FUZZ_BODY[lo : lo + 4096])
    env = w.finish()
    assert isinstance(env, bytearray)
    same_structure(env, FUZZ_ENV)
    a, b = opened(env), opened(FUZZ_ENV)
    assert a.header == b.header == header_with_digest(h, FUZZ_BODY)
    assert a.body == b.body == FUZZ_BODY.tobytes()
    assert a.envelope_id != b.envelope_id  # fresh ephemeral key


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(0, FUZZ_BODY.nbytes), max_size=12).map(sorted)
    | st.lists(  # around chunk boundaries, where pieces straddle or end exactly
        st.sampled_from([k * MIN_CHUNK_SIZE + d for k in (1, 2) for d in (-1, 0, 1)]),
        max_size=6,
    ).map(sorted),
    to_file=st.booleans(),
    chunk_size=st.sampled_from([MIN_CHUNK_SIZE, 96 * KIB, DEFAULT_CHUNK_SIZE]),
)
def test_writer_any_piece_sizes(cuts: list[int], to_file: bool, chunk_size: int) -> None:
    body = FUZZ_BODY.tobytes()
    h = header(shape=(20_000,))
    sink = io.BytesIO() if to_file else None
    w = writer(h, sink=sink, chunk_size=chunk_size)
    write_pieces(w, body, cuts)
    env = w.finish()
    if sink is not None:
        assert env is None and sink.tell() == w.size
        env = sink.getvalue()
    assert env is not None and len(env) == w.size
    got = opened(env)
    assert got.body == body and got.header == header_with_digest(h, body)


@pytest.mark.parametrize("offset", [0, 1000])
def test_writer_file_sink(tmp_path: Path, offset: int) -> None:
    arr = values(300_000, seed=5)  # 2.4 MB: large pieces are hashed on the worker thread
    h = header(shape=(300_000,))
    path = tmp_path / "outbox.env"
    with path.open("wb") as f:
        f.write(b"x" * offset)  # the envelope starts where the sink stands
        with writer(h, sink=f, chunk_size=MIN_CHUNK_SIZE) as w:
            w.write(arr[:100])  # leaves a partial chunk pending
            w.write(arr[100:250_000])  # completes it, then whole chunks from the array
            w.write(arr[250_000:])
            assert w.finish() is None
        assert f.tell() == offset + w.size
        f.write(b"after")  # the sink is left right after the envelope
    data = path.read_bytes()
    assert data[:offset] == b"x" * offset and data.endswith(b"after")
    env = data[offset:-5]
    assert len(env) == w.size == peek_route(env).size
    same_structure(env, sealed(h, arr, chunk_size=MIN_CHUNK_SIZE))
    np.testing.assert_array_equal(opened(env).array(), arr)


def test_writer_overwrites_stale_sink_bytes() -> None:
    arr = values(20_000, seed=2)
    h = header(shape=(20_000,))
    w = writer(h, sink=(sink := io.BytesIO(b"\xaa" * 300_000)), chunk_size=MIN_CHUNK_SIZE)
    w.write(arr)
    w.finish()
    env = sink.getvalue()[: w.size]
    assert b"\xaa" * 48 not in env
    np.testing.assert_array_equal(opened(env).array(), arr)


def test_writer_empty_body() -> None:
    h = header(shape=(0,))
    for sink in [None, io.BytesIO()]:
        w = writer(h, sink=sink)
        w.write(b"")
        env = w.finish() if sink is None else (w.finish(), sink.getvalue())[1]
        assert env is not None and len(env) == w.size
        assert opened(env).array().shape == (0,)


def test_writer_too_many_bytes() -> None:
    w = writer(header(shape=(4,)))
    w.write(values(3))
    with pytest.raises(ShapeMismatch, match=r"at least 40 bytes.*needs 32") as e:
        w.write(values(2))
    assert (e.value.job, e.value.input, e.value.site, e.value.party) == (
        "job-42",
        "allele_counts",
        "st-olav",
        1,
    )
    with pytest.raises(ValueError, match="aborted"):  # the writer is dead after an error
        w.finish()


def test_writer_too_few_bytes() -> None:
    sink = io.BytesIO()
    w = writer(header(shape=(20_000,)), sink=sink, chunk_size=MIN_CHUNK_SIZE)
    w.write(FUZZ_BODY[:19_999])
    with pytest.raises(ShapeMismatch, match=r"only 159992 bytes.*needs 160000") as e:
        w.finish()
    assert "job=job-42" in str(e.value) and "party=1" in str(e.value)
    assert sink.getvalue() == b""  # truncated back to where the envelope started
    with pytest.raises(ValueError, match="aborted"):
        w.write(b"")


def test_writer_digest() -> None:
    arr = values(4)
    good = header_with_digest(header(), arr)
    w = writer(good)
    w.write(arr)
    assert opened(w.finish()).header == good
    w = writer(header_with_digest(header(), values(4, seed=1)))
    w.write(arr)
    with pytest.raises(DigestMismatch, match="not the body's SHA-256"):
        w.finish()


def test_writer_exception_in_with_returns_nothing() -> None:
    arr = values(20_000)
    with (
        pytest.raises(RuntimeError, match="producer failed"),
        writer(header(shape=(20_000,)), chunk_size=MIN_CHUNK_SIZE) as w,
    ):
        w.write(arr[:10_000])
        raise RuntimeError("producer failed")
    with pytest.raises(ValueError, match="aborted"):
        w.finish()
    sink = io.BytesIO(b"keep")
    sink.seek(4)
    with pytest.raises(RuntimeError), writer(header(shape=(20_000,)), sink=sink) as w:
        w.write(arr[:10_000])
        raise RuntimeError
    assert sink.getvalue() == b"keep"  # nothing half-written left behind


def test_writer_with_block_needs_finish() -> None:
    with pytest.raises(ValueError, match="without finish"), writer(header()) as w:
        w.write(values(4))
    with pytest.raises(ValueError, match="aborted"):
        w.finish()


def test_writer_abort_after_finish_keeps_envelope() -> None:
    """An ExitStack of writers may abort all of them after some have finished."""
    sink = io.BytesIO()
    w = writer(header(), sink=sink)
    w.write(values(4))
    w.finish()
    w.abort()
    assert len(sink.getvalue()) == w.size
    np.testing.assert_array_equal(opened(sink.getvalue()).array(), values(4))
    with pytest.raises(ValueError, match="finished"):
        w.write(b"")


def test_writer_refuses_bad_sinks_and_pieces(tmp_path: Path) -> None:
    class Pipe(io.RawIOBase):
        def writable(self) -> bool:
            return True

    with pytest.raises(ValueError, match="seekable"):
        writer(header(), sink=Pipe())  # type: ignore[arg-type]
    with (tmp_path / "f").open("ab") as f, pytest.raises(ValueError, match="appending"):
        writer(header(), sink=f)
    w = writer(header(shape=(4,)))
    with pytest.raises(ValueError, match="contiguous"):
        w.write(values(8)[::2])
    w = writer(header(shape=(4,)))
    with pytest.raises(TypeError, match="float64"):
        w.write(np.zeros(4))
    with pytest.raises(TypeError, match="ShareHeader"):
        EnvelopeWriter(header().to_dict(), PARTY_KEYS[1].public_key(), SITE_KEYS["st-olav"])  # type: ignore[arg-type]
