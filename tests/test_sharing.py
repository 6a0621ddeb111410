"""Sharing, fields and encoding: exact round trips, cross-checked with MPyC's thresha."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from smpc.core.encoding import EncodingError, FixedPoint
from smpc.core.field import (
    BLOCK_ELEMENTS,
    FAST,
    MERSENNE61,
    BigPrimeField,
    expand,
    field_for,
    mpyc_modulus,
)
from smpc.core.prg import fresh_seed
from smpc.core.sharing import Share, SharingError, reconstruct, split

FIELDS = [FAST, field_for(mpyc_modulus(32)), field_for(mpyc_modulus(32, 16))]
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)


def _elements(field, shape, rng: random.Random) -> np.ndarray:
    values = [rng.randrange(field.modulus) for _ in range(math.prod(shape))]
    return field.from_int(np.array(values, dtype=object).reshape(shape))


@st.composite
def sharing_cases(draw):
    n = draw(st.integers(1, 7))
    scheme = draw(st.sampled_from(["shamir", "additive"]))
    t = draw(st.integers(0, n - 1)) if scheme == "shamir" else n - 1
    return n, t, scheme


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=sharing_cases(),
    shape=shapes,
    field_index=st.integers(0, len(FIELDS) - 1),
    compact=st.booleans(),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_share_then_reconstruct_is_exact(case, shape, field_index, compact, seed, data):
    n, t, scheme = case
    field = FIELDS[field_index]
    secret = _elements(field, shape, random.Random(seed))
    shares = split(secret, field, n, t, scheme, compact=compact)
    assert [s.party for s in shares] == list(range(n))
    # Seeds exactly for the random shares when compact, never otherwise.
    randoms = t if scheme == "shamir" else n - 1
    assert [s.is_seed for s in shares] == [compact and i < randoms for i in range(n)]
    values = {s.party: s.expand(field, shape) for s in shares}
    for v in values.values():
        assert v.shape == secret.shape
    if scheme == "additive":
        subset = list(range(n))
    else:
        subset = data.draw(st.permutations(range(n)))[: t + 1]
    got = reconstruct(
        {i: values[i] for i in subset}, field, t, scheme, n=n if scheme == "additive" else None
    )
    assert np.array_equal(np.asarray(got, dtype=object), np.asarray(secret, dtype=object))


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f"{f.modulus.bit_length()}bit")
def test_shamir_shares_match_mpyc_thresha(field):
    """Our shares recombine with MPyC's own Lagrange code, and MPyC's with ours."""
    from mpyc import finfields, thresha

    gf = finfields.GF(field.modulus)
    n, t = 5, 2
    secret = _elements(field, (7,), random.Random(1))
    values = {s.party: s.expand(field, (7,)) for s in split(secret, field, n, t)}
    for subset in itertools.combinations(range(n), t + 1):
        points = [(i + 1, [gf(int(v)) for v in values[i]]) for i in subset]
        opened = thresha.recombine(gf, points)
        assert [int(v) % field.modulus for v in opened] == [int(v) for v in secret]
    mpyc_shares = thresha.random_split(gf, [gf(int(v)) for v in secret], t, n)
    ours = reconstruct(
        {
            i: field.from_int(np.array([int(v) for v in mpyc_shares[i]], dtype=object))
            for i in (1, 3, 4)
        },
        field,
        t,
    )
    assert [int(v) for v in ours] == [int(v) for v in secret]


def test_t_shares_reveal_uniform_values_not_the_secret():
    """With t=1 the seeded party's share does not depend on the secret."""
    zeros = FAST.zeros((50_000,))
    shares = split(zeros, FAST, 3, 1)
    r = shares[0].expand(FAST, (50_000,)).astype(np.float64) / MERSENNE61
    assert abs(r.mean() - 0.5) < 0.01 and abs(r.std() - math.sqrt(1 / 12)) < 0.01


def test_seeds_are_fresh_for_every_split():
    secret = FAST.zeros((4,))
    seeds = {s.seed for _ in range(20) for s in split(secret, FAST, 4, 3, "additive") if s.is_seed}
    assert len(seeds) == 60


def test_expansion_is_deterministic_and_chunk_independent():
    seed = fresh_seed()
    n = 3 * BLOCK_ELEMENTS + 17
    whole = expand(FAST, seed, n)
    assert np.array_equal(whole, expand(FAST, seed, n))
    pieces = np.concatenate(
        [expand(FAST, seed, min(BLOCK_ELEMENTS, n - lo), lo) for lo in range(0, n, BLOCK_ELEMENTS)]
    )
    assert np.array_equal(whole, pieces)
    assert not np.array_equal(whole, expand(FAST, fresh_seed(), n))
    with pytest.raises(ValueError, match="block boundary"):
        expand(FAST, seed, 10, 5)


def test_rejection_sampling_replaces_out_of_range_draws():
    class Stream:
        """A stream whose first word maps to p itself and must be redrawn."""

        def __init__(self):
            self.words_given = [
                np.array([2**64 - 1, 16, 24], dtype=np.uint64),
                np.array([40], dtype=np.uint64),
            ]

        def words(self, n):
            return self.words_given.pop(0)[:n].copy()

    assert FAST.random((3,), Stream()).tolist() == [5, 2, 3]


def test_reconstruct_refuses_too_few_shares():
    shares = split(FAST.zeros((2,)), FAST, 3, 1, compact=False)
    with pytest.raises(SharingError, match="needs 2 shares"):
        reconstruct({0: shares[0].values}, FAST, 1)
    additive = split(FAST.zeros((2,)), FAST, 3, 2, "additive", compact=False)
    with pytest.raises(SharingError, match="missing parties"):
        reconstruct({0: additive[0].values, 1: additive[1].values}, FAST, 2, "additive", n=3)


@pytest.mark.parametrize(
    ("n", "t", "scheme"), [(3, 3, "shamir"), (3, -1, "shamir"), (0, 0, "shamir"), (3, 1, "xor")]
)
def test_bad_parameters_are_refused(n, t, scheme):
    with pytest.raises(SharingError):
        split(FAST.zeros((1,)), FAST, n, t, scheme)


def test_share_holds_values_or_seed():
    with pytest.raises(ValueError):
        Share(0)
    with pytest.raises(ValueError):
        Share(0, values=np.zeros(1), seed=bytes(32))


# -- fields ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(np.uint64, st.integers(0, 40), elements=st.integers(0, MERSENNE61 - 1)),
    c=st.integers(-(2**70), 2**70),
)
def test_fast_field_arithmetic_matches_python_ints(values, c):
    p = MERSENNE61
    big = values.astype(object)
    other = values[::-1].copy()
    assert FAST.mul_const(values, c).astype(object).tolist() == ((big * c) % p).tolist()
    assert (
        FAST.add(values, other).astype(object).tolist()
        == ((big + other.astype(object)) % p).tolist()
    )
    assert (
        FAST.sub(values, other).astype(object).tolist()
        == ((big - other.astype(object)) % p).tolist()
    )
    combo = FAST.linear_combination([(c, values), (-7, other), (3, values), (1, other)] * 3)
    expected = (3 * (big * c - 7 * other.astype(object) + 3 * big + other.astype(object))) % p
    assert combo.astype(object).tolist() == expected.tolist()


@settings(max_examples=60, deadline=None)
@given(ints=hnp.arrays(np.int64, st.integers(0, 30)), field_index=st.integers(0, len(FIELDS) - 1))
def test_signed_integers_round_trip_through_every_field(ints, field_index):
    field = FIELDS[field_index]
    fits = np.abs(ints.astype(object)) <= field.modulus // 2
    ints = ints[fits.astype(bool)] if ints.size else ints
    back = field.to_signed(field.from_int(ints))
    assert [int(v) for v in back] == [int(v) for v in ints]


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f"{f.modulus.bit_length()}bit")
def test_wire_bytes_round_trip_and_refuse_unreduced(field):
    x = _elements(field, (3, 4), random.Random(7))
    raw = field.to_bytes(x)
    assert len(raw) == 12 * field.element_size
    assert np.array_equal(
        np.asarray(field.from_bytes(raw, (3, 4)), dtype=object), np.asarray(x, dtype=object)
    )
    bad = bytearray(raw)
    bad[-field.element_size :] = (
        (field.modulus + 1).to_bytes(field.element_size, "little")[: field.element_size]
        if field.modulus.bit_length() < 8 * field.element_size
        else b"\xff" * field.element_size
    )
    with pytest.raises(ValueError, match="not reduced"):
        field.from_bytes(bytes(bad), (3, 4))


def test_mpyc_modulus_matches_mpyc_runtime_types():
    """The primes equal those MPyC's runtime picks (checked in a subprocess: MPyC parses argv)."""
    import subprocess
    import sys

    code = (
        "from mpyc.runtime import mpc;"
        "print(mpc.SecInt(32).field.modulus, mpc.SecFxp(64, 32).field.modulus,"
        " mpc.SecInt(104).field.modulus)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == [
        str(mpyc_modulus(32)),
        str(mpyc_modulus(64, 32)),
        str(mpyc_modulus(104)),
    ]
    assert field_for(mpyc_modulus(32)).dtype_tag == "<u8"
    assert field_for(mpyc_modulus(64, 32)).dtype_tag == "<u8*2"


def test_big_field_refuses_tiny_modulus():
    with pytest.raises(ValueError):
        BigPrimeField(2)


# -- fixed-point encoding -------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    f=st.integers(0, 30),
    data=st.data(),
    field_index=st.integers(0, len(FIELDS) - 1),
)
def test_fixed_point_round_trip_within_resolution(f, data, field_index):
    field = FIELDS[field_index]
    # Within what the field holds (FixedPoint.check_field): f + int_bits <= bits - 2.
    top = field.modulus.bit_length() - 2 - f  # 59 - f in GF(2^61 - 1)
    int_bits = data.draw(st.integers(1, top if field is FAST else min(top, 40)))
    enc = FixedPoint(f, int_bits)
    enc.check_field(field)
    bound = 2.0**int_bits
    x = data.draw(
        hnp.arrays(
            np.float64,
            hnp.array_shapes(min_dims=0, max_dims=2, max_side=5),
            elements=st.floats(-bound, bound, exclude_min=True, exclude_max=True),
        )
    )
    back = enc.decode(enc.encode(x, field), field)
    # Rounding to the nearest multiple of 2^-f errs by at most 2^-(f+1); float
    # rounding of x·2^f adds at most one ulp of x.
    assert np.all(np.abs(back - x) <= 2.0 ** -(f + 1) + np.spacing(np.abs(x)) * 2)


@settings(max_examples=50, deadline=None)
@given(ints=hnp.arrays(np.int64, st.integers(0, 20), elements=st.integers(-(2**40) + 1, 2**40 - 1)))
def test_integers_encode_exactly(ints):
    enc = FixedPoint(0, 40)
    assert np.array_equal(enc.decode(enc.encode(ints, FAST), FAST), ints)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 2.0**20, -(2.0**20)])
def test_out_of_range_and_non_finite_values_are_refused_with_name_and_position(bad):
    enc = FixedPoint(16, 20)
    x = np.zeros((3, 4))
    x[1, 2] = bad
    with pytest.raises(EncodingError, match=r"bmi: value .* at \(1, 2\)") as err:
        enc.encode(x, FAST, name="bmi")
    if np.isfinite(bad):
        assert "2^20" in str(err.value)
    else:
        assert "not a finite number" in str(err.value)


def test_integer_out_of_range_refused():
    with pytest.raises(EncodingError, match="count: value 1024 at 2"):
        FixedPoint(0, 10).encode(np.array([1, 2, 1024]), FAST, name="count")


def test_field_too_small_for_sum_is_refused():
    FixedPoint(24, 30).check_field(FAST, terms=10)
    with pytest.raises(EncodingError, match="cannot hold sums of 1000 values"):
        FixedPoint(24, 30).check_field(FAST, terms=1000)


@given(data=st.binary(max_size=300), t=st.integers(0, 2))
@settings(max_examples=60, deadline=None)
def test_bytes_travel_as_words_through_sharing(data, t):
    """Public metadata: bytes → 56-bit words → encoded, shared, reconstructed → bytes."""
    from smpc.core.encoding import bytes_to_words, words_to_bytes

    words = bytes_to_words(data)
    encoding = FixedPoint(0, 57)
    shares = split(encoding.encode(words, FAST), FAST, n=5, t=t)
    values = {s.party: s.expand(FAST, words.shape) for s in shares[2 : t + 3]}
    got = encoding.decode(reconstruct(values, FAST, t), FAST)
    assert words_to_bytes(got) == data
