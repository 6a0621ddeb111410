"""Strict JSON for what travels signed or sealed: one reading of every byte string.

JSON as Python reads it by default lets a repeated key win silently and accepts NaN,
Infinity and numbers beyond a float (1e400 becomes inf), so two readers of the same
signed bytes could see different content, and a NaN passes every comparison a party makes.
:func:`loads` refuses all of them with a ValueError.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["loads"]


def loads(data: str | bytes | bytearray) -> Any:
    """``json.loads`` refusing repeated keys, NaN/Infinity and non-finite numbers."""
    return json.loads(
        data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is not finite")
    return value
