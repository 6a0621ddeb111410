"""Reading a site's local input files into arrays.

``NAME=PATH`` on the command line names a job input and where it comes from:

* ``PATH.npy`` — the array itself;
* ``PATH.npz`` — the array stored under NAME (or ``PATH.npz:KEY``);
* ``PATH.csv`` — the column headed NAME (or ``PATH.csv:COLUMN``), comma separated
  with a header row. Every cell must be a finite number: text, NaN or inf is
  refused with its row and column (the row number as a spreadsheet shows it, the
  header being row 1); an empty cell too, unless the caller reads missing values.
  Every row has as many fields as the header (a ragged row is refused: its cells
  would land in other columns).
  The file must be UTF-8 (a byte order mark, as spreadsheet programs write, is
  dropped); another encoding is refused with the offset of the first bad byte.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from smpc.errors import UserError
from smpc.io.npyfile import load_npy, load_npz, npz_names

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


def read_input(
    source: str, name: str, *, missing_ok: bool = False, bound: float | None = None
) -> np.ndarray:
    """The array a source names (see module docstring).

    With ``missing_ok`` an empty CSV cell is a missing value (NaN in the result)
    instead of an error; text, NaN and inf are refused either way. ``bound``: every
    value must have ``|x| < bound`` (the fixed-point encoding's range), or the error
    names the file, row (or index) and column.
    """
    path_text, _, key = source.partition(":") if not Path(source).exists() else (source, "", "")
    path = Path(path_text)
    key = key or name
    if not path.exists():
        raise UserError(f"input {name!r}: file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _check_numeric(load_npy(path), f"{path}", bound, missing_ok)
    if suffix == ".npz":
        arrays = load_npz(path, {key})
        if key not in arrays:
            raise UserError(f"input {name!r}: {path} has no array {key!r} (has {npz_names(path)})")
        return _check_numeric(arrays[key], f"{path}:{key}", bound, missing_ok)
    if suffix == ".csv":
        return _read_csv_column(path, key, missing_ok, bound)
    raise UserError(f"input {name!r}: {path} is not a .npy, .npz or .csv file")


def exceeds(value: float, bound: float) -> str:
    """The reason a value is out of the encoding's range, and the fix."""
    return (
        f"{value:g} exceeds the bound |x| < 2^{math.log2(bound):g} of the spec's fixed-point "
        "encoding (raise encoding: int_bits, or rescale the column)"
    )


def _check_numeric(
    array: np.ndarray, where: str, bound: float | None = None, missing_ok: bool = False
) -> np.ndarray:
    if array.dtype.kind not in "iuf" and array.dtype != bool:
        raise UserError(f"{where}: array of {array.dtype} is not numeric")
    bad = np.isinf(array) if missing_ok else ~np.isfinite(array)  # NaN: missing if allowed
    if array.dtype.kind == "f" and bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise UserError(f"{where}: index {index}: {array[index]} is not a finite number")
    if bound is not None and array.size and np.abs(array).max() >= bound:
        index = tuple(int(i) for i in np.argwhere(np.abs(array) >= bound)[0])
        raise UserError(f"{where}: index {index}: {exceeds(float(array[index]), bound)}")
    return array


def _read_text(path: Path) -> str:
    """The file as UTF-8 text (a byte order mark is dropped), or one line saying where not."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
            f"(row {row}); save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > "
            f"{path.stem}-utf8{path.suffix}"
        ) from None


def _records(path: Path, f: io.StringIO) -> Iterator[list[str]]:
    """The CSV records of ``f``; a malformed one (a cell over the csv module's size
    limit) is a UserError with its line."""
    rows = csv.reader(f)
    try:
        yield from rows
    except csv.Error as exc:
        raise UserError(f"{path}: line {rows.line_num}: not CSV: {exc}") from None


def _read_csv_column(
    path: Path, column: str, missing_ok: bool = False, bound: float | None = None
) -> np.ndarray:
    with io.StringIO(_read_text(path), newline="") as f:
        rows = _records(path, f)
        header = next(rows, None)
        if header is None:
            raise UserError(f"{path}: empty file, expected a header row")
        header = [h.strip() for h in header]
        if column not in header:
            raise UserError(f"{path}: no column {column!r} (columns: {', '.join(header)})")
        j = header.index(column)
        if header.count(column) > 1:
            k = header.index(column, j + 1)
            raise UserError(
                f"{path}: row 1: the header names column {column!r} twice (fields {j + 1} "
                f"and {k + 1}): rename one"
            )
        values = []
        for line, row in enumerate(rows, start=2):
            if not any(c.strip() for c in row):
                continue  # a blank line is not a record
            if len(row) != len(header):  # a shifted row would feed another column's values
                raise UserError(
                    f"{path}: row {line} has {len(row)} fields, the header has {len(header)} "
                    "(quote a cell that holds a comma, e.g. a decimal comma)"
                )
            cell = row[j].strip()
            if missing_ok and not cell:
                values.append(math.nan)
                continue
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                what = "empty" if not cell else repr(cell if len(cell) <= 40 else cell[:37] + "...")
                raise UserError(
                    f"{path}: row {line}, column {column!r}: {what} is not a finite number"
                )
            if bound is not None and abs(value) >= bound:
                raise UserError(f"{path}: row {line}, column {column!r}: {exceeds(value, bound)}")
            values.append(value)
    array = np.array(values, dtype=np.float64)
    if np.isnan(array).any():
        return array  # missing cells stay NaN
    if np.all(array == np.round(array)) and np.abs(array).max(initial=0) < 2**53:
        return array.astype(np.int64)  # integer columns stay exact
    return array
