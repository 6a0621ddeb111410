"""Opened signs of secure integers in batches: the A1 choice and the maf/geno pass bits."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["COMPARISON_BATCH", "open_signs"]


COMPARISON_BATCH = 20_000
"""Values per secure comparison call: MPyC holds about 24 random bits per value as Python
integers in object arrays (~12 KB per value), so a batch bounds the session's memory."""


async def open_signs(
    mpc: Any, x: Any, width: int, *, lt: bool = False, side: np.ndarray | None = None
) -> np.ndarray:
    """Opened signs (-1, 0, 1) of a secure array, or with ``lt`` the bits x < 0, in batches.

    A sign is MPyC's less-than test and its public zero test (one masked product per
    value, opened): the same three outcomes ``np_sgn`` opens, without the secure
    product over all ``width`` bits that its equality test adds, about a third of its cost.
    ``side`` (1: x ≥ 0, -1: x ≤ 0, 0: unknown; public) spares the less-than test
    where it is known: there the zero test alone decides.
    """
    n = len(x)
    negative = np.zeros(n, dtype=np.int64)
    unknown = np.arange(n) if side is None or lt else np.flatnonzero(side == 0)
    for start in range(0, len(unknown), COMPARISON_BATCH):
        rows = unknown[start : start + COMPARISON_BATCH]
        part = x if len(rows) == n else x[rows]  # one batch of everything: no copy
        bits = await mpc.output(mpc.np_sgn(part, l=width, LT=True))
        negative[rows] = np.asarray(bits, dtype=np.int64).reshape(-1)
    if lt:
        return negative.astype(bool)
    zero = np.zeros(n, dtype=bool)
    for start in range(0, n, COMPARISON_BATCH):
        part = x[start : start + COMPARISON_BATCH]
        zero[start : start + len(part)] = np.asarray(await mpc.np_is_zero_public(part)).reshape(-1)
    sign = (
        np.where(negative == 1, -1, 1)
        if side is None
        else np.where(side == 0, 1 - 2 * negative, side)
    )
    return np.where(zero, 0, sign)
