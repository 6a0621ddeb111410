"""Reading a site's local input files into arrays.

``NAME=PATH`` on the command line names a job input and where it comes from:

* ``PATH.npy`` — the array itself;
* ``PATH.npz`` — the array stored under NAME (or ``PATH.npz:KEY``);
* ``PATH.csv`` — the column headed NAME (or ``PATH.csv:COLUMN``), comma separated
  with a header row. Every cell must be a finite number: text, NaN or inf is
  refused with its row and column (the row number as a spreadsheet shows it, the
  header being row 1); an empty cell too, unless the caller reads missing values.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from smpc.errors import UserError

GENOTYPE_SUFFIXES = (".bed", ".pgen", ".vcf", ".vcf.gz")


def data_exists(path: Path) -> bool:
    """A data file, or the prefix of a genotype fileset (PREFIX.bed, .pgen, .vcf[.gz])."""
    return path.exists() or any(Path(f"{path}{s}").exists() for s in GENOTYPE_SUFFIXES)


def parse_assignment(text: str) -> tuple[str, str]:
    """``NAME=SOURCE`` into its two parts, with a clear error otherwise."""
    name, sep, source = text.partition("=")
    if not sep or not name or not source:
        raise UserError(f"expected NAME=PATH, got {text!r}")
    return name, source


def read_input(source: str, name: str, *, missing_ok: bool = False) -> np.ndarray:
    """The array a source names (see module docstring).

    With ``missing_ok`` an empty CSV cell is a missing value (NaN in the result)
    instead of an error; text, NaN and inf are refused either way.
    """
    path_text, _, key = source.partition(":") if not Path(source).exists() else (source, "", "")
    path = Path(path_text)
    key = key or name
    if not path.exists():
        raise UserError(f"input {name!r}: file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _check_numeric(np.load(path, allow_pickle=False), f"{path}")
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive:
                raise UserError(
                    f"input {name!r}: {path} has no array {key!r} (has {sorted(archive)})"
                )
            return _check_numeric(archive[key], f"{path}:{key}")
    if suffix == ".csv":
        return _read_csv_column(path, key, missing_ok)
    raise UserError(f"input {name!r}: {path} is not a .npy, .npz or .csv file")


def _check_numeric(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype.kind not in "iuf" and array.dtype != bool:
        raise UserError(f"{where}: array of {array.dtype} is not numeric")
    return array


def _read_csv_column(path: Path, column: str, missing_ok: bool = False) -> np.ndarray:
    with path.open(newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None:
            raise UserError(f"{path}: empty file, expected a header row")
        header = [h.strip() for h in header]
        if column not in header:
            raise UserError(f"{path}: no column {column!r} (columns: {', '.join(header)})")
        j = header.index(column)
        values = []
        for line, row in enumerate(rows, start=2):
            if not any(c.strip() for c in row):
                continue  # a blank line is not a record
            cell = row[j].strip() if j < len(row) else ""
            if missing_ok and not cell:
                values.append(math.nan)
                continue
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                what = "empty" if not cell else repr(cell)
                raise UserError(
                    f"{path}: row {line}, column {column!r}: {what} is not a finite number"
                )
            values.append(value)
    array = np.array(values, dtype=np.float64)
    if np.isnan(array).any():
        return array  # missing cells stay NaN
    if np.all(array == np.round(array)) and np.abs(array).max(initial=0) < 2**53:
        return array.astype(np.int64)  # integer columns stay exact
    return array
