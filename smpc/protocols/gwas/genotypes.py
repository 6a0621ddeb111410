"""A site's genotypes, read in chunks from its .bed, .pgen or VCF fileset.

One interface for the three formats a site may hold (``--site NAME=PREFIX``), detected by
which files exist, in this order:

- PLINK 1 binary ``PREFIX.bed/.bim/.fam`` (genotypes through bed-reader);
- PLINK 2 ``PREFIX.pgen/.pvar/.psam`` (pgenlib);
- VCF ``PREFIX.vcf.gz`` or ``PREFIX.vcf`` (cyvcf2).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smpc.errors import UserError
from smpc.protocols.gwas.plink.fileset import (
    read_bim,
    read_fam,
    read_psam,
    read_pvar,
    vcf_tables,
)

BED_MAGIC = b"l\x1b\x01"
"""PLINK 1's .bed magic: two bytes ``6c 1b``, then ``01``, variant-major."""


def _check_bed_size(prefix: Path, n_samples: int, n_variants: int) -> None:
    """A .bed holds ``3 + variants · ceil(samples / 4)`` bytes: name the file that is off.

    The magic bytes come first: PLINK 1's, variant-major (a sample-major .bed, mode byte
    ``00`` of PLINK before 1.0, is refused with the command that converts it). When the
    size fits the .bim's variants with another whole number of bytes per variant, the
    .fam (the sample count) does not belong to the .bed; when it fits the .fam's samples
    with another number of variants, the .bim does not; otherwise the .bed is cut short
    (or has trailing bytes).
    """
    path = Path(f"{prefix}.bed")
    with path.open("rb") as f:
        magic = f.read(3)
    if magic != BED_MAGIC:
        if magic[:2] == BED_MAGIC[:2] and magic[2:] == b"\x00":
            raise UserError(
                f"{path}: a sample-major .bed (mode byte 00, PLINK before 1.0): convert it "
                f"with plink1.9 --bfile {prefix} --make-bed --out NEW"
            )
        raise UserError(
            f"{path}: not a PLINK 1 .bed file: it starts with bytes "
            f"{magic.hex(' ') or '(none)'}, not the magic 6c 1b 01"
        )
    size = path.stat().st_size
    per_variant = -(-n_samples // 4)
    expected = 3 + n_variants * per_variant
    if size == expected:
        return
    body = size - 3
    if n_variants and body > 0 and body % n_variants == 0:
        b = body // n_variants
        raise UserError(
            f"{prefix}.fam: {n_samples} samples, but {prefix}.bed holds {b} bytes per variant "
            f"for the .bim's {n_variants} variants ({4 * b - 3} to {4 * b} samples): the .fam "
            "does not belong to this .bed"
        )
    if per_variant and body > 0 and body % per_variant == 0:
        raise UserError(
            f"{prefix}.bim: {n_variants} variants, but {prefix}.bed holds "
            f"{body // per_variant} variants of the .fam's {n_samples} samples: the .bim "
            "does not belong to this .bed"
        )
    raise UserError(
        f"{prefix}.bed: {size} bytes, expected {expected} for the .fam's {n_samples} samples "
        f"and the .bim's {n_variants} variants: the file is truncated or not of this fileset"
    )


class _BedBackend:
    def __init__(self, prefix: Path, n_samples: int, n_variants: int) -> None:
        from bed_reader import open_bed

        _check_bed_size(prefix, n_samples, n_variants)
        try:
            self._bed = open_bed(
                f"{prefix}.bed",
                iid_count=n_samples,
                sid_count=n_variants,
                count_A1=True,
                num_threads=1,
            )
        except ValueError as exc:  # bed-reader checks the magic bytes
            raise UserError(f"{prefix}.bed: not a PLINK 1 .bed file ({exc})") from exc

    def read(self, idx: np.ndarray) -> np.ndarray:
        g = self._bed.read(index=np.s_[:, idx], dtype="int8", order="C")
        g[g < 0] = -1  # bed-reader's int8 missing is -127
        return g

    def close(self) -> None:
        self._bed.__exit__(None, None, None)


class _PgenBackend:
    def __init__(
        self, prefix: Path, n_samples: int, n_variants: int, multiallelic: np.ndarray
    ) -> None:
        import pgenlib

        self._reader = pgenlib.PgenReader(
            str(prefix.with_name(prefix.name + ".pgen")).encode(),
            raw_sample_ct=n_samples,
            variant_ct=n_variants,
        )
        self._n = n_samples
        self._multi = multiallelic

    def read(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.uint32)
        out = np.empty((len(idx), self._n), dtype=np.int8)
        if len(idx):
            self._reader.read_list(idx, out)  # ALT1 counts, -9 missing
        out[out < 0] = -1
        out[self._multi[idx]] = -1
        return np.ascontiguousarray(out.T)

    def close(self) -> None:
        self._reader.close()


class _VcfBackend:
    """cyvcf2 reads records in file order: a cursor serves ascending requests in one pass."""

    def __init__(self, path: Path, n_samples: int, multiallelic: np.ndarray) -> None:
        self._path = path
        self._n = n_samples
        self._multi = multiallelic
        self._iter: Any = None
        self._pos = 0  # index of the next record the iterator yields

    def _reopen(self) -> None:
        from cyvcf2 import VCF

        self._iter = iter(VCF(str(self._path), gts012=True, lazy=True))
        self._pos = 0

    def read(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.full((self._n, len(idx)), -1, dtype=np.int8)
        order = np.argsort(idx, kind="stable")
        if self._iter is None or (len(idx) and idx[order[0]] < self._pos):
            self._reopen()
        for j in order:  # one record per requested variant (the reader is record-based)
            target = int(idx[j])
            if target < self._pos:  # a repeated index
                out[:, j] = out[:, order[np.searchsorted(idx[order], target)]]
                continue
            while self._pos <= target:
                record = next(self._iter)
                self._pos += 1
            if not self._multi[target]:
                gt = np.asarray(record.gt_types, dtype=np.int8)
                gt[gt == 3] = -1  # gts012: 0 hom REF, 1 het, 2 hom ALT, 3 unknown
                out[:, j] = gt
        return out

    def close(self) -> None:
        self._iter = None


def detect_format(prefix: str | os.PathLike[str]) -> tuple[str, dict[str, Path]]:
    """``("bed"|"pgen"|"vcf", files)`` for a fileset prefix; a UserError names what is missing."""
    p = Path(prefix)
    for fmt, exts in (("bed", (".bed", ".bim", ".fam")), ("pgen", (".pgen", ".pvar", ".psam"))):
        files = {e[1:]: p.with_name(p.name + e) for e in exts}
        if files[fmt].exists():
            missing = [str(f) for f in files.values() if not f.exists()]
            if missing:
                raise UserError(f"{p}: {fmt} fileset is incomplete, missing {', '.join(missing)}")
            return fmt, files
    for ext in (".vcf.gz", ".vcf.bgz", ".vcf"):
        f = p.with_name(p.name + ext)
        if f.exists():
            return "vcf", {"vcf": f}
    raise UserError(
        f"{p}: no genotype fileset: expected {p}.bed/.bim/.fam, {p}.pgen/.pvar/.psam "
        f"or {p}.vcf[.gz]"
    )


class SiteGenotypes:
    """A site's fileset opened for chunked reading: tables in memory, genotypes on demand."""

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        self.prefix = Path(prefix)
        self.format, self.files = detect_format(self.prefix)
        if self.format == "bed":
            self.variants = read_bim(self.files["bim"])
            self.samples = read_fam(self.files["fam"])
            self._backend: Any = _BedBackend(self.prefix, len(self.samples), len(self.variants))
        elif self.format == "pgen":
            self.variants = read_pvar(self.files["pvar"])
            self.samples = read_psam(self.files["psam"])
            self._backend = _PgenBackend(
                self.prefix, len(self.samples), len(self.variants), self._multiallelic()
            )
        else:
            self.variants, self.samples = vcf_tables(self.files["vcf"])
            self._backend = _VcfBackend(self.files["vcf"], len(self.samples), self._multiallelic())

    def _multiallelic(self) -> np.ndarray:
        return np.char.find(self.variants.a1, ",") >= 0

    @property
    def n_samples(self) -> int:
        return len(self.samples)

    @property
    def n_variants(self) -> int:
        return len(self.variants)

    def read_chunk(self, variant_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Genotypes ``int8 (n_samples, s)``: copies of each variant's a1, -1 = missing."""
        idx = np.asarray(variant_indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_variants):
            raise IndexError(f"variant index out of range 0..{self.n_variants - 1}")
        return self._backend.read(idx)

    def iter_chunks(
        self, variant_indices: Sequence[int] | np.ndarray | None = None, size: int = 2000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(indices, genotypes)`` for consecutive slices of at most ``size`` variants.

        Memory stays at one chunk (``n_samples × size`` bytes) whatever the fileset's size.
        """
        idx = (
            np.arange(self.n_variants)
            if variant_indices is None
            else np.asarray(variant_indices, dtype=np.int64).reshape(-1)
        )
        for start in range(0, len(idx), size):
            part = idx[start : start + size]
            yield part, self.read_chunk(part)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> SiteGenotypes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_site(prefix: str | os.PathLike[str]) -> SiteGenotypes:
    """Open ``PREFIX`` as .bed/.bim/.fam, .pgen/.pvar/.psam or .vcf[.gz] (in that order)."""
    return SiteGenotypes(prefix)


def iter_chunks(
    site: SiteGenotypes,
    variant_indices: Sequence[int] | np.ndarray | None = None,
    size: int = 2000,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Module-level form of :meth:`SiteGenotypes.iter_chunks`."""
    return site.iter_chunks(variant_indices, size)
