"""A site's phenotype and covariate tables, ``PREFIX.pheno`` and ``PREFIX.cov``.

**Phenotype and covariate files** ``PREFIX.pheno`` / ``PREFIX.cov``: whitespace-separated,
a header ``FID IID name...``, matched to samples by (FID, IID); samples not in the file
get a missing value, file rows for other samples are ignored (as PLINK does). Missing
codes are ``-9`` and ``NA``; in a phenotype whose values are all 0/1/2 (case/control),
``0`` is missing too (PLINK 1.9's rule for ``--pheno``).

"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smpc.errors import UserError
from smpc.protocols.gwas.genotypes import open_site
from smpc.protocols.gwas.plink.fileset import MISSING_CODES, SampleTable, read_text


def read_table_file(
    path: str | os.PathLike[str], columns: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(keys "FID<TAB>IID", values float (rows, k))`` from a ``FID IID ...`` file.

    Missing codes (-9, NA) become NaN. Raises UserError naming the file, line and column
    for a missing header, an unknown column, a short line, a duplicate sample or a value
    that is not a number.
    """
    path = Path(path)
    lines = read_text(path).splitlines()
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
    if not numbered:
        raise UserError(f"{path}: empty file, expected a header line 'FID IID ...'")
    header_line, header_text = numbered[0]
    header = header_text.split()
    if len(header) < 2 or header[0].lstrip("#").upper() != "FID" or header[1].upper() != "IID":
        raise UserError(
            f"{path}: line {header_line}: the header must start with 'FID IID', got "
            f"{' '.join(header[:2])!r}"
        )
    wanted = []
    for name in columns:
        if name not in header[2:]:
            raise UserError(
                f"{path}: no column {name!r}; columns are {', '.join(header[2:]) or 'none'}"
            )
        wanted.append(header.index(name))
    body = numbered[1:]
    ncol = len(header)
    counts = np.fromiter((len(ln.split()) for _, ln in body), dtype=np.int64, count=len(body))
    bad = np.flatnonzero(counts != ncol)
    if len(bad):
        number = body[bad[0]][0]
        raise UserError(f"{path}: line {number} has {counts[bad[0]]} fields, the header has {ncol}")
    t = (
        np.asarray(" ".join(ln for _, ln in body).split(), dtype=str).reshape(len(body), ncol)
        if body
        else np.empty((0, ncol), dtype=str)
    )
    keys = np.char.add(np.char.add(t[:, 0], "\t"), t[:, 1]) if len(t) else np.empty(0, str)
    uniq, n_seen = np.unique(keys, return_counts=True)
    if len(uniq) != len(keys):
        dup = np.flatnonzero(np.isin(keys, uniq[n_seen > 1]))[1]
        raise UserError(
            f"{path}: line {body[dup][0]}: sample {t[dup, 0]} {t[dup, 1]} appears more than once"
        )
    values = np.empty((len(t), len(wanted)))
    for j, c in enumerate(wanted):
        raw = t[:, c]
        missing = np.isin(raw, MISSING_CODES)
        try:
            values[:, j] = np.where(missing, "nan", raw).astype(np.float64)
        except ValueError:
            for r, text in enumerate(raw):
                try:
                    float(text)
                except ValueError:
                    raise UserError(
                        f"{path}: line {body[r][0]}, column {header[c]}: {str(text)!r} is not a "
                        "number (missing values are -9 or NA)"
                    ) from None
        values[~np.isfinite(values[:, j]), j] = np.nan
    return keys, values


def _samples_for(prefix: str | os.PathLike[str], samples: SampleTable | None) -> SampleTable:
    if samples is not None:
        return samples
    with open_site(prefix) as site:
        return site.samples


def _match(keys: np.ndarray, values: np.ndarray, samples: SampleTable) -> np.ndarray:
    """Rows of ``values`` in sample order; NaN for samples the file does not list."""
    out = np.full((len(samples), values.shape[1]), np.nan)
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], samples.id_keys())
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    found = (keys[order][pos] == samples.id_keys()) if len(keys) else np.zeros(len(samples), bool)
    out[found] = values[order[pos[found]]]
    return out


def read_pheno(
    prefix: str | os.PathLike[str], column: str, samples: SampleTable | None = None
) -> np.ndarray:
    """Phenotype ``column`` of ``PREFIX.pheno`` per sample (float, NaN = missing).

    Case/control values stay 1 (control) / 2 (case); in such a column 0 is missing, as
    in PLINK 1.9. ``samples`` defaults to the site's own sample table.
    """
    keys, values = read_table_file(f"{prefix}.pheno", [column])
    y = _match(keys, values, _samples_for(prefix, samples))[:, 0]
    present = y[~np.isnan(y)]
    if np.isin(present, (0.0, 1.0, 2.0)).all():
        y[y == 0] = np.nan
    return y


def read_covar(
    prefix: str | os.PathLike[str], columns: Sequence[str], samples: SampleTable | None = None
) -> np.ndarray:
    """Covariates ``columns`` of ``PREFIX.cov`` per sample, ``float (n, k)``, NaN = missing."""
    keys, values = read_table_file(f"{prefix}.cov", list(columns))
    return _match(keys, values, _samples_for(prefix, samples))
