"""PLINK's ``--linear`` ADD statistics inside MPyC: NMISS, BETA and T² (or SE²) opened exactly."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from smpc.mpc.mpyc_adapter import MpcType
from smpc.protocols.gwas.mpc.bounds import LinearBounds
from smpc.protocols.gwas.mpc.minors import async_minors
from smpc.protocols.gwas.mpc.rational import Ratio, balanced_bound, reduced
from smpc.protocols.gwas.mpc.shares import open_ints, open_ratio_shares, raw_shares, reshare

__all__ = ["LinearResult", "linear_targets", "secure_linear"]


@dataclass(frozen=True)
class LinearResult:
    """PLINK ``--linear`` ADD row: NMISS, BETA, STAT (t) and P."""

    nmiss: np.ndarray  # int64: samples in the regression (PLINK prints it)
    beta: Ratio  # in the caller's units (``beta_scale`` applied); NA with t2
    t2: Ratio | None  # squared t statistic; NA when det(XᵀX) = 0 or RSS = 0
    n_params: int
    se2: Ratio | None = None  # with ``se2=True`` instead of t2: BETA's squared standard
    # error, NA (as BETA) only when det(XᵀX) = 0; in the caller's units


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
    Pass ``bounds`` from :func:`.bounds.linear_bounds` (checked against the field); without
    them the rational reconstruction assumes balanced magnitudes up to √(p/8).

    ``swap`` (public bits, e.g. the session's founder signs) recodes the ADD column
    (index ``test_index``, unscaled allele counts next to an unscaled intercept in
    column 0) as g' = 2 − g where set: x' = T·x with T the identity but row t =
    (2, 0, .., −1, ..), so XᵀX' = T·XᵀX·Tᵀ and Xᵀy' = T·Xᵀy, on the shares.

    ``se2`` opens BETA and its squared standard error SE² = (C·d − b²)/(d²·(n − k))
    instead of T² (PLINK's quantitative ``--assoc`` prints SE; T = BETA/SE), both NA
    exactly where d = 0; SE² is scaled by ``beta_scale``² like BETA².
    """
    nmiss = np.array(await open_ints(mpc, n), dtype=np.int64)
    field, xtx_v = await raw_shares(mpc, xtx)
    _, xty_v = await raw_shares(mpc, xty)
    _, yty_v = await raw_shares(mpc, yty)
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
        return await reshare(mpc, field, local)

    det, b, gram_c = await async_minors(linear_targets(k, test_index), entry, reshared)
    df = (nmiss.astype(object) - k) % p
    if se2:
        return await _open_beta_se2(
            mpc, field, nmiss, det, b, gram_c, df, bounds, k, Fraction(beta_scale)
        )
    t2_den, b2 = await reshare(mpc, field, [gram_c * det - b * b, b * b])
    if bounds is None:
        beta_num_b = beta_den_b = t2_num_b = t2_den_b = balanced_bound(p)
    else:
        beta_num_b, beta_den_b = bounds.beta_num, bounds.beta_den
        t2_num_b, t2_den_b = bounds.t2_num, bounds.t2_den
    t2 = await open_ratio_shares(mpc, field, b2 * df % p, t2_den, t2_num_b, t2_den_b)
    ok = np.flatnonzero(~t2.na)
    beta_num = np.zeros(size, dtype=object)
    beta_den = np.zeros(size, dtype=object)
    if ok.size:
        beta = await open_ratio_shares(mpc, field, b[ok] % p, det[ok] % p, beta_num_b, beta_den_b)
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
    rss_num, det2 = await reshare(mpc, field, [gram_c * det - b * b, det * det])
    if bounds is None:
        beta_b = se2_b = (balanced_bound(p), balanced_bound(p))
    else:
        beta_b, se2_b = (bounds.beta_num, bounds.beta_den), (bounds.se2_num, bounds.se2_den)
    beta = await open_ratio_shares(mpc, field, b % p, det % p, *beta_b)
    se2 = await open_ratio_shares(mpc, field, rss_num % p, det2 * df % p, *se2_b)
    return LinearResult(
        nmiss=nmiss,
        beta=_scaled(beta, scale),
        t2=None,
        n_params=k,
        se2=_scaled(se2, scale * scale),
    )


def _scaled(r: Ratio, scale: Fraction) -> Ratio:
    """``r`` times ``scale``, reduced (NA stays 0/0)."""
    return reduced(r.num * scale.numerator, r.den * scale.denominator)


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
