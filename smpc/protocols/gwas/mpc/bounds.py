"""Field sizes and magnitude bounds of the GWAS statistics inside MPyC, so no opened ratio wraps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smpc.core.field import MERSENNE61
from smpc.mpc.mpyc_adapter import MpcType

__all__ = [
    "FAST_BITS",
    "MAX_ALLELES",
    "SEC_PARAM",
    "LinearBounds",
    "NewtonBounds",
    "assoc_field_bits",
    "field_prime",
    "k_bounds",
    "linear_bounds",
    "newton_bounds",
    "secint_for",
]

FAST_BITS = MERSENNE61.bit_length() - 32  # the widest SecInt MPyC allows in GF(2^61 - 1)
MAX_ALLELES = 1 << 21
"""Called alleles per variant the secure statistics are sized for (a million samples)."""

SEC_PARAM = 30  # MPyC's default statistical security parameter k (option -K)


def assoc_field_bits(max_alleles: int) -> int:
    """Smallest prime bit length for which :func:`.assoc.secure_assoc` cannot wrap.

    With N ≤ ``max_alleles`` called alleles at a variant (n1 + n2 = N), the ratio it
    opens besides the frequencies, K = N·n1·n2 / ((a+c)·(b+d)), has numerator ≤ N³/4
    and denominator ≤ N²/4; rational reconstruction needs p > 2·N⁵/16, e.g. 104 bits
    for N = 2²¹ (a million diploid samples). The frequencies need less.
    """
    num, den = k_bounds(max_alleles)
    return (2 * num * den).bit_length() + 1


def k_bounds(max_alleles: int) -> tuple[int, int]:
    n = max_alleles
    return n**3 // 4 + 1, n**2 // 4 + 1


@dataclass(frozen=True)
class LinearBounds:
    """Magnitude bounds of the integers :func:`.linear.secure_linear` opens as ratios.

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
    """Bounds for :func:`.linear.secure_linear` (see :class:`LinearBounds`) from data bounds.

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


@dataclass(frozen=True)
class NewtonBounds:
    """Magnitude bounds of what :func:`.newton.secure_newton_step` opens, for a field size.

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
