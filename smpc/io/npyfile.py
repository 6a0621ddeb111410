"""NumPy ``.npy`` and ``.npz`` files read safely: no pickle is ever loaded, and every
array's declared shape is checked against the bytes the file holds before anything is
allocated.

``np.load(allow_pickle=False)`` already refuses to unpickle, but with a ``ValueError``
that names neither file nor array, and it allocates what an array's header declares
before it reads the data: a header of a few bytes declaring 10^12 elements asks for 8 TB.
Here each header is parsed first (:func:`ast.literal_eval`, literals only, at most
:data:`MAX_HEADER` bytes as NumPy allows), and an array is read only when its shape times
its item size is exactly what its file, or its member of the archive, holds. A compressed
member may not declare more than deflate can expand to (:data:`MAX_DEFLATE_RATIO`), so the
memory an archive can ask for is bounded by its size on disk.
"""

from __future__ import annotations

import ast
import math
import os
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

import numpy as np

from smpc.errors import UserError

MAGIC = b"\x93NUMPY"
MAX_HEADER = 10_000  # NumPy's own default limit (max_header_size)
MAX_DEFLATE_RATIO = 1032  # deflate's largest expansion: 258 bytes from 2 bits
PICKLE_PROTOCOL = 0x80  # the first byte of a pickle of protocol 2 and later


def _not_numpy(where: str, start: bytes, what: str) -> UserError:
    if start[:1] == bytes([PICKLE_PROTOCOL]):
        return UserError(
            f"{where}: holds pickled Python data, which is never loaded: save the arrays "
            "with numpy.save or numpy.savez"
        )
    return UserError(f"{where}: not a NumPy {what} (starts with bytes {start[:8].hex(' ')})")


def _header(fp: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """An .npy header's shape and dtype, read without trusting it."""
    start = fp.read(8)
    if start[:6] != MAGIC:
        raise _not_numpy(where, start, ".npy array")
    version = tuple(start[6:8])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise UserError(f"{where}: .npy format version {version} is not one NumPy writes")
    width = 2 if version == (1, 0) else 4
    length = int.from_bytes(fp.read(width), "little")
    if length > MAX_HEADER:
        raise UserError(f"{where}: an .npy header of {length} bytes (NumPy writes < 10 kB)")
    text = fp.read(length)
    try:
        header = ast.literal_eval(text.decode("utf-8" if version == (3, 0) else "latin-1"))
        dtype = np.lib.format.descr_to_dtype(header["descr"])
        shape = tuple(header["shape"])
        fortran = header["fortran_order"]
    except Exception as exc:  # literal_eval and descr_to_dtype raise many kinds
        raise UserError(f"{where}: not a readable .npy header ({type(exc).__name__})") from None
    if not all(isinstance(n, int) and n >= 0 for n in shape) or not isinstance(fortran, bool):
        raise UserError(f"{where}: the .npy header declares shape {shape!r}")
    if dtype.hasobject:
        raise UserError(
            f"{where}: an array of Python objects (a pickle, which is never loaded): save "
            "numbers, e.g. numpy.asarray(values, dtype=float)"
        )
    return shape, dtype


def _check_size(where: str, shape: tuple[int, ...], dtype: np.dtype[Any], held: int) -> None:
    declared = math.prod(shape) * dtype.itemsize
    if declared != held:
        raise UserError(
            f"{where}: declares shape {shape} of {dtype} ({declared} bytes) but holds "
            f"{held} bytes: the file is truncated or corrupt"
        )


def load_npy(path: Path) -> np.ndarray:
    """The array of an .npy file; a UserError names the file for anything else."""
    with open(path, "rb") as fp:
        shape, dtype = _header(fp, str(path))
        _check_size(str(path), shape, dtype, os.fstat(fp.fileno()).st_size - fp.tell())
    array: np.ndarray = np.load(path, allow_pickle=False)
    return array


def load_npz(path: Path, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive by name (only ``names`` when given, those it has);
    a UserError names the file and member. Every member's header is checked."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                where = f"{path}:{info.filename}"
                if not info.filename.endswith(".npy"):
                    raise UserError(f"{where}: not a NumPy array (an .npz holds .npy members)")
                limit = (
                    info.compress_size
                    if info.compress_type == zipfile.ZIP_STORED
                    else info.compress_size * MAX_DEFLATE_RATIO + 1024
                )
                if info.file_size > limit:
                    raise UserError(
                        f"{where}: declares {info.file_size} bytes from {info.compress_size} "
                        "stored: the archive is corrupt"
                    )
                with archive.open(info) as member:
                    shape, dtype = _header(member, where)
                    _check_size(where, shape, dtype, info.file_size - member.tell())
            with np.load(path, allow_pickle=False) as loaded:
                return {
                    name: loaded[name] for name in loaded.files if names is None or name in names
                }
    except zipfile.BadZipFile:
        with open(path, "rb") as fp:
            start = fp.read(8)
        raise _not_numpy(str(path), start, ".npz archive") from None
    except (OSError, ValueError, EOFError, zipfile.LargeZipFile) as exc:  # a corrupt member
        raise UserError(f"{path}: not a readable .npz archive ({exc})") from None


def npz_names(path: Path) -> list[str]:
    """The array names of an .npz archive, sorted (for messages)."""
    with zipfile.ZipFile(path) as archive:
        return sorted(n.removesuffix(".npy") for n in archive.namelist())
