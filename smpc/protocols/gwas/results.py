"""A run's result.json and the Manhattan and QQ plots of its association test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from smpc.protocols.gwas.plink.fileset import VariantTable


def summarise(
    spec: Any,
    out: Path,
    tested: VariantTable,
    p_values: np.ndarray | None,
    written: list[str],
    **facts: Any,
) -> dict[str, Any]:
    """Manhattan and QQ plots of the association test's P, then ``result.json``."""
    from smpc.protocols.gwas.plots import inflation, manhattan, qq

    lam = None
    if p_values is not None and len(p_values):
        title = spec.name
        manhattan(out / f"{title}.manhattan.png", tested["chrom"], tested["bp"], p_values, title)
        qq(out / f"{title}.qq.png", p_values, title)
        written = [*written, f"{title}.manhattan.png", f"{title}.qq.png"]
        lam = inflation(p_values)
    result = {
        **facts,
        "lambda": None if lam is None or not np.isfinite(lam) else round(lam, 4),
        "files": written,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
