"""Flat zero-copy byte views of the bodies and envelopes that callers hand to the wire format."""

from __future__ import annotations

import numpy as np

__all__ = ["as_view"]


def as_view(data: object) -> memoryview:
    """A flat byte view of ``data`` without copying (C-contiguous buffers only)."""
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            raise ValueError("a NumPy body must be C-contiguous (use np.ascontiguousarray)")
        if data.dtype != np.dtype("<u8") and data.dtype != np.uint8:
            raise TypeError(
                f"a NumPy body holds field elements as little-endian uint64 ('<u8') "
                f"or raw bytes (uint8), got dtype {data.dtype}"
            )
        return data.reshape(-1).view(np.uint8).data
    view = memoryview(data)  # type: ignore[arg-type]
    if not view.c_contiguous:
        raise ValueError("body must be a C-contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view
