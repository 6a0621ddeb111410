"""Exact fractions opened from a prime field: the Ratio type and rational reconstruction."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Ratio", "balanced_bound", "inverse", "rational_reconstruct", "reduced"]


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


def reduced(num: np.ndarray, den: np.ndarray) -> Ratio:
    """num/den in lowest terms with den > 0; den = 0 stays 0/0 (NA)."""
    num, den = np.asarray(num, dtype=object), np.asarray(den, dtype=object)
    g = np.gcd(num, den)
    g[den == 0] = 1
    num, den = num // g, den // g
    num[den == 0] = 0
    negative = den < 0
    return Ratio(np.where(negative, -num, num), np.where(negative, -den, den))


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


def inverse(values: np.ndarray, p: int) -> np.ndarray:
    """Elementwise inverses mod p of nonzero ints (gmpy2: ~10× faster than pow(x, -1, p))."""
    import gmpy2

    return np.array([int(gmpy2.invert(int(u), p)) for u in values], dtype=object)


def balanced_bound(p: int) -> int:
    return math.isqrt((p - 1) // 2) // 2
