"""Field and bit sizes of the values a GWAS shares, and the integer encodings that fit them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from smpc.protocols.gwas.mpc.bounds import MAX_ALLELES

COUNT_BITS = 40
LIMB_BITS = 32
"""Cross products travel as hi = floor(v) and lo = round((v - hi)·2^32): exact to 2^-33."""
CROSS_INT_BITS = 40  # |floor(v)| < 2^40 per site
REG_SCALE_BITS = 32
"""With ``reveal: statistics`` covariates and the phenotype enter the cross products as
x·2^32 (the intercept and the allele count unscaled), so every pooled entry is an
integer, exact to 2^-33 of its sum as in aggregates mode (2^-17 moved PLINK's 4th digit
of a t statistic near 0)."""
REG_ENTRY_BITS = 117  # a site's scaled entry: < 2^20 samples · (2^16·2^32)^2
REG_POOLED_BITS = 150  # pooled entries, signed, for the conversion (up to 2^32 sites)
REG_SHARE_BITS = 192
"""The sites share scaled entries in a 192-bit prime field (24 bytes a value); inside
MPyC the parties convert them to the regression's wide field
(:func:`.mpc.convert.convert_field`)."""
REG_VALUE_BITS = 16  # |covariate|, |phenotype| < 2^16 with reveal: statistics
REG_MAX_SAMPLES = 1 << 20  # samples the secure regressions are sized for
PUBLIC_BITS = 57


def assoc_modulus() -> tuple[int, int]:
    """The prime field of the sites' allele counts for a secure ``assoc``, and its bits."""
    from smpc.protocols.gwas.mpc.bounds import assoc_field_bits, field_prime

    bits = assoc_field_bits(MAX_ALLELES)
    return field_prime(bits), bits


def regression_field(
    k: int, samples: int, pheno_bits: int, covar_bits: Sequence[int]
) -> tuple[int, Any]:
    """The prime of a width-``k`` secure regression and the bounds of what
    :func:`.mpc.linear.secure_linear` opens (:class:`.mpc.bounds.LinearBounds`).

    Sized from what the sites declare publicly (their samples, and the bit length of
    their largest |phenotype| and |covariate|): pooled, columns scaled by
    2^REG_SCALE_BITS. Four times the samples cover the sites' rounding of each entry
    (by at most 1/2 per site, well below a diagonal entry): the rounded matrix's
    determinant is at most that of the exact one with every diagonal entry doubled.
    """
    from smpc.protocols.gwas.mpc.bounds import field_prime, linear_bounds

    scaled = [1 << (REG_SCALE_BITS + b) for b in covar_bits[: k - 2]]
    y = 1 << (REG_SCALE_BITS + pheno_bits)
    bounds = linear_bounds(4 * max(samples, 1), [1, 2, *scaled], y)
    return field_prime(bounds.field_bits), bounds


def share_modulus() -> int:
    """The 192-bit prime the sites share scaled regression entries in (statistics mode)."""
    from smpc.protocols.gwas.mpc.bounds import field_prime

    return field_prime(REG_SHARE_BITS)


def column_scale_bits(k: int) -> np.ndarray:
    """Per column of x = [1, g, covariates...]: its scale's power of two (statistics mode)."""
    return np.array([0, 0] + [REG_SCALE_BITS] * (k - 2), dtype=np.int64)


def scale_cross_products(parts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cross products of the scaled columns (covariates and y times 2^32), rounded.

    Powers of two scale float64 exactly and rounding to an integer is exact, so each
    entry is round(entry·2^(scale_i + scale_j)) as an integral float64, which encodes
    exactly however wide (:class:`smpc.core.encoding.FixedPoint`).
    """
    k = parts["xtx"].shape[-1]
    col = 2.0 ** column_scale_bits(k).astype(np.float64)
    y = 2.0**REG_SCALE_BITS
    return {
        "xtx": np.rint(parts["xtx"] * (col[:, None] * col[None, :])),
        "xty": np.rint(parts["xty"] * (col * y)),
        "yty": np.rint(parts["yty"] * (y * y)),
    }


def split_limbs(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A real array as integers hi = floor(v), lo = round((v - hi)·2^32) (exact split)."""
    hi = np.floor(value)
    lo = np.rint((value - hi) * 2.0**LIMB_BITS)  # v - floor(v) is exact in float64
    return hi.astype(np.int64), lo.astype(np.int64)


def join_limbs(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Pooled hi and lo sums back to reals."""
    return np.asarray(hi, dtype=np.float64) + np.asarray(lo, dtype=np.float64) * 2.0**-LIMB_BITS
