"""One Newton step of logistic regression inside MPyC: the step and (H⁻¹)_tt opened exactly."""

from __future__ import annotations

from typing import Any

import numpy as np

from smpc.protocols.gwas.mpc.bounds import NewtonBounds
from smpc.protocols.gwas.mpc.minors import async_minors
from smpc.protocols.gwas.mpc.rational import Ratio, balanced_bound
from smpc.protocols.gwas.mpc.shares import open_ratio_shares, raw_shares, reshare

__all__ = ["newton_targets", "secure_newton_step"]


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
    field, h = await raw_shares(mpc, hess)
    _, g = await raw_shares(mpc, grad)
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
        return await reshare(mpc, field, local)

    minors = await async_minors(newton_targets(k, test_index), entry, reshared)
    det, numerators, cofactor = minors[0], minors[1 : k + 1], minors[k + 1]
    if bounds is None:
        step_b = var_b = (balanced_bound(p), balanced_bound(p))
    else:
        step_b, var_b = (bounds.step_num, bounds.det), (bounds.cofactor, bounds.det)
    steps = [await open_ratio_shares(mpc, field, num % p, det % p, *step_b) for num in numerators]
    var = await open_ratio_shares(mpc, field, cofactor % p, det % p, *var_b)
    return steps, var
