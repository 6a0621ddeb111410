"""GWAS statistics computed inside an MPyC session (``reveal: statistics``).

The computing parties hold Shamir shares of pooled per-variant integers (allele
counts; integer-scaled regression cross products) and open only what PLINK 1.9
prints: the A1 allele, frequencies, test statistics, odds ratios, coefficients and
NMISS. Pooled counts and sums stay secret.

**How.** Integer arithmetic on shares, vectorised over variants: no SecFxp, no
secure division. A statistic num/den is opened without its parts
(:func:`_open_ratio_shares`): for a secret random r the parties open den·r, uniformly
random unless den = 0 (then the statistic is NA, which PLINK prints anyway, and
nothing more about that variant is opened); elsewhere they open num·r, compute
num/den mod p in the clear and recover the reduced fraction by rational
reconstruction (:func:`rational_reconstruct`). Products that are only opened are
not reshared: their degree-2t shares get a pseudorandom degree-2t sharing of zero
(PRSS) and are opened with threshold 2t, as MPyC's ``np_random_bits`` opens its
squares. Products that feed further products are reshared (``mpc._reshare``), one
reshare per inner product. P-values are computed in the clear from the opened
statistics (scipy), so they are as exact as PLINK's.

**Field sizes.** Rational reconstruction needs p > 2·max|num|·max den, so nothing
may wrap and every ratio has a stated bound:

- ``--assoc`` with at most N called alleles per variant opens K = CHISQ/(F_A − F_U)²,
  which needs p > N⁵/8, i.e. :func:`assoc_field_bits` (N) ≈ 5·log₂N − 2 bits: 70 bits
  for N = 20,000, 104 bits for N = 2²¹ (a million diploid samples).
- ``--linear`` with k parameters, n ≤ n_max samples, |X_ij| ≤ B_j and |y_i| ≤ B_y
  after scaling: :func:`linear_bounds`, 1 + log₂n + 2·(log₂D_X + log₂D_Z) bits with
  D_X = Π n·B_j² and D_Z = n·B_y²·Π_{j≠ADD} n·B_j² (Hadamard bounds): 584 bits for
  k = 4, n = 10,000, two covariates < 2¹⁷, y < 2²⁰; 963 bits for k = 6.
- The minor-allele comparison only needs ⌈log₂N⌉ + 1 value bits and k + 2 more
  for the field: share founder counts in a small field of their own (48 bits for
  N = 20,000) because MPyC comparisons cost per bit.

The protocol shares each input in :func:`field_prime` (field_bits, value_bits) and the
session loads it as :func:`secint_for` (mpc, field_bits, value_bits).

**What is revealed**: the minor-allele bits (PLINK prints A1), NMISS (printed by
``--linear``), the NA pattern of each statistic (printed as NA) and the statistics
as exact reduced fractions — more than PLINK's rounded digits (F_A = a/n_case in
lowest terms can show the allele counts). Nothing else: a variant whose statistic is
NA opens only that bit.

**Cost** (3 local parties sharing 2 cores, best of several runs; up to 2× slower
when the machine is busy): minor swap of 100,000 variants ≈ 15–18 s (48-bit field);
``--assoc`` of 100,000 variants ≈ 4.5 s (70-bit field); ``--linear`` with k = 4 for
10,000 variants ≈ 4 s (584-bit field). Per party the assoc time is mostly MPyC's
PRSS (random masks and zero sharings), resharing and rational reconstruction.

This module runs in the session process but never imports MPyC at module level:
every coroutine takes the runtime ``mpc`` first, and every party must await the
same calls in the same order.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

SEC_PARAM = 30  # MPyC's default statistical security parameter k (option -K)

__all__ = [
    "AssocResult",
    "LinearBounds",
    "LinearResult",
    "NewtonBounds",
    "Ratio",
    "assoc_field_bits",
    "convert_field",
    "field_prime",
    "linear_bounds",
    "linear_targets",
    "newton_bounds",
    "newton_targets",
    "rational_reconstruct",
    "secint_for",
    "secure_assoc",
    "secure_linear",
    "secure_newton_step",
]

# An MPyC secure type or finite field class (MPyC ships no type information).
MpcType = Any


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Ratio:
    """Opened fractions, one per variant: ``num/den`` reduced with ``den > 0``; NA is 0/0.

    ``num`` and ``den`` are object arrays of Python ints, so they are exact however
    wide the field is; :meth:`to_float` gives what the PLINK writers format.
    """

    num: np.ndarray
    den: np.ndarray

    @property
    def na(self) -> np.ndarray:
        return self.den == 0

    def to_float(self) -> np.ndarray:
        """Correctly rounded float64 values (Python's int true division), NaN for NA."""
        out = np.full(self.num.shape, np.nan)
        ok = ~self.na
        out[ok] = [n / d for n, d in zip(self.num[ok], self.den[ok], strict=True)]
        return out


@dataclass(frozen=True)
class AssocResult:
    """PLINK ``--assoc`` columns for the (possibly swapped) A1 allele."""

    f_a: Ratio  # A1 frequency in cases; NA when no case allele was called
    f_u: Ratio  # A1 frequency in controls
    chisq: Ratio  # allelic 2×2 Pearson chi-square, no continuity correction
    odds_ratio: Ratio  # (a·d)/(b·c); NA when b·c = 0, as PLINK prints it

    @property
    def p(self) -> np.ndarray:
        """Chi-square(1 df) upper tail, computed in the clear; NaN for NA."""
        from smpc.protocols.gwas.plink.pvalues import chiprob_p

        return chiprob_p(self.chisq.to_float(), 1.0)


@dataclass(frozen=True)
class LinearResult:
    """PLINK ``--linear`` ADD row: NMISS, BETA, STAT (t) and P."""

    nmiss: np.ndarray  # int64: samples in the regression (PLINK prints it)
    beta: Ratio  # in the caller's units (``beta_scale`` applied); NA with t2
    t2: Ratio | None  # squared t statistic; NA when det(XᵀX) = 0 or RSS = 0
    n_params: int
    se2: Ratio | None = None  # with ``se2=True`` instead of t2: BETA's squared standard
    # error, NA (as BETA) only when det(XᵀX) = 0; in the caller's units

    @property
    def t(self) -> np.ndarray:
        """Signed t statistic: the sign of BETA times √T² (float64, NaN for NA)."""
        assert self.t2 is not None  # a result with se2 has no t statistic
        return np.sign(self.beta.to_float()) * np.sqrt(self.t2.to_float())

    @property
    def p(self) -> np.ndarray:
        """Two-sided Student-t P with NMISS − k degrees of freedom, in the clear."""
        from smpc.protocols.gwas.plink.pvalues import t_two_sided

        df = (self.nmiss - self.n_params).astype(float)
        df[df <= 0] = np.nan
        return t_two_sided(self.t, df)


# --------------------------------------------------------------------------- bounds


def assoc_field_bits(max_alleles: int) -> int:
    """Smallest prime bit length for which :func:`secure_assoc` cannot wrap.

    With N ≤ ``max_alleles`` called alleles at a variant (n1 + n2 = N), the ratio it
    opens besides the frequencies, K = N·n1·n2 / ((a+c)·(b+d)), has numerator ≤ N³/4
    and denominator ≤ N²/4; rational reconstruction needs p > 2·N⁵/16, e.g. 104 bits
    for N = 2²¹ (a million diploid samples). The frequencies need less.
    """
    num, den = _k_bounds(max_alleles)
    return (2 * num * den).bit_length() + 1


def _k_bounds(max_alleles: int) -> tuple[int, int]:
    n = max_alleles
    return n**3 // 4 + 1, n**2 // 4 + 1


@dataclass(frozen=True)
class LinearBounds:
    """Magnitude bounds of the integers :func:`secure_linear` opens as ratios.

    For columns with |X_ij| ≤ B_j (scaled integers; intercept B = 1, additive
    genotype B = 2 unless scaled) and |y_i| ≤ B_y, with s_j = n·B_j² and s_y = n·B_y²:
    det(XᵀX) ≤ D_X = Π s_j (Hadamard, XᵀX is a Gram matrix); the Gram determinant of
    X without the test column plus y is ≤ D_Z = s_y·Π_{j≠test} s_j; the Cramer
    numerator of BETA is a cross-Gram determinant, |b| ≤ √(D_X·D_Z); and the
    T² denominator det·RSS·adj_tt = C·det − b² ≤ D_X·D_Z. Hence BETA needs
    p > 2·√(D_X·D_Z)·D_X and T² = (n − k)·b²/(C·det − b²) needs p > 2·n·(D_X·D_Z)².
    """

    n_max: int
    beta_num: int
    beta_den: int
    t2_num: int
    t2_den: int
    se2_num: int = 0  # SE² = (C·det − b²)/(det²·(n − k)), scaled by the caller
    se2_den: int = 0

    @property
    def field_bits(self) -> int:
        """Smallest prime bit length with which no opened ratio is ambiguous."""
        need = max(
            2 * self.beta_num * self.beta_den,
            2 * self.t2_num * self.t2_den,
            2 * self.se2_num * self.se2_den,
        )
        return need.bit_length() + 1


def linear_bounds(
    n_max: int, col_bounds: Sequence[int], y_bound: int, test_index: int = 1
) -> LinearBounds:
    """Bounds for :func:`secure_linear` (see :class:`LinearBounds`) from data bounds.

    ``col_bounds[j]`` bounds |X_ij| for column j of the design (intercept, ADD,
    covariates, in PLINK's order) after the sites' scaling by 2^f and rounding;
    ``y_bound`` bounds the scaled phenotype.
    """
    s = [n_max * b * b for b in col_bounds]
    d_x = math.prod(s)
    d_z = n_max * y_bound * y_bound * math.prod(v for j, v in enumerate(s) if j != test_index)
    b = math.isqrt(d_x * d_z) + 1
    return LinearBounds(
        n_max=n_max, beta_num=b, beta_den=d_x, t2_num=n_max * d_x * d_z, t2_den=d_x * d_z,
        se2_num=d_x * d_z, se2_den=n_max * d_x * d_x,
    )  # fmt: skip


def field_prime(field_bits: int, value_bits: int = 32, sec_param: int = SEC_PARAM) -> int:
    """The prime of :func:`secint_for`, without a runtime: the sites share in this field.

    MPyC's own choice for a ``max(field_bits, value_bits + k + 2)``-bit prime field (the
    largest Blum prime below that power of two), computed without importing MPyC. Use it
    as ``SecType(kind="int", bit_length=value_bits, prime=field_prime(...))``.
    """
    from smpc.core.field import blum_prime

    return blum_prime(max(field_bits, value_bits + sec_param + 2))


def secint_for(mpc: Any, field_bits: int, value_bits: int = 32) -> MpcType:
    """An MPyC ``SecInt(value_bits, p)`` over :func:`field_prime` (field_bits, value_bits).

    ``value_bits`` only matters for secure comparisons (the minor-allele swap, which
    is cheapest in a small field: give the founder counts a type of their own with
    ``field_bits=0``); the ratios need the wide field.
    """
    return mpc.SecInt(value_bits, p=field_prime(field_bits, value_bits, mpc.options.sec_param))


# --------------------------------------------------------------------------- reconstruction


def rational_reconstruct(
    values: np.ndarray, p: int, num_bound: int, den_bound: int
) -> tuple[np.ndarray, np.ndarray]:
    """The fractions n/d ≡ values (mod p) with |n| ≤ num_bound and 0 < d ≤ den_bound.

    Wang's half-extended Euclid on the pair (p, v), vectorised over object arrays:
    the first remainder r_j ≤ num_bound with its cofactor t_j gives n/d = r_j/t_j.
    Unique when 2·num_bound·den_bound < p (checked). Returns reduced fractions with
    d > 0 as object arrays of Python ints, in the shape of ``values``; raises
    ValueError if some value has no such fraction (the bounds or the field are wrong:
    never print a number that may be wrong).
    """
    num_bound, den_bound = int(num_bound), int(den_bound)
    if 2 * num_bound * den_bound >= p:
        raise ValueError(
            f"rational reconstruction needs p > 2·num_bound·den_bound: p has {p.bit_length()} "
            f"bits, the bounds need {(2 * num_bound * den_bound).bit_length() + 1}"
        )
    v = np.asarray(values, dtype=object)
    shape = v.shape
    v = np.array([int(a) % p for a in v.reshape(-1)], dtype=object)
    size = v.size
    out_num = np.zeros(size, dtype=object)
    out_den = np.zeros(size, dtype=object)
    idx = np.arange(size)
    r0 = np.full(size, p, dtype=object)
    r1 = v
    t0 = np.zeros(size, dtype=object)
    t1 = np.ones(size, dtype=object)
    r0, r1, t0, t1 = _lehmer(r0, r1, t0, t1, max(num_bound.bit_length() + 2, _LEHMER_BITS + 1))
    while idx.size:
        done = r1 <= num_bound
        if done.any():
            out_num[idx[done]] = r1[done]
            out_den[idx[done]] = t1[done]
            keep = ~done
            idx, r0, r1, t0, t1 = idx[keep], r0[keep], r1[keep], t0[keep], t1[keep]
            if not idx.size:
                break
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        t0, t1 = t1, t0 - q * t1
    negative = out_den < 0
    out_num[negative] = -out_num[negative]
    out_den[negative] = -out_den[negative]
    bad = (out_den > den_bound) | (np.gcd(out_num, out_den) != 1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {size} values have no fraction with |num| ≤ {num_bound} and "
            f"0 < den ≤ {den_bound} (bounds too small for the data, or a wrong field)"
        )
    return out_num.reshape(shape), out_den.reshape(shape)


_LEHMER_BITS = 61  # leading bits simulated in int64 (x̂ + A < 2^62 cannot overflow)
_bit_length = np.frompyfunc(int.bit_length, 1, 1)


def _lehmer(
    r0: np.ndarray, r1: np.ndarray, t0: np.ndarray, t1: np.ndarray, min_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Euclid steps in bulk (Lehmer, Knuth's Algorithm L) while r1 has ≥ min_bits bits.

    Runs the quotient sequence on the leading 61 bits of (r0, r1) in int64, vectorised
    over the elements, as long as Knuth's test proves each quotient exact, then
    applies the accumulated 2×2 matrix to (r0, r1) and (t0, t1) at once: a few
    big-integer products per ~30 bits instead of a division per step. A batch whose
    new r1 would have at most ``min_bits`` bits is dropped for that element (the plain
    loop then does those steps), so the caller's "first r_j ≤ bound" stays exact.
    """
    r0, r1, t0, t1 = r0.copy(), r1.copy(), t0.copy(), t1.copy()
    live = np.flatnonzero(_bit_length(r1).astype(np.int64) > min_bits)
    while live.size:
        u, v = r0[live], r1[live]
        shift = _bit_length(u) - _LEHMER_BITS
        xh = (u >> shift).astype(np.int64)
        yh = (v >> shift).astype(np.int64)
        a = np.ones(live.size, np.int64)
        b = np.zeros(live.size, np.int64)
        c = np.zeros(live.size, np.int64)
        d = np.ones(live.size, np.int64)
        going = np.ones(live.size, bool)
        while going.any():
            yc, yd = yh + c, yh + d
            going &= (yc != 0) & (yd != 0)
            q = (xh + a) // np.where(going, yc, 1)
            going &= q == (xh + b) // np.where(going, yd, 1)
            q = np.where(going, q, 0)  # no overflow from the stopped elements
            a, c = np.where(going, c, a), np.where(going, a - q * c, c)
            b, d = np.where(going, d, b), np.where(going, b - q * d, d)
            xh, yh = np.where(going, yh, xh), np.where(going, xh - q * yh, yh)
        moved = b != 0  # B = 0: no exact quotient in 61 bits (a huge one): plain loop
        if not moved.any():
            break
        live, u, v = live[moved], u[moved], v[moved]
        a, b, c, d = (m[moved].astype(object) for m in (a, b, c, d))
        new_r1 = c * u + d * v
        ok = _bit_length(new_r1).astype(np.int64) > min_bits
        live, a, b, c, d = live[ok], a[ok], b[ok], c[ok], d[ok]
        u, v, new_r1 = u[ok], v[ok], new_r1[ok]
        w0, w1 = t0[live], t1[live]
        r0[live], r1[live] = a * u + b * v, new_r1
        t0[live], t1[live] = a * w0 + b * w1, c * w0 + d * w1
        live = live[_bit_length(new_r1).astype(np.int64) > min_bits]
    return r0, r1, t0, t1


# --------------------------------------------------------------------------- share level


async def _shares(mpc: Any, x: Any) -> tuple[MpcType, np.ndarray]:
    """This party's shares of a secure array: (field, object array of ints in [0, p)).

    The share-level code works on raw ints and reduces mod p once per inner product
    instead of after every operation.
    """
    shares = await mpc.gather(x) if isinstance(x, mpc.SecureArray) else x
    return shares.field, shares.value


async def _randoms(mpc: Any, field: MpcType, n: int) -> np.ndarray:
    """Shares of n uniformly random field elements (PRSS: no communication)."""
    r = mpc._np_randoms(field, n)
    if mpc.options.no_prss:
        r = await r
    return r.value


async def _reshare(mpc: Any, field: MpcType, local: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Degree-2t local products (sums of products) back to degree-t shares, in one round.

    ``local`` are equally long 1-D raw int arrays; they travel as one message.
    """
    z = np.concatenate(local) % field.order
    if mpc.threshold and z.size:
        z = (await mpc._reshare(field.array(z, check=False))).value
    size = z.size // len(local)
    return [z[i * size : (i + 1) * size] for i in range(len(local))]


async def _open_products(mpc: Any, field: MpcType, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Open a·b elementwise for degree-t shares a, b (raw ints) without resharing a·b.

    The local product is a degree-2t sharing whose polynomial is not uniformly random;
    adding a pseudorandom degree-2t sharing of zero makes it so, and opening it then
    reveals a·b only (MPyC's ``np_random_bits`` opens its squares the same way).
    Without PRSS the product is reshared first. Returns ints in [0, p).
    """
    p = field.order
    if a.size == 0:
        return np.zeros(a.shape, dtype=object)
    t = mpc.threshold
    if t == 0:
        opened = await mpc.output(field.array(a * b % p, check=False))
    elif mpc.options.no_prss:
        (z,) = await _reshare(mpc, field, [a * b])
        opened = await mpc.output(field.array(z, check=False))
    else:
        from mpyc import thresha

        zero = thresha.np_pseudorandom_share_0(
            field, len(mpc.parties), mpc.pid, mpc.prfs(p), mpc._prss_uci(), a.size
        )
        z = field.array((a * b + zero.value) % p, check=False)
        opened = await mpc.output(z, threshold=2 * t)
    return opened.value


def _inverse(values: np.ndarray, p: int) -> np.ndarray:
    """Elementwise inverses mod p of nonzero ints (gmpy2: ~10× faster than pow(x, -1, p))."""
    import gmpy2

    return np.array([int(gmpy2.invert(int(u), p)) for u in values], dtype=object)


def _balanced_bound(p: int) -> int:
    return math.isqrt((p - 1) // 2) // 2


async def _open_ratio_shares(
    mpc: Any,
    field: MpcType,
    num: Any,
    den: np.ndarray,
    num_bound: int,
    den_bound: int,
    r: np.ndarray | None = None,
    *,
    den_nonzero: bool = False,
) -> Ratio:
    """Open num/den (raw 1-D shares) as exact reduced fractions.

    Opens den·r first for a fresh secret random r: zero exactly where den = 0, which
    makes that variant NA (0/0) and opens nothing more about it; elsewhere den·r is
    uniform and independent of den. Then num·r is opened for the other variants only
    and num/den = (num·r)·(den·r)⁻¹ mod p is reconstructed. Leak: the NA pattern and
    the fraction, nothing else. Returns a :class:`Ratio`.

    With ``r`` given (shares of the mask of den), ``num`` is a pair (x, y) of shares
    with x·y = num·r: K of ``--assoc`` opens (n1·n2)·(N·r), three factors. Where den
    is known not to be 0 (``den_nonzero``), den·r and num·r are opened together.
    """
    p = field.order
    if r is None:
        r = await _randoms(mpc, field, den.size)
        num = (num, r)
    out_num = np.zeros(den.size, dtype=object)
    out_den = np.zeros(den.size, dtype=object)
    if den_nonzero:
        both = await _open_products(
            mpc, field, np.concatenate([den, num[0]]), np.concatenate([r, num[1]])
        )
        den_r, num_r = both[: den.size], both[den.size :]
        if not np.all(den_r != 0):
            raise ValueError("a denominator said to be nonzero is 0")
        ok = np.arange(den.size)
    else:
        den_r = await _open_products(mpc, field, den, r)
        ok = np.flatnonzero(den_r != 0)  # den·r = 0 iff den = 0 (r = 0: probability 1/p)
    if ok.size:
        if not den_nonzero:
            num_r = await _open_products(mpc, field, num[0][ok], num[1][ok])
        x = num_r * _inverse(den_r[ok], p) % p
        out_num[ok], out_den[ok] = rational_reconstruct(x, p, num_bound, den_bound)
    return Ratio(out_num, out_den)


async def _open_ints(mpc: Any, x: Any) -> np.ndarray:
    """Open a secure integer array as signed Python ints (what PLINK prints anyway)."""
    field, values = await _shares(mpc, x)
    opened = (await mpc.output(field.array(values.reshape(-1), check=False))).value
    p = field.order
    return np.array([v - p if v > p // 2 else v for v in opened], dtype=object)


# --------------------------------------------------------------------------- allele counts


def _max_alleles(stype: MpcType, max_alleles: int | None) -> int:
    return (1 << stype.bit_length) if max_alleles is None else int(max_alleles)


async def secure_assoc(
    mpc: Any,
    a_case: Any,
    n_case: Any,
    a_ctrl: Any,
    n_ctrl: Any,
    *,
    swap: np.ndarray | None = None,
    max_alleles: int | None = None,
) -> AssocResult:
    """PLINK ``--assoc`` statistics of A1 from secret allele counts (1-D secure arrays).

    a = ``a_case`` A1 alleles among ``n_case`` called case alleles, c = ``a_ctrl`` of
    ``n_ctrl``; b = n_case − a, d = n_ctrl − c, N = n_case + n_ctrl. Opens exactly
    F_A = a/n_case and F_U = c/n_ctrl, and K = N·n_case·n_ctrl / ((a+c)·(b+d)) where
    F_A ≠ F_U, each as an exact fraction (:func:`_open_ratio_shares`). The rest follows in the
    clear, so it says nothing more:

    - OR = ad/(bc) = F_A·(1 − F_U) / ((1 − F_A)·F_U), NA where that denominator is 0;
    - CHISQ = N(ad − bc)²/(n_case·n_ctrl·(a+c)·(b+d)) = K·(F_A − F_U)², since
      ad − bc = n_case·n_ctrl·(F_A − F_U); K is CHISQ/(F_A − F_U)², so it is opened only
      where F_A ≠ F_U. Elsewhere CHISQ is 0, or NA where no A1 or no A2 was called
      (F_A = F_U = 0 or 1) or a class has no call (F NA).

    Public ``swap`` bits (the session's founder signs) make A1 the other allele:
    F ↦ 1 − F in the clear, which is what a ↦ n_case − a and c ↦ n_ctrl − c do
    (K and CHISQ do not change). The exact fractions F_A and F_U say more than PLINK's
    4 significant digits (e.g. the called allele count when the fraction is in lowest
    terms); the protocol documents this.

    Cost per variant: 3 reshared products in one round and 6 opened masked products.
    Needs a field of :func:`assoc_field_bits` (max_alleles) bits.
    """
    stype = type(a_case).sectype
    n_max = _max_alleles(stype, max_alleles)
    field = stype.field
    p = field.order
    k_num_bound, k_den_bound = _k_bounds(n_max)
    if 2 * k_num_bound * k_den_bound >= p:
        raise ValueError(
            f"field of {p.bit_length()} bits is too small for CHISQ with up to {n_max} alleles: "
            f"needs {assoc_field_bits(n_max)} bits (see assoc_field_bits)"
        )
    a, n1, c, n2 = [
        (await _shares(mpc, x))[1].reshape(-1) for x in (a_case, n_case, a_ctrl, n_ctrl)
    ]
    total, m1 = n1 + n2, a + c
    r = await _randoms(mpc, field, a.size)
    n12, m12, total_r = await _reshare(mpc, field, [n1 * n2, m1 * (total - m1), total * r])
    size = a.size
    freqs = await _open_ratio_shares(
        mpc, field, np.concatenate([a, c]), np.concatenate([n1, n2]), n_max, n_max
    )
    f_a = Ratio(freqs.num[:size], freqs.den[:size])
    f_u = Ratio(freqs.num[size:], freqs.den[size:])
    if swap is not None:
        f_a, f_u = (_complement(f, np.asarray(swap, dtype=bool).reshape(-1)) for f in (f_a, f_u))
    fa, fu = f_a.num * f_u.den, f_u.num * f_a.den  # F_A, F_U over one denominator
    called = ~f_a.na & ~f_u.na
    differ = np.flatnonzero(called & (fa != fu))
    # K's denominator (a+c)(b+d) is not 0 where F_A ≠ F_U: open both products at once.
    k = await _open_ratio_shares(
        mpc, field, (n12[differ], total_r[differ]), m12[differ], k_num_bound, k_den_bound,
        r=r[differ], den_nonzero=True,
    )  # fmt: skip
    chisq_num = np.zeros(a.size, dtype=object)
    chisq_den = np.zeros(a.size, dtype=object)
    both = f_a.den * f_u.den
    chisq_num[differ] = k.num * (fa[differ] - fu[differ]) ** 2
    chisq_den[differ] = k.den * both[differ] ** 2
    polymorphic = called & (fa == fu) & (f_a.num != 0) & (f_a.num != f_a.den)
    chisq_den[polymorphic] = 1  # F_A = F_U strictly between 0 and 1: CHISQ = 0
    odds_num = np.where(called, f_a.num * (f_u.den - f_u.num), 0)
    odds_den = np.where(called, (f_a.den - f_a.num) * f_u.num, 0)
    return AssocResult(
        f_a=f_a,
        f_u=f_u,
        chisq=_reduced(chisq_num, chisq_den),
        odds_ratio=_reduced(odds_num, odds_den),
    )


def _complement(f: Ratio, where: np.ndarray) -> Ratio:
    """1 − f where set (NA stays NA): the other allele's frequency."""
    num = np.where(where & ~f.na, f.den - f.num, f.num)
    return Ratio(num.astype(object), f.den)


def _reduced(num: np.ndarray, den: np.ndarray) -> Ratio:
    """num/den in lowest terms with den > 0; den = 0 stays 0/0 (NA)."""
    num, den = np.asarray(num, dtype=object), np.asarray(den, dtype=object)
    g = np.gcd(num, den)
    g[den == 0] = 1
    num, den = num // g, den // g
    num[den == 0] = 0
    negative = den < 0
    return Ratio(np.where(negative, -num, num), np.where(negative, -den, den))


# --------------------------------------------------------------------------- linear regression


def _minors_stepwise(
    targets: Sequence[tuple[Sequence[int], Sequence[int]]],
    entry: Callable[[int, int], Any],
    mul: Callable[[Any, Any], Any],
) -> Generator[list[Any], list[Any], list[Any]]:
    """Generator form of :func:`_async_minors`: yields each level's local sums."""
    canonical = []
    for rows, cols in targets:
        order = sorted(range(len(cols)), key=lambda i: cols[i])
        canonical.append((tuple(rows), tuple(cols[i] for i in order), _perm_sign(order)))
    needed: dict[int, set[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    stack = [(rows, cols) for rows, cols, _ in canonical]
    while stack:
        rows, cols = stack.pop()
        level = needed.setdefault(len(rows), set())
        if (rows, cols) in level:
            continue
        level.add((rows, cols))
        if len(rows) > 1:
            stack.extend((rows[:-1], cols[:j] + cols[j + 1 :]) for j in range(len(cols)))
    value: dict[tuple[tuple[int, ...], tuple[int, ...]], Any] = {}
    for rows, cols in needed.get(1, ()):
        value[rows, cols] = entry(rows[0], cols[0])
    for k in sorted(needed):
        if k == 1:
            continue
        keys = sorted(needed[k])
        local = []
        for rows, cols in keys:
            acc = None
            for j in range(k):
                term = mul(entry(rows[-1], cols[j]), value[rows[:-1], cols[:j] + cols[j + 1 :]])
                if (k - 1 + j) % 2:
                    term = -term
                acc = term if acc is None else acc + term
            local.append(acc)
        reduced = yield local
        for key, v in zip(keys, reduced, strict=True):
            value[key] = v
    return [value[rows, cols] if sign > 0 else -value[rows, cols] for rows, cols, sign in canonical]


def _perm_sign(order: Sequence[int]) -> int:
    """Sign of a permutation given as a list of images."""
    sign, seen = 1, [False] * len(order)
    for i in range(len(order)):
        if seen[i]:
            continue
        j, length = i, 0
        while not seen[j]:
            seen[j] = True
            j = order[j]
            length += 1
        if length % 2 == 0:
            sign = -sign
    return sign


def linear_targets(k: int, test_index: int = 1) -> list[tuple[list[int], list[int]]]:
    """The three minors of the augmented Gram matrix [[XᵀX, Xᵀy], [yᵀX, yᵀy]] (y = index k).

    In order: det(XᵀX); b = det of XᵀX with the test column replaced by Xᵀy (Cramer:
    BETA = b/det); C = Gram determinant of [X without the test column, y]. All rows are
    listed as (other columns..., last) so that the three share every smaller minor.
    (adj_tt·RSS·det = C·det − b² by the Desnanot–Jacobi identity, so adj_tt itself is
    never needed.)
    """
    others = [j for j in range(k) if j != test_index]
    return [
        ([*others, test_index], [*others, test_index]),
        ([*others, test_index], [*others, k]),
        ([*others, k], [*others, k]),
    ]


async def secure_linear(
    mpc: Any,
    n: Any,
    xtx: Any,
    xty: Any,
    yty: Any,
    *,
    bounds: LinearBounds | None = None,
    test_index: int = 1,
    beta_scale: Fraction | int = 1,
    swap: np.ndarray | None = None,
    se2: bool = False,
) -> LinearResult:
    """PLINK ``--linear`` ADD statistics from secret integer cross products.

    Per variant: ``n`` samples, ``xtx`` (V, k, k) = XᵀX, ``xty`` (V, k) = Xᵀy, ``yty``
    (V,) = yᵀy, with X = [intercept, ADD, covariates...] and y scaled by the sites to
    integers (x·2^f rounded), so the statistics are exact for the rounded data.
    With d = det(XᵀX), b the Cramer numerator of the test column and C the Gram
    determinant of [X without it, y]: BETA = b/d, RSS = (C·d − b²)/(d·adj_tt) and
    T² = BETA²/(RSS/(n−k)·adj_tt/d) = (n − k)·b²/(C·d − b²). NA (both BETA and T²)
    exactly where C·d − b² = 0, i.e. d = 0 or RSS = 0; only that bit is opened there.

    Opened: NMISS = n (PLINK prints it; it fixes the t distribution's df), T², and
    BETA; BETA's fraction is multiplied by ``beta_scale`` (e.g. 2^-f when only y
    was scaled by 2^f). Cost per variant: the minors, 3/8/19/42/89 reshared inner
    products for k = 2/3/4/5/6 in k − 1 rounds, 2 more reshares, 5 opened values.
    Pass ``bounds`` from :func:`linear_bounds` (checked against the field); without
    them the rational reconstruction assumes balanced magnitudes up to √(p/8).

    ``swap`` (public bits, e.g. the session's founder signs) recodes the ADD column
    (index ``test_index``, unscaled allele counts next to an unscaled intercept in
    column 0) as g' = 2 − g where set: x' = T·x with T the identity but row t =
    (2, 0, .., −1, ..), so XᵀX' = T·XᵀX·Tᵀ and Xᵀy' = T·Xᵀy, on the shares.

    ``se2`` opens BETA and its squared standard error SE² = (C·d − b²)/(d²·(n − k))
    instead of T² (PLINK's quantitative ``--assoc`` prints SE; T = BETA/SE), both NA
    exactly where d = 0; SE² is scaled by ``beta_scale``² like BETA².
    """
    nmiss = np.array(await _open_ints(mpc, n), dtype=np.int64)
    field, xtx_v = await _shares(mpc, xtx)
    _, xty_v = await _shares(mpc, xty)
    _, yty_v = await _shares(mpc, yty)
    yty_v = yty_v.reshape(-1)
    p = field.order
    size, k = xtx_v.shape[0], xtx_v.shape[-1]
    if bounds is not None and bounds.field_bits > p.bit_length():
        raise ValueError(
            f"field of {p.bit_length()} bits is too small for these regression bounds: "
            f"needs {bounds.field_bits} bits (see linear_bounds)"
        )

    if swap is not None:
        xtx_v, xty_v = _swap_allele(xtx_v, xty_v, np.asarray(swap, bool).reshape(-1), test_index)

    def entry(i: int, j: int) -> np.ndarray:
        i, j = min(i, j), max(i, j)  # XᵀX is symmetric: read one triangle only
        if j < k:
            return xtx_v[:, i, j]
        if i < k:
            return xty_v[:, i]
        return yty_v

    async def reshared(local: list[np.ndarray]) -> list[np.ndarray]:
        return await _reshare(mpc, field, local)

    det, b, gram_c = await _async_minors(linear_targets(k, test_index), entry, reshared)
    df = (nmiss.astype(object) - k) % p
    if se2:
        return await _open_beta_se2(
            mpc, field, nmiss, det, b, gram_c, df, bounds, k, Fraction(beta_scale)
        )
    t2_den, b2 = await _reshare(mpc, field, [gram_c * det - b * b, b * b])
    if bounds is None:
        beta_num_b = beta_den_b = t2_num_b = t2_den_b = _balanced_bound(p)
    else:
        beta_num_b, beta_den_b = bounds.beta_num, bounds.beta_den
        t2_num_b, t2_den_b = bounds.t2_num, bounds.t2_den
    t2 = await _open_ratio_shares(mpc, field, b2 * df % p, t2_den, t2_num_b, t2_den_b)
    ok = np.flatnonzero(~t2.na)
    beta_num = np.zeros(size, dtype=object)
    beta_den = np.zeros(size, dtype=object)
    if ok.size:
        beta = await _open_ratio_shares(mpc, field, b[ok] % p, det[ok] % p, beta_num_b, beta_den_b)
        scale = Fraction(beta_scale)
        num = beta.num * scale.numerator
        den = beta.den * scale.denominator
        g = np.gcd(num, den)
        beta_num[ok], beta_den[ok] = num // g, den // g
    return LinearResult(nmiss=nmiss, beta=Ratio(beta_num, beta_den), t2=t2, n_params=k)


async def _open_beta_se2(
    mpc: Any,
    field: MpcType,
    nmiss: np.ndarray,
    det: np.ndarray,
    b: np.ndarray,
    gram_c: np.ndarray,
    df: np.ndarray,
    bounds: LinearBounds | None,
    k: int,
    scale: Fraction,
) -> LinearResult:
    """BETA = b/d and SE² = (C·d − b²)/(d²·df) as fractions, scaled; NA where d = 0."""
    p = field.order
    rss_num, det2 = await _reshare(mpc, field, [gram_c * det - b * b, det * det])
    if bounds is None:
        beta_b = se2_b = (_balanced_bound(p), _balanced_bound(p))
    else:
        beta_b, se2_b = (bounds.beta_num, bounds.beta_den), (bounds.se2_num, bounds.se2_den)
    beta = await _open_ratio_shares(mpc, field, b % p, det % p, *beta_b)
    se2 = await _open_ratio_shares(mpc, field, rss_num % p, det2 * df % p, *se2_b)
    return LinearResult(
        nmiss=nmiss,
        beta=_scaled(beta, scale),
        t2=None,
        n_params=k,
        se2=_scaled(se2, scale * scale),
    )


def _scaled(r: Ratio, scale: Fraction) -> Ratio:
    """``r`` times ``scale``, reduced (NA stays 0/0)."""
    return _reduced(r.num * scale.numerator, r.den * scale.denominator)


def _swap_allele(
    xtx: np.ndarray, xty: np.ndarray, swap: np.ndarray, t: int
) -> tuple[np.ndarray, np.ndarray]:
    """XᵀX and Xᵀy (raw shares, any int range) for g' = 2·x_0 − g in column t where set."""
    xtx, xty = xtx.copy(), xty.copy()
    a, y = xtx[swap], xty[swap]
    row = 2 * a[:, 0, :] - a[:, t, :]  # row t of T·XᵀX
    new = a.copy()
    new[:, t, :] = row
    new[:, :, t] = row
    new[:, t, t] = 2 * row[:, 0] - row[:, t]  # (T·XᵀX·Tᵀ)_tt
    xtx[swap] = new
    y = y.copy()
    y[:, t] = 2 * y[:, 0] - y[:, t]
    xty[swap] = y
    return xtx, xty


async def _async_minors(targets: Any, entry: Any, reshared: Any) -> list[Any]:
    """Determinants of the submatrices ``M[rows, cols]`` (ordered) named in ``targets``.

    Laplace expansion along the last listed row, memoised on (row prefix, column
    set): the minors of one size form one batch, so in MPC a level costs one reshare
    per minor (an inner product), however many products it sums. ``entry(i, j)``
    gives M[i, j]; ``reshared(list)`` (awaited) turns a level's local results into usable
    values (a reshare in MPC; the identity in the clear, so the same code is checked
    against NumPy on plain integers).
    """
    steps = _minors_stepwise(targets, entry, operator.mul)
    local = next(steps)
    while True:
        try:
            local = steps.send(await reshared(local))
        except StopIteration as stop:
            return stop.value


# --------------------------------------------------------------------------- logistic regression


@dataclass(frozen=True)
class NewtonBounds:
    """Magnitude bounds of what :func:`secure_newton_step` opens, for a field size.

    Columns |x_j| ≤ B_j, n samples, entries scaled by 2^s: Hessian entries
    |H_ij| ≤ n·B_i·B_j·2^s/4 (π(1 − π) ≤ 1/4), gradient |g_i| ≤ n·B_i·2^s (|y − π| ≤ 1).
    det(H) ≤ Π H_ii (H is a Gram matrix); a Cramer numerator, H with one column
    replaced by g, is at most the product of its column norms (Hadamard); the cofactor
    of the test column is a principal minor, at most the product of the other diagonals.
    """

    step_num: int
    det: int
    cofactor: int

    @property
    def field_bits(self) -> int:
        need = max(2 * self.step_num * self.det, 2 * self.cofactor * self.det)
        return need.bit_length() + 1


def newton_bounds(
    n_max: int, col_bounds: Sequence[int], scale_bits: int, test_index: int = 1
) -> NewtonBounds:
    """:class:`NewtonBounds` for design columns bounded by ``col_bounds``."""
    scale = 1 << scale_bits
    diag = [n_max * b * b * scale // 4 + 1 for b in col_bounds]
    norm_b = math.isqrt(sum(b * b for b in col_bounds)) + 1
    column = [n_max * b * norm_b * scale // 4 + 1 for b in col_bounds]
    gradient = n_max * norm_b * scale + 1
    step = max(math.prod(c for i, c in enumerate(column) if i != j) for j in range(len(column)))
    det = math.prod(diag)
    return NewtonBounds(step_num=step * gradient, det=det, cofactor=det // diag[test_index] + 1)


def newton_targets(k: int, test_index: int = 1) -> list[tuple[list[int], list[int]]]:
    """Minors of M = [H | g] (k × (k+1), g = column k): det(H), then for each j the
    Cramer numerator det(H with column j replaced by g), then the cofactor of
    ``test_index`` (H without that row and column). Rows in one order throughout, so
    the expansions share every smaller minor."""
    rows = list(range(k))
    out = [(rows, rows)]
    out += [(rows, [k if c == j else c for c in rows]) for j in range(k)]
    others = [i for i in rows if i != test_index]
    out.append((others, others))
    return out


async def secure_newton_step(
    mpc: Any,
    hess: Any,
    grad: Any,
    *,
    bounds: NewtonBounds | None = None,
    test_index: int = 1,
) -> tuple[list[Ratio], Ratio]:
    """One Newton step of logistic regression from secret Hessians and gradients.

    Per variant ``hess`` (V, k, k) = Σπ(1 − π)xxᵀ and ``grad`` (V, k) = Σ(y − π)x, as
    integers (the same power-of-two scale on both). Opens the step H⁻¹g, one exact
    fraction per coefficient (Cramer's rule; the step is the change of the coefficient
    vector, which is revealed anyway), and (H⁻¹)_tt = cofactor/det, the squared
    standard error of the test coefficient at these coefficients times the scale. NA
    (0/0) where det(H) = 0. Nothing else about H or g is opened.
    """
    field, h = await _shares(mpc, hess)
    _, g = await _shares(mpc, grad)
    p = field.order
    k = h.shape[-1]
    if bounds is not None and bounds.field_bits > p.bit_length():
        raise ValueError(
            f"field of {p.bit_length()} bits is too small for these Newton bounds: "
            f"needs {bounds.field_bits} bits (see newton_bounds)"
        )

    def entry(i: int, j: int) -> np.ndarray:
        if j == k:
            return g[:, i]
        i, j = min(i, j), max(i, j)  # H is symmetric: read one triangle only
        return h[:, i, j]

    async def reshared(local: list[np.ndarray]) -> list[np.ndarray]:
        return await _reshare(mpc, field, local)

    minors = await _async_minors(newton_targets(k, test_index), entry, reshared)
    det, numerators, cofactor = minors[0], minors[1 : k + 1], minors[k + 1]
    if bounds is None:
        step_b = var_b = (_balanced_bound(p), _balanced_bound(p))
    else:
        step_b, var_b = (bounds.step_num, bounds.det), (bounds.cofactor, bounds.det)
    steps = [await _open_ratio_shares(mpc, field, num % p, det % p, *step_b) for num in numerators]
    var = await _open_ratio_shares(mpc, field, cofactor % p, det % p, *var_b)
    return steps, var


# --------------------------------------------------------------------------- field conversion


async def convert_field(mpc: Any, x: Any, target: MpcType, bits: int) -> Any:
    """The values of secure integer array ``x`` (|x| < 2^(bits-1)) in ``target``'s field.

    Sites share their wide statistics as integers in a modest field (few bytes per
    value); the determinants need a far wider one. The conversion is MPyC's
    ``convert`` on whole arrays: a random r < 2^(bits + k) that every party holds
    shares of in *both* fields comes from pseudorandom secret sharing without any
    communication (the same PRF values, combined with each field's Shamir weights);
    x + r is opened in the small field (statistically hiding x, k = MPyC's security
    parameter) and r is subtracted in the target field. One opening per value.
    """
    field, xv = await _shares(mpc, x)
    target_field = target.field
    m, t = len(mpc.parties), mpc.threshold
    k = mpc.options.sec_param
    if (bits + k + 2) > field.order.bit_length():
        raise ValueError(
            f"{bits}-bit values do not convert from a {field.order.bit_length()}-bit field"
        )
    if mpc.options.no_prss:
        raise ValueError("convert_field draws its masks by PRSS: run MPyC without --no-prss")
    from mpyc import thresha

    bound = (1 << (k + bits)) // math.comb(m, t) + 1
    prfs = mpc.prfs(bound)
    uci = mpc._prss_uci()  # one unique input: the same r in both fields
    draws = [(subset, prf(uci, xv.shape)) for subset, prf in prfs.items()]

    def share_of_r(f: MpcType) -> np.ndarray:
        total = np.zeros(xv.shape, dtype=object)
        for subset, r in draws:
            total = total + r * int(thresha._f_S_i(f, m, mpc.pid, subset))
        return total % f.order

    offset = 1 << (bits - 1)
    masked = field.array((xv + offset + share_of_r(field)) % field.order, check=False)
    opened = (await mpc.output(masked)).value
    p = target_field.order
    y = (opened - offset - share_of_r(target_field)) % p
    return target.array(target_field.array(y, check=False))
