"""PLINK 1.9 ``--linear`` / ``--logistic`` (``hide-covar``) from per-site sufficient statistics.

Every site reduces its own samples to per-variant sums; the sums are added across
sites (securely, elsewhere) and the association statistics are computed from the
totals, reproducing ``plink1.9 --bfile POOLED --linear|--logistic hide-covar`` on the
pooled samples (``.assoc.linear`` / ``.assoc.logistic`` ADD rows).

Data model
----------
- Genotypes, ``(n_samples, n_variants)``: the number of copies of A1, where A1 is the
  *pooled* minor allele (the final orientation). Either floating point with NaN for a
  missing call, or integers with any negative value (bed-reader's -127) for missing.
  A missing call drops that sample for that variant only (as PLINK).
- Covariates ``(n_samples, k)`` (``None`` or ``k = 0``: none) and the phenotype
  ``(n_samples,)`` are floats with NaN for missing; a sample with a missing phenotype
  or any missing covariate is dropped for all variants (PLINK does the same once
  ``-9`` and unparsable values are read as missing). Logistic phenotypes are 0/1
  (control/case).
- Design row x = [1, g, c_1..c_k] (p = k + 2 columns, PLINK's order: intercept,
  ADD, covariates).
- Linear, per variant: ``n`` (V,), ``xtx = Σ x xᵀ`` (V, p, p), ``xty = Σ x y``
  (V, p), ``yty = Σ y²`` (V,), over the kept samples with a call. Sums over samples,
  so sites' values add up (:meth:`LinearStats.__add__`).
- Logistic: PLINK's Newton–Raphson run by a coordinator. At coefficients ``beta``
  (V, p) every site returns ``n`` (V,), ``grad = Σ (y - π) x`` (V, p) and
  ``hess = Σ π(1 - π) x xᵀ`` (V, p, p) with π = 1/(1 + exp(-βᵀx)); the coordinator
  sums them (one round trip per iteration) and steps (:func:`logistic_fit`).
- Orientation: a site whose alleles are swapped relative to the pooled A1 has
  g' = 2 - g, i.e. x' = T x with T the identity except row 1 = (2, -1, 0, ..). Hence
  ``xtx' = T xtx Tᵀ``, ``xty' = T xty`` (:func:`flip_linear_stats`, exact, also on
  sums or shares). For logistic the site flips its genotypes before computing
  (:func:`flip_genotypes`) so its per-sample float32 arithmetic is exactly PLINK's.

PLINK 1.9 rules reproduced (``plink_glm.c``, v1.90b6.26)
--------------------------------------------------------
Linear (``glm_linear_assoc``/``glm_check_vif``/``glm_linear``), NA when:
n <= p; a non-intercept column has zero (or non-finite) variance; two non-intercept
columns have correlation > 0.999; their correlation matrix is singular or has a VIF
(diagonal of its inverse) > ``vif`` (``--vif``, default 50); XᵀX is singular;
S = (XᵀX)⁻¹ has S_ij > 0.99999·sqrt(S_ii S_jj) (i >= 1, j < i, signed) or
min_{i>=1} S_ii <= 0; σ² = RSS/(n - p) < 1e-20 / min_{i>=1} S_ii.
Otherwise SE = sqrt(σ² S_11), STAT = t = BETA/SE, P two-sided t with n - p df.

Logistic (``logistic_regression``/``glm_logistic``), single precision, start at 0:
each iteration solves H·d = Σ(π - y)x by PLINK's Cholesky (a negative pivot becomes
1e-6) and sets β -= d; with δ = Σ|d|: NaN δ fails; from iteration 5 on, δ > 20 and
δ > 2·min δ fails, or iteration >= 8 and |1 - δ| < 1e-3 fails; iteration 15 stops
(fails if any |β| > 8e3); otherwise δ < 1e-4 converges (fails if any |β| > 6e4).
Then S = H⁻¹ from the *last* Cholesky factor (Hessian before the final step); NA
when S_ii < 1e-20 (i >= 1) or not finite, or S_ij > 0.99999·sqrt(S_ii S_jj). No VIF
check for logistic. OR = exp(β_1), STAT = Wald z = β_1/sqrt(S_11), P = χ²₁ tail of z².
NA also when n <= p (no iteration). Sites compute each sample's π exactly as PLINK
(float32 covariates and linear predictor, PLINK's SSE exp, float32 1/(1+e)), so π
saturates at 1 where PLINK's does; the sums and the coordinator's Cholesky/solve
mirror PLINK's float32 steps (the sums themselves are float64).

P-values: t with n - p df as dcdflib's ``cdft`` (subnormal results included, and the
final ``2·(0.5·w)`` rounding); χ²₁ as ``erfc(|z|/√2)``, 0 once z²/2 > 708.39 (dcdflib).

Where PLINK's output is decided by float32 rounding noise
---------------------------------------------------------
- A logistic fit whose Hessian has a Cholesky pivot below the noise of PLINK's float32
  sums (pivot²/H_ii < sqrt(n)·2⁻²⁴; e.g. a variant nearly colinear with a covariate
  and separated along that direction) is NA: PLINK's iterations are then driven by
  rounding and almost always fail, while float64 sums would "converge". In such
  designs PLINK occasionally reports a number instead (|β| ~ 15, P ~ 0.98).
- Linear, exactly colinear designs that pass PLINK's VIF check only through rounding
  (a genotype constant among the kept samples, no covariates, at an n where
  (Σg·(1/n))·n ≠ Σg): PLINK prints meaningless values (|BETA| ~ 1e13) that cannot be
  reproduced from sums.
- Fits with R² within ~1e-10 of 1: RSS = yᵀy - βᵀXᵀy loses digits (last-digit STAT).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from smpc.protocols.gwas.plink.formats import fmt_g, plink_maxsnp, render_table
from smpc.protocols.gwas.plink.pvalues import chi2_1df, t_two_sided

# scipy is imported where P-values are computed: every uploader imports this module for
# its sufficient statistics only, and importing scipy.stats costs each one ~0.5 s of CPU.

__all__ = [
    "LOGISTIC_MAX_ITER",
    "VIF_DEFAULT",
    "LinearStats",
    "flip_genotypes",
    "flip_linear_stats",
    "linear_from_stats",
    "linear_site_stats",
    "logistic_fit",
    "logistic_site_stats",
    "write_linear",
    "write_logistic",
]

VIF_DEFAULT = 50.0
LOGISTIC_MAX_ITER = 15
"""PLINK 1.9 stops Newton–Raphson at iteration 15: at most 15 round trips to the sites."""

_SAMPLE_BLOCK = 512  # rows per matrix product: bounds memory to a few (block x V) arrays


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


class _GenotypeBlocks:
    """Kept rows of a genotype matrix, in blocks, as float64 ``(g with 0 at missing, mask)``.

    Yields ``(lo, hi, g0, called)`` with ``lo:hi`` the block's range among the kept
    samples. The (block x V) buffers are allocated once and reused, and the genotype
    matrix is never copied as a whole: at this size allocation and page faults cost
    more than the arithmetic.
    """

    def __init__(self, genotypes: np.ndarray, keep: np.ndarray, block: int = _SAMPLE_BLOCK):
        g = genotypes
        if not (np.issubdtype(g.dtype, np.floating) or np.issubdtype(g.dtype, np.integer)):
            raise TypeError(
                f"genotypes must be float (NaN missing) or int (<0 missing), not {g.dtype}"
            )
        self.g, self.keep, self.block = g, keep, block
        rows = min(block, g.shape[0])
        self._g0 = np.empty((rows, g.shape[1]))
        self._called = np.empty((rows, g.shape[1]))
        floating = np.issubdtype(g.dtype, np.floating)
        self._mask = np.empty((rows, g.shape[1]) if floating else 0, dtype=bool)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        lo = 0
        for start in range(0, self.g.shape[0], self.block):
            blk = self.g[start : start + self.block]
            kb = self.keep[start : start + self.block]
            if not kb.all():
                blk = blk[kb]
            m = blk.shape[0]
            if m == 0:
                continue
            g0, called = self._g0[:m], self._called[:m]
            if np.issubdtype(blk.dtype, np.floating):
                mask = self._mask[:m]
                np.isnan(blk, out=mask)
                np.logical_not(mask, out=mask)
                g0.fill(0.0)
                np.copyto(g0, blk, where=mask, casting="unsafe")
                np.copyto(called, mask)
            else:  # one pass each, straight into float64 (4x faster than through a mask)
                np.maximum(blk, 0, out=g0, casting="unsafe")
                np.greater_equal(blk, 0, out=called, casting="unsafe")
            yield lo, lo + m, g0, called
            lo += m


def _samples(
    genotypes: np.ndarray, covar: np.ndarray | None, pheno: np.ndarray
) -> tuple[_GenotypeBlocks, np.ndarray, np.ndarray]:
    """Keep samples with a phenotype and all covariates: (genotype blocks, B, y).

    B = [1, c_1..c_k] are the per-sample columns that do not depend on the variant.
    """
    g = np.asarray(genotypes)
    if g.ndim != 2:
        raise ValueError(f"genotypes must be (n_samples, n_variants), got shape {g.shape}")
    n = g.shape[0]
    y = np.asarray(pheno, dtype=np.float64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"pheno has {y.shape[0]} samples, genotypes {n}")
    c = np.zeros((n, 0)) if covar is None else np.asarray(covar, dtype=np.float64)
    if c.ndim == 1:
        c = c[:, None]
    if c.shape[0] != n:
        raise ValueError(f"covar has {c.shape[0]} samples, genotypes {n}")
    keep = ~np.isnan(y) & ~np.isnan(c).any(axis=1)
    b = np.concatenate([np.ones((int(keep.sum()), 1)), c[keep]], axis=1)
    return _GenotypeBlocks(g, keep), b, y[keep]


def _xindex(q: int) -> np.ndarray:
    """Design index of base column a (0 = intercept -> 0, covariate a >= 1 -> a + 1)."""
    return np.array([0, *range(2, q + 1)], dtype=np.int64)


# --------------------------------------------------------------------------------------
# Linear regression
# --------------------------------------------------------------------------------------


@dataclass
class LinearStats:
    """Per-variant cross products of x = [1, g, c...] and y over one or more sites."""

    n: np.ndarray  # (V,) samples with a call (and phenotype, covariates)
    xtx: np.ndarray  # (V, p, p)
    xty: np.ndarray  # (V, p)
    yty: np.ndarray  # (V,)

    @property
    def p(self) -> int:
        return int(self.xtx.shape[-1])

    def __add__(self, other: LinearStats) -> LinearStats:
        """Pooling: the statistics are sums over samples."""
        return LinearStats(
            self.n + other.n, self.xtx + other.xtx, self.xty + other.xty, self.yty + other.yty
        )

    @staticmethod
    def sum(parts: Sequence[LinearStats]) -> LinearStats:
        out = parts[0]
        for s in parts[1:]:
            out = out + s
        return out


def linear_site_stats(
    genotypes: np.ndarray, covar: np.ndarray | None, pheno: np.ndarray
) -> LinearStats:
    """One site's :class:`LinearStats` for a chunk of variants (see module docstring).

    Missing calls are handled by masks: every sum over "samples with a call" is a
    matrix product of per-sample products of base columns with the call mask, so the
    work is a few (block x V) BLAS products, not a loop over samples or variants.
    """
    blocks, b_all, y_all = _samples(genotypes, covar, pheno)
    v = blocks.g.shape[1]
    q = b_all.shape[1]
    p = q + 1
    iu, ju = np.triu_indices(q)
    n_pairs = iu.size
    acc_mask = np.zeros((n_pairs + q + 1, v))  # Σ over called: B_a B_b, B_a y, y²
    acc_g = np.zeros((q + 1, v))  # Σ B_a g, Σ y g
    acc_gg = np.zeros(v)  # Σ g²
    for start, stop, g0, called in blocks:
        b, y = b_all[start:stop], y_all[start:stop]
        w = np.concatenate([b[:, iu] * b[:, ju], b * y[:, None], (y * y)[:, None]], axis=1)
        acc_mask += w.T @ called
        acc_g += np.concatenate([b, y[:, None]], axis=1).T @ g0
        acc_gg += np.einsum("ij,ij->j", g0, g0)
    xi = _xindex(q)
    xtx = np.empty((v, p, p))
    pair = acc_mask[:n_pairs].T
    xtx[:, xi[iu], xi[ju]] = pair
    xtx[:, xi[ju], xi[iu]] = pair
    xtx[:, xi, 1] = acc_g[:q].T
    xtx[:, 1, xi] = acc_g[:q].T
    xtx[:, 1, 1] = acc_gg
    xty = np.empty((v, p))
    xty[:, xi] = acc_mask[n_pairs : n_pairs + q].T
    xty[:, 1] = acc_g[q]
    yty = acc_mask[n_pairs + q].copy()
    n = np.rint(xtx[:, 0, 0]).astype(np.int64)
    return LinearStats(n=n, xtx=xtx, xty=xty, yty=yty)


def _flip_matrix(p: int) -> np.ndarray:
    t = np.eye(p)
    t[1, 0], t[1, 1] = 2.0, -1.0
    return t


def flip_linear_stats(stats: LinearStats, flip_mask: np.ndarray) -> LinearStats:
    """Statistics with g replaced by 2 - g on the flagged variants (exact: x' = T x)."""
    f = np.asarray(flip_mask, dtype=bool)
    t = _flip_matrix(stats.p)
    xtx, xty = stats.xtx.copy(), stats.xty.copy()
    xtx[f] = t @ xtx[f] @ t.T
    xty[f] = xty[f] @ t.T
    return LinearStats(stats.n.copy(), xtx, xty, stats.yty.copy())


def _batched_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(inverse, ok)``: LAPACK getrf/getri as PLINK's ``invert_matrix``; NaN where singular.

    ``np.linalg.inv`` raises for the whole batch on one exactly singular matrix; the
    LU-based ``slogdet`` flags exactly those (zero pivot) without raising.
    """
    out = np.full_like(a, np.nan)
    with np.errstate(all="ignore"):
        finite = np.isfinite(a).all(axis=(-2, -1))
        sign = np.zeros(a.shape[0])
        if finite.any():
            sign[finite], _ = np.linalg.slogdet(a[finite])
        ok = finite & (sign != 0)
        if ok.any():
            out[ok] = np.linalg.inv(a[ok])
    return out, ok


def _vif_ok(xtx: np.ndarray, n: np.ndarray, vif: float) -> np.ndarray:
    """PLINK's ``glm_check_vif`` on the non-intercept columns, from the cross products.

    Same operation order as PLINK (mean = sum·(1/n); Σxx - (mean·n)·mean; ·1/(n-1)) so
    that exactly constant columns give exactly zero variance.
    """
    v, p = xtx.shape[0], xtx.shape[-1]
    m = p - 1
    ok = np.ones(v, dtype=bool)
    with np.errstate(all="ignore"):
        nd = n.astype(np.float64)
        mean = xtx[:, 0, 1:] * (1.0 / nd)[:, None]  # (V, m)
        dyy = mean * nd[:, None]
        recip_m1 = (1.0 / (nd - 1.0))[:, None, None]
        cov = (xtx[:, 1:, 1:] - dyy[:, :, None] * mean[:, None, :]) * recip_m1
        # PLINK fills the upper triangle and mirrors it
        iu, ju = np.triu_indices(m, 1)
        cov[:, ju, iu] = cov[:, iu, ju]
        diag = np.diagonal(cov, axis1=1, axis2=2)
        ok &= ~((diag == 0) | ~np.isfinite(diag)).any(axis=1)
        inv_sd = 1.0 / np.sqrt(diag)
        corr = cov[:, iu, ju] * inv_sd[:, ju] * inv_sd[:, iu]
        ok &= ~(corr > 0.999).any(axis=1)
        cm = np.broadcast_to(np.eye(m), (v, m, m)).copy()
        cm[:, iu, ju] = corr
        cm[:, ju, iu] = corr
        cm[~ok] = np.eye(m)
        inv, inv_ok = _batched_inverse(cm)
        ok &= inv_ok
        ok &= ~(np.diagonal(inv, axis1=1, axis2=2) > vif).any(axis=1)
    return ok


def _s_matrix_ok(s: np.ndarray, sqrt_diag: np.ndarray, factor: Any) -> np.ndarray:
    """PLINK's validParameters: no S_ij > 0.99999·sqrt(S_ii)·sqrt(S_jj), i >= 1, j < i."""
    p = s.shape[-1]
    il, jl = np.tril_indices(p, -1)
    with np.errstate(invalid="ignore"):
        bad = s[:, il, jl] > (factor * sqrt_diag[:, il]) * sqrt_diag[:, jl]
    return ~bad.any(axis=1)


def linear_from_stats(stats: LinearStats, vif: float = VIF_DEFAULT) -> dict[str, np.ndarray]:
    """ADD-term NMISS, BETA, SE, STAT, P (NaN where PLINK prints NA) from pooled sums.

    Also ``ok`` (bool): the regression passed every PLINK check.
    """
    n = np.asarray(stats.n, dtype=np.int64)
    xtx = np.asarray(stats.xtx, dtype=np.float64)
    xty = np.asarray(stats.xty, dtype=np.float64)
    yty = np.asarray(stats.yty, dtype=np.float64)
    v, p = xtx.shape[0], xtx.shape[-1]
    ok = n > p
    ok &= _vif_ok(xtx, n, vif)
    a = np.where(ok[:, None, None], xtx, np.eye(p))
    s, inv_ok = _batched_inverse(a)
    ok &= inv_ok
    beta = np.full((v, p), np.nan)
    with np.errstate(all="ignore"):
        if ok.any():
            beta[ok] = np.linalg.solve(a[ok], xty[ok][..., None])[..., 0]
        diag = np.diagonal(s, axis1=1, axis2=2)
        ok &= _s_matrix_ok(s, np.sqrt(diag), 0.99999)
        min_s = diag[:, 1:].min(axis=1)
        ok &= min_s > 0
        rss = yty - np.einsum("vi,vi->v", beta, xty)
        sigma = rss / (n - p).astype(np.float64)
        ok &= ~(sigma < 1e-20 / min_s) & np.isfinite(sigma)
        se = np.where(ok, np.sqrt(diag[:, 1] * sigma), np.nan)
        b1 = np.where(ok, beta[:, 1], np.nan)
        t = b1 / se
        df = np.maximum(n - p, 1).astype(np.float64)
        pval = np.where(ok, t_two_sided(t, df), np.nan)
    return {"NMISS": n, "BETA": b1, "SE": se, "STAT": t, "P": pval, "ok": ok}


# --------------------------------------------------------------------------------------
# Logistic regression
# --------------------------------------------------------------------------------------


# PLINK's fmath_exp_ps (a port of S. Mitsunari's table-based single-precision exp):
# mantissas of 2^(i/1024), and the float32 constants 2^10/ln 2 and ln 2/2^10.
_EXP_TABLE = (2.0 ** (np.arange(1024, dtype=np.float64) / 1024.0)).astype(np.float32).view(
    np.uint32
) & np.uint32(0x7FFFFF)
_EXP_A = np.array(0x44B8AA3B, dtype=np.uint32).view(np.float32)
_EXP_B = np.array(0x3A317218, dtype=np.uint32).view(np.float32)


def _plink_expf(x: np.ndarray) -> np.ndarray:
    """PLINK 1.9's SSE ``exp`` on float32 (x clamped to [-88, 88]), bit for bit."""
    x = np.clip(x, np.float32(-88.0), np.float32(88.0))
    rr = np.rint(x * _EXP_A).astype(np.int32)  # cvtps2dq: round half to even
    tt = (x - rr.astype(np.float32) * _EXP_B) + np.float32(1.0)
    u = ((rr + np.int32(127 << 10)).view(np.uint32) >> np.uint32(10)) << np.uint32(23)
    t0 = (_EXP_TABLE[rr & 0x3FF] | u).view(np.float32)
    return tt * t0


def _plink_eta(terms: list[np.ndarray]) -> np.ndarray:
    """Σ_j coef_j x_j in float32 with PLINK's summation grouping (``mult_tmatrix_nxd_vect_d``).

    Groups of four as (a + b) + (c + d), each added to the running sum; a remainder of
    three as (a + b) + (c + sum), two as (a + b) + sum, one as a + sum.
    """
    p = len(terms)
    dest: np.ndarray | np.float32 = np.float32(0.0)
    i = 0
    while p - i >= 4:
        block = (terms[i] + terms[i + 1]) + (terms[i + 2] + terms[i + 3])
        dest = block if i == 0 else block + dest
        i += 4
    rem = p - i
    if rem == 3:
        dest = (terms[i] + terms[i + 1]) + (terms[i + 2] + dest)
    elif rem == 2:
        dest = (terms[i] + terms[i + 1]) + dest
    elif rem == 1:
        dest = terms[i] + dest
    return np.asarray(dest, dtype=np.float32)


def logistic_site_stats(
    genotypes: np.ndarray, covar: np.ndarray | None, pheno_01: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One site's ``(n, grad, hess)`` at ``beta`` (V, p) for a chunk of variants.

    grad = Σ (y - π) x and hess = Σ π(1-π) x xᵀ over kept samples with a call. Each
    sample's π is computed exactly as PLINK 1.9 does (float32 covariates and linear
    predictor, its SSE exp, 1/(1+e) in float32): π saturates to exactly 1 at the same
    point, which decides convergence for nearly separated variants. The sums are
    float64 column reductions and products with the base columns B = [1, c...], never
    a loop over samples or variants.
    """
    blocks, b_all, y_all = _samples(genotypes, covar, pheno_01)
    v = blocks.g.shape[1]
    q = b_all.shape[1]
    p = q + 1
    beta = np.asarray(beta, dtype=np.float64)
    if beta.shape != (v, p):
        raise ValueError(f"beta has shape {beta.shape}, expected {(v, p)}")
    coef = beta.astype(np.float32)
    b32_all = b_all.astype(np.float32)
    xi = _xindex(q)
    iu, ju = np.triu_indices(q)
    n = np.zeros(v)
    grad_b = np.zeros((q, v))
    grad_g = np.zeros(v)
    h_bb = np.zeros((iu.size, v))
    h_bg = np.zeros((q, v))
    h_gg = np.zeros(v)
    for start, stop, g0, called in blocks:
        b32, y = b32_all[start:stop], y_all[start:stop]
        b = b32.astype(np.float64)
        g32 = g0.astype(np.float32)
        terms = [np.broadcast_to(coef[:, 0], g32.shape), g32 * coef[:, 1]]
        terms += [b32[:, a, None] * coef[:, xi[a]] for a in range(1, q)]
        with np.errstate(over="ignore"):
            e = _plink_expf(np.float32(0.0) - _plink_eta(terms))
            pi = np.float32(1.0) / (e + np.float32(1.0))
        w = (pi * (np.float32(1.0) - pi)).astype(np.float64) * called
        r = -(pi - y[:, None].astype(np.float32)).astype(np.float64) * called
        wg = w * g0
        n += called.sum(axis=0)
        grad_b += b.T @ r
        grad_g += np.einsum("ij,ij->j", r, g0)
        h_bb += (b[:, iu] * b[:, ju]).T @ w
        h_bg += b.T @ wg
        h_gg += np.einsum("ij,ij->j", wg, g0)
    grad = np.empty((v, p))
    grad[:, xi] = grad_b.T
    grad[:, 1] = grad_g
    hess = np.empty((v, p, p))
    hess[:, xi[iu], xi[ju]] = h_bb.T
    hess[:, xi[ju], xi[iu]] = h_bb.T
    hess[:, xi, 1] = h_bg.T
    hess[:, 1, xi] = h_bg.T
    hess[:, 1, 1] = h_gg
    return np.rint(n).astype(np.int64), grad, hess


def flip_genotypes(genotypes: np.ndarray, flip_mask: np.ndarray) -> np.ndarray:
    """Genotypes with g -> 2 - g on the flagged variants (columns); missing stays missing.

    For logistic regression a site in the opposite orientation flips its genotypes
    before :func:`logistic_site_stats`, so that every sample's float32 arithmetic is
    PLINK's (mapping beta and the sums instead is exact only up to float32 rounding).
    """
    g = np.asarray(genotypes)
    f = np.asarray(flip_mask, dtype=bool)
    if np.issubdtype(g.dtype, np.floating):
        return np.where(f, 2 - g, g)  # NaN stays NaN
    return np.where(f & (g >= 0), 2 - g, g).astype(g.dtype)


_F32 = np.float32
_F32_NOISE = 2.0**-24
"""Relative rounding of one float32 addition; PLINK's n-term sums drift ~sqrt(n) times it."""


def _cholesky_f32(h: np.ndarray) -> np.ndarray:
    """PLINK's single-precision ``cholesky_decomposition`` (lower L), batched over variants.

    A negative pivot becomes 1e-6 and a zero pivot gives inf/NaN exactly as PLINK, so the
    same variants end in NaN (non-convergence, NA).
    """
    v, p = h.shape[0], h.shape[-1]
    ll = np.zeros((v, p, p), dtype=_F32)
    for r in range(p):
        fxx = h[:, r, r].copy()
        for c in range(r):
            fyy = ll[:, r, c]
            fxx = fxx - fyy * fyy
        # NaN fails ``fxx >= 0`` and becomes 1e-6 too, as in PLINK
        piv = np.where(fxx >= 0, np.sqrt(np.maximum(fxx, 0)), _F32(1e-6)).astype(_F32)
        ll[:, r, r] = piv
        recip = (1.0 / piv.astype(np.float64)).astype(_F32)
        for r2 in range(r + 1, p):
            fxx = h[:, r2, r].copy()
            for c in range(r):
                fxx = fxx - ll[:, r, c] * ll[:, r2, c]
            ll[:, r2, r] = fxx * recip
    return ll


def _solve_f32(ll: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """PLINK's ``solve_linear_system``: L Lᵀ x = y by forward/back substitution, float32."""
    v, p = yy.shape
    xx = np.zeros((v, p), dtype=_F32)
    for r in range(p):
        fxx = yy[:, r].copy()
        for c in range(r):
            fxx = fxx - ll[:, r, c] * xx[:, c]
        xx[:, r] = fxx / ll[:, r, r]
    for c in range(p - 1, -1, -1):
        fxx = xx[:, c].copy()
        for r in range(p - 1, c, -1):
            fxx = fxx - ll[:, r, c] * xx[:, r]
        xx[:, c] = fxx / ll[:, c, c]
    return xx


def logistic_fit(
    evaluate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    V: int,
    p: int,
    *,
    steps: bool = False,
) -> dict[str, np.ndarray]:
    """:func:`logistic_iterations` with each iteration's sums from ``evaluate(beta)``."""
    iterations = logistic_iterations(V, p, steps=steps)
    try:
        beta = next(iterations)
        while True:
            beta = iterations.send(evaluate(beta))
    except StopIteration as stop:
        return stop.value


def logistic_iterations(
    V: int, p: int, *, steps: bool = False
) -> Generator[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """PLINK 1.9's logistic Newton–Raphson, one pooled evaluation per iteration.

    It yields the coefficients ``beta`` (V, p) at which it needs the pooled sums and is
    sent them back: a generator, so that each evaluation can be a job through the
    federation (:func:`smpc.protocols.gwas.logistic.newton_plan`) or a plain function
    (:func:`logistic_fit`).

    With ``steps`` (``reveal: statistics``) an evaluation is ``(n, step, var)``
    instead: the exact Newton step H⁻¹·Σ(y − π)x and (H⁻¹)_tt opened inside MPyC
    (:func:`smpc.protocols.gwas.mpc.newton.secure_newton_step`), NaN where H is singular. The
    iterations, stopping and non-convergence rules are PLINK's, on the step rounded to
    single precision; the checks that need H itself (its Cholesky pivots against float32
    noise, the correlations of H⁻¹) are not evaluated: only the step is opened.

    Each evaluation at ``beta (V, p) float64`` is the pooled ``(n, grad, hess)`` (see
    :func:`logistic_site_stats`); one is one round trip to the sites, and there are
    as many as PLINK's largest per-variant iteration count (at most
    :data:`LOGISTIC_MAX_ITER`). Variants that stopped keep their coefficients; their
    later sums are ignored. Returns NMISS, OR, BETA, SE, STAT (Wald z), P (NaN = NA),
    ``ok`` and ``iterations`` (per variant, PLINK's count; 0 when n <= p).
    """
    coef = np.zeros((V, p), dtype=_F32)
    ll_final = np.zeros((V, p, p), dtype=_F32)
    var_final = np.full(V, np.nan)  # steps: (H⁻¹)_tt of the last iteration
    min_delta = np.full(V, 1e9, dtype=_F32)
    iterations = np.zeros(V, dtype=np.int64)
    min_ratio = np.full(V, np.inf)
    converged = np.zeros(V, dtype=bool)
    n_out: np.ndarray | None = None
    active = np.ones(V, dtype=bool)
    iteration = 0
    while active.any():
        iteration += 1
        n, grad, hess = yield coef.astype(np.float64)
        with np.errstate(all="ignore"):
            n = np.asarray(n, dtype=np.int64)
            if n_out is None:
                n_out = n.copy()
                active &= n_out > p
                if not active.any():
                    break
            a = np.flatnonzero(active)
            iterations[a] = iteration
            if steps:  # grad is the opened step H⁻¹·Σ(y - π)x, hess (H⁻¹)_tt
                d = (-np.asarray(grad, dtype=np.float64)[a]).astype(_F32)
                var_final[a] = np.asarray(hess, dtype=np.float64)[a]
            else:
                h32 = np.asarray(hess, dtype=np.float64)[a].astype(_F32)
                ll = _cholesky_f32(h32)
                piv = np.diagonal(ll, axis1=1, axis2=2).astype(np.float64) ** 2
                ratio = (piv / np.diagonal(h32, axis1=1, axis2=2)).min(axis=1)
                min_ratio[a] = np.fmin(min_ratio[a], ratio)
                # PLINK's gradient is Σ(π - y)x and it steps coef -= H⁻¹ grad
                d = _solve_f32(ll, (-np.asarray(grad, dtype=np.float64)[a]).astype(_F32))
                ll_final[a] = ll
            delta = np.zeros(a.size, dtype=_F32)
            for j in range(p):
                delta = delta + np.abs(d[:, j])
            new = coef[a] - d
            coef[a] = new
            md = np.minimum(min_delta[a], delta)
            min_delta[a] = md
            maxabs = np.abs(new).max(axis=1)
            # C compares these floats with double literals: do the same (1e-3, 1e-4)
            one_off = np.abs(_F32(1.0) - delta).astype(np.float64)
            fail = np.isnan(delta)
            done = fail.copy()
            if iteration > 4:
                f2 = ((delta > 20.0) & (delta > 2 * md)) | ((iteration >= 8) & (one_off < 1e-3))
                f2 &= ~done
                fail |= f2
                done |= f2
                if iteration >= LOGISTIC_MAX_ITER:
                    rest = ~done
                    fail |= rest & (maxabs > 8e3)
                    converged[a[rest & ~(maxabs > 8e3)]] = True
                    done |= rest
            small = ~done & (delta.astype(np.float64) < 1e-4)
            fail |= small & (maxabs > 6e4)
            converged[a[small & ~(maxabs > 6e4)]] = True
            done |= small
            active[a[done]] = False
    if n_out is None:
        n_out = np.zeros(V, dtype=np.int64)
    ok = converged.copy()
    # Near-separation along a direction that moves several coefficients (a variant almost
    # colinear with a covariate) makes a Cholesky pivot fall below the rounding noise of
    # PLINK's float32 Hessian sums; PLINK's iterations are then driven by that noise and
    # almost always end in NA. Our float64 sums would "converge" instead, so follow PLINK.
    ok &= ~(min_ratio < np.sqrt(n_out) * _F32_NOISE)
    with np.errstate(all="ignore"):
        if steps:
            var = var_final
            ok &= ~((var < 1e-20) | ~np.isfinite(var))
        else:  # S = H⁻¹ from the last factor, column by column as PLINK (row i solves e_i)
            s = np.zeros((V, p, p), dtype=_F32)
            for i in range(p):
                e = np.zeros((V, p), dtype=_F32)
                e[:, i] = 1.0
                s[:, i, :] = _solve_f32(ll_final, e)
            diag = np.diagonal(s, axis1=1, axis2=2)
            d64 = diag[:, 1:].astype(np.float64)
            ok &= ~((d64 < 1e-20) | ~np.isfinite(d64)).any(axis=1)
            sqrt_diag = np.sqrt(diag).astype(_F32)
            ok &= _s_check_f32(s, sqrt_diag)
            var = diag[:, 1].astype(np.float64)
        b1 = np.where(ok, coef[:, 1].astype(np.float64), np.nan)
        se = np.where(ok, np.sqrt(var), np.nan)
        z = b1 / se
        pval = np.where(ok, chi2_1df(z), np.nan)
        odds = np.exp(b1)
    return {
        "NMISS": n_out,
        "OR": odds,
        "BETA": b1,
        "SE": se,
        "STAT": z,
        "P": pval,
        "ok": ok,
        "iterations": iterations,
        "min_pivot_ratio": min_ratio,
    }


def _s_check_f32(s: np.ndarray, sqrt_diag: np.ndarray) -> np.ndarray:
    """The validParameters correlation check in PLINK's float arithmetic."""
    p = s.shape[-1]
    il, jl = np.tril_indices(p, -1)
    lim = (np.float64(0.99999) * sqrt_diag[:, il].astype(np.float64)).astype(_F32)
    bad = s[:, il, jl] > lim * sqrt_diag[:, jl]
    return ~bad.any(axis=1)


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def _field(variants: Any, name: str) -> np.ndarray:
    """Column ``name`` of a variant table (mapping or object with attributes)."""
    value = variants[name] if isinstance(variants, Mapping) else getattr(variants, name)
    return np.asarray(value)


def _write_glm(
    path: str | os.PathLike[str],
    variants: Any,
    result: Mapping[str, np.ndarray],
    effect: str,
    snp_width: int | None,
) -> None:
    """One ADD row per variant in PLINK's ``--linear/--logistic hide-covar`` layout.

    Data rows end without a space; the header line ends with one (PLINK writes them
    with different code).
    """
    chrom = _field(variants, "chrom").astype(str)
    snp = _field(variants, "snp").astype(str)
    bp = _field(variants, "bp").astype(np.int64)
    a1 = _field(variants, "a1").astype(str)
    v = snp.shape[0]
    nmiss = np.asarray(result["NMISS"], dtype=np.int64)
    ok = np.asarray(result["ok"], dtype=bool)
    if not (chrom.shape == bp.shape == a1.shape == nmiss.shape == ok.shape == (v,)):
        raise ValueError("variants and result must have one entry per variant")
    eff = np.where(ok, fmt_g(np.asarray(result[effect], dtype=np.float64), 4), "NA")
    stat = np.where(ok, fmt_g(np.asarray(result["STAT"], dtype=np.float64), 4), "NA")
    pv = np.where(ok, fmt_g(np.asarray(result["P"], dtype=np.float64), 4), "NA")
    columns = [
        ("CHR", 4),
        ("SNP", plink_maxsnp(snp) if snp_width is None else int(snp_width)),
        ("BP", 10),
        ("A1", 4),
        ("TEST", 10),
        ("NMISS", 8),
        (effect, 10),
        ("STAT", 12),
        ("P", 12),
    ]
    rows: list[Sequence[str] | np.ndarray] = [
        chrom,
        snp,
        [str(x) for x in bp.tolist()],
        a1,
        np.full(v, "ADD", dtype=object),
        [str(x) for x in nmiss.tolist()],
        eff,
        stat,
        pv,
    ]
    header = render_table(columns, [[] for _ in columns], trailing_space=True)
    body = render_table(columns, rows, trailing_space=False, header=False)
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(header + body)


def write_linear(
    path: str | os.PathLike[str],
    variants: Any,
    result: Mapping[str, np.ndarray],
    *,
    snp_width: int | None = None,
) -> None:
    """``.assoc.linear`` (``hide-covar``): CHR SNP BP A1 TEST NMISS BETA STAT P.

    ``variants`` has fields ``chrom``, ``snp``, ``bp``, ``a1`` (mapping or attributes),
    rows are written in the order given; ``result`` is :func:`linear_from_stats`'s.
    PLINK sizes the SNP column over every variant it loaded: pass
    ``snp_width=plink_maxsnp(all_ids)`` when writing a filtered subset.
    """
    _write_glm(path, variants, result, "BETA", snp_width)


def write_logistic(
    path: str | os.PathLike[str],
    variants: Any,
    result: Mapping[str, np.ndarray],
    *,
    snp_width: int | None = None,
) -> None:
    """``.assoc.logistic`` (``hide-covar``, odds ratios): CHR SNP BP A1 TEST NMISS OR STAT P.

    As :func:`write_linear`, with ``result`` from :func:`logistic_fit`.
    """
    _write_glm(path, variants, result, "OR", snp_width)
