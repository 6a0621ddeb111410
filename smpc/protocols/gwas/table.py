"""A variant table as the text columns the sites and parties exchange in the public JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

TABLE_COLUMNS = ("chrom", "snp", "cm", "bp", "a1", "a2")


def table_columns(variants: Any) -> dict[str, str]:
    """A variant table as one newline-joined text per column.

    By columns, not rows: each column parses back with one ``split`` and one array
    conversion, where rows would take a Python loop over every variant at every party.
    """
    return {
        c: "\n".join(np.asarray(_column(variants, c)).astype(str).tolist()) for c in TABLE_COLUMNS
    }


def _column(variants: Any, name: str) -> Any:
    return variants[name] if isinstance(variants, Mapping) else getattr(variants, name)


def parse_table(columns: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Inverse of :func:`table_columns`."""
    table = {
        c: np.array(columns[c].split("\n") if columns[c] else [], dtype=str) for c in TABLE_COLUMNS
    }
    table["bp"] = table["bp"].astype(np.int64)
    return table
