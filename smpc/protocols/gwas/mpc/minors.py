"""Determinants of many submatrices at once, one reshare per level of the Laplace expansion."""

from __future__ import annotations

import operator
from collections.abc import Callable, Generator, Sequence
from typing import Any

__all__ = ["async_minors"]


async def async_minors(targets: Any, entry: Any, reshared: Any) -> list[Any]:
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


def _minors_stepwise(
    targets: Sequence[tuple[Sequence[int], Sequence[int]]],
    entry: Callable[[int, int], Any],
    mul: Callable[[Any, Any], Any],
) -> Generator[list[Any], list[Any], list[Any]]:
    """Generator form of :func:`async_minors`: yields each level's local sums."""
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
