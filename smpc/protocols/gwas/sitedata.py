"""A site's genotype dataset: variants, samples, genotype chunks, phenotypes and covariates.

One interface for the three formats a site may hold (``--site NAME=PREFIX``), detected by
which files exist, in this order:

- PLINK 1 binary ``PREFIX.bed/.bim/.fam`` (genotypes through bed-reader);
- PLINK 2 ``PREFIX.pgen/.pvar/.psam`` (pgenlib);
- VCF ``PREFIX.vcf.gz`` or ``PREFIX.vcf`` (cyvcf2).

**Variant table** (:class:`VariantTable`): the columns of a PLINK 1 ``.bim`` — chrom,
snp, cm, bp, a1, a2 — as the site's file states them (chromosome names are not
normalised here; :mod:`.align` does that). ``g`` in :meth:`SiteGenotypes.read_chunk` is the
number of copies of *a1*. For .pgen/.vcf a variant's ``a1`` is ALT and ``a2`` is REF,
which is what ``plink2 --make-bed`` (and ``plink1.9 --vcf --keep-allele-order``) writes,
so a .bed converted from the same data with plink2 reads identically; an ALT of ``.``
becomes ``0`` as in a .bim. Which allele is a1 at a site does not matter downstream:
:mod:`.align` flips each site into one reference orientation. A multi-allelic record
(ALT ``A,C``) keeps its comma-joined ALT as a1 and reads as missing; :mod:`.align`
excludes it. A VCF record without an ID keeps ``.``, so several of them are duplicate IDs
to :mod:`.align` (excluded): set IDs first (e.g. ``plink2 --set-all-var-ids``). Reading
a VCF walks its records in file order (cyvcf2 has no random access), so chunks in
ascending order cost one pass.

**Samples** (:class:`SampleTable`): fid, iid, father, mother, sex (1 male, 2 female,
0 unknown), phenotype (float; PLINK's missing codes kept as -9) and founder. PLINK 1.9
(``load_fam``) makes a sample a founder exactly when both parent IDs are ``0``; a parent
ID naming nobody in the dataset still makes a non-founder (only ``--make-founders``
changes that), and we do the same so founder-based statistics match. A VCF has no
pedigree, sex or phenotype: parents ``0``, sex 0, phenotype -9. A VCF sample ID
``F_I`` with exactly one ``_`` becomes FID ``F``, IID ``I``, and one without ``_`` is both
FID and IID, as ``plink1.9 --vcf`` does by default (``plink2 --export vcf`` writes
``FID_IID``); PLINK rejects IDs with several ``_``, we keep them whole (``--double-id``).

**Phenotype and covariate files** ``PREFIX.pheno`` / ``PREFIX.cov``: whitespace-separated,
a header ``FID IID name...``, matched to samples by (FID, IID); samples not in the file
get a missing value, file rows for other samples are ignored (as PLINK does). Missing
codes are ``-9`` and ``NA``; in a phenotype whose values are all 0/1/2 (case/control),
``0`` is missing too (PLINK 1.9's rule for ``--pheno``).
"""

from __future__ import annotations

import contextlib
import gzip
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smpc.errors import UserError

__all__ = [
    "SampleTable",
    "SiteGenotypes",
    "VariantTable",
    "detect_format",
    "iter_chunks",
    "open_site",
    "read_covar",
    "read_pheno",
    "read_table_file",
]

MISSING_CODES = ("-9", "NA", "nan", "NaN")
"""Text values read as missing in .pheno/.cov files (PLINK's -9 and NA)."""


@dataclass(frozen=True)
class VariantTable:
    """Variants as a PLINK 1 .bim states them (arrays of equal length ``V``)."""

    chrom: np.ndarray
    snp: np.ndarray
    cm: np.ndarray
    bp: np.ndarray
    a1: np.ndarray
    a2: np.ndarray

    def __post_init__(self) -> None:
        for name in ("chrom", "snp", "a1", "a2"):
            object.__setattr__(self, name, np.asarray(getattr(self, name)).astype(str))
        object.__setattr__(self, "cm", np.asarray(self.cm).astype(np.float64))
        object.__setattr__(self, "bp", np.asarray(self.bp).astype(np.int64))
        lengths = {len(getattr(self, k)) for k in ("chrom", "snp", "cm", "bp", "a1", "a2")}
        if len(lengths) > 1:
            raise ValueError(f"variant table columns differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.snp)

    def __getitem__(self, name: str) -> np.ndarray:
        """Column access by name, so the table also works where a mapping is expected."""
        return getattr(self, name)

    def take(self, index: np.ndarray) -> VariantTable:
        """The rows ``index`` (an integer array or boolean mask)."""
        return VariantTable(*(getattr(self, k)[index] for k in _VARIANT_COLUMNS))


_VARIANT_COLUMNS = ("chrom", "snp", "cm", "bp", "a1", "a2")


@dataclass(frozen=True)
class SampleTable:
    """Samples in file order, as PLINK 1.9 reads a .fam (arrays of length ``n``)."""

    fid: np.ndarray
    iid: np.ndarray
    father: np.ndarray
    mother: np.ndarray
    sex: np.ndarray
    phenotype: np.ndarray
    founder: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        for name in ("fid", "iid", "father", "mother"):
            object.__setattr__(self, name, np.asarray(getattr(self, name)).astype(str))
        object.__setattr__(self, "sex", np.asarray(self.sex).astype(np.int8))
        object.__setattr__(self, "phenotype", np.asarray(self.phenotype).astype(np.float64))
        # PLINK 1.9 load_fam: founder iff both parent fields are literally "0".
        object.__setattr__(self, "founder", (self.father == "0") & (self.mother == "0"))

    def __len__(self) -> int:
        return len(self.iid)

    def id_keys(self) -> np.ndarray:
        """``FID<TAB>IID`` per sample: the key that .pheno/.cov rows are matched on."""
        return np.char.add(np.char.add(self.fid, "\t"), self.iid)


# --- text parsing -------------------------------------------------------------------


def _tokens(path: Path, ncol: int, what: str, skip_header: bool = False) -> np.ndarray:
    """A whitespace table as an ``(rows, ncol)`` string array, in one vectorised split.

    Lines starting with ``#`` are skipped when ``skip_header`` (PLINK 2 headers). A line
    with the wrong number of fields is reported by its number.
    """
    text = _read_text(path)
    lines = text.splitlines()
    if skip_header:
        lines = [ln for ln in lines if not ln.startswith("#")]
    lines = [ln for ln in lines if ln.strip()]
    flat = " ".join(lines).split()
    if len(flat) != ncol * len(lines):
        for number, line in enumerate(_read_text(path).splitlines(), start=1):
            skipped = not line.strip() or (skip_header and line.startswith("#"))
            if not skipped and len(line.split()) != ncol:
                raise UserError(
                    f"{path}: line {number} has {len(line.split())} fields, "
                    f"a {what} line has {ncol}"
                )
    return np.asarray(flat, dtype=str).reshape(len(lines), ncol)


def _read_text(path: Path) -> str:
    try:
        if str(path).endswith((".gz", ".bgz")):
            with gzip.open(path, "rt") as handle:
                return handle.read()
        return Path(path).read_text()
    except FileNotFoundError as exc:
        raise UserError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text file ({exc.reason})") from exc


def _read_bim(path: Path) -> VariantTable:
    t = _tokens(path, 6, ".bim")
    try:
        return VariantTable(
            t[:, 0], t[:, 1], t[:, 2].astype(float), t[:, 3].astype(np.int64), t[:, 4], t[:, 5]
        )
    except ValueError as exc:
        raise UserError(f"{path}: a CM or BP value is not a number ({exc})") from exc


def _sex_codes(values: np.ndarray) -> np.ndarray:
    """PLINK sex: 1/M male, 2/F female, anything else unknown (0)."""
    out = np.zeros(len(values), dtype=np.int8)
    upper = np.char.upper(values)
    out[(values == "1") | (upper == "M")] = 1
    out[(values == "2") | (upper == "F")] = 2
    return out


def _phenotype_values(values: np.ndarray) -> np.ndarray:
    """A .fam/.psam phenotype column as floats; NA and non-numeric text become -9."""
    clean = np.where(np.isin(values, MISSING_CODES), "-9", values)
    try:
        return clean.astype(np.float64)
    except ValueError:
        out = np.full(len(values), -9.0)
        for i, text in enumerate(clean):  # only files with non-numeric phenotypes get here
            with contextlib.suppress(ValueError):
                out[i] = float(text)
        return out


def _read_fam(path: Path) -> SampleTable:
    t = _tokens(path, 6, ".fam")
    return SampleTable(
        t[:, 0], t[:, 1], t[:, 2], t[:, 3], _sex_codes(t[:, 4]), _phenotype_values(t[:, 5])
    )


def _read_pvar(path: Path) -> VariantTable:
    """A .pvar (``#CHROM POS ID REF ALT ...`` header, or .bim-like without one)."""
    header = None
    with open(path) as handle:
        for line in handle:
            if line.startswith("##"):
                continue
            if line.startswith("#CHROM"):
                header = line[1:].split()
            break
    if header is None:  # .bim column order: CHROM ID CM POS ALT REF
        bim = _read_bim(path)
        return VariantTable(
            bim.chrom, bim.snp, bim.cm, bim.bp, _dot_to_zero(bim.a1), _dot_to_zero(bim.a2)
        )
    for need in ("CHROM", "POS", "ID", "REF", "ALT"):
        if need not in header:
            raise UserError(f"{path}: the header has no {need} column")
    t = _tokens(path, len(header), ".pvar", skip_header=True)
    col = {name: t[:, i] for i, name in enumerate(header)}
    cm = col["CM"].astype(float) if "CM" in col else np.zeros(len(t))
    return VariantTable(
        col["CHROM"],
        col["ID"],
        cm,
        col["POS"].astype(np.int64),
        _dot_to_zero(col["ALT"]),
        _dot_to_zero(col["REF"]),
    )


def _dot_to_zero(alleles: np.ndarray) -> np.ndarray:
    """VCF/pvar's missing allele ``.`` is PLINK 1's ``0``."""
    return np.where(alleles == ".", "0", alleles)


def _read_psam(path: Path) -> SampleTable:
    """A .psam with a ``#FID IID``/``#IID`` header, or a headerless .fam-like file."""
    with open(path) as handle:
        first = handle.readline()
    if not first.startswith("#"):
        return _read_fam(path)
    header = first[1:].split()
    t = _tokens(path, len(header), ".psam", skip_header=True)
    col = {name.upper(): t[:, i] for i, name in enumerate(header)}
    if "IID" not in col:
        raise UserError(f"{path}: the header has no IID column")
    n = len(t)
    zeros = np.full(n, "0")
    fid = col.get("FID", zeros)  # no FID column: plink2 --make-bed writes FID 0
    pheno_name = "PHENO1" if "PHENO1" in col else None
    if pheno_name is None:
        rest = [
            h.upper() for h in header if h.upper() not in ("FID", "IID", "SID", "PAT", "MAT", "SEX")
        ]
        pheno_name = rest[0] if rest else None
    pheno = _phenotype_values(col[pheno_name]) if pheno_name else np.full(n, -9.0)
    return SampleTable(
        fid,
        col["IID"],
        col.get("PAT", zeros),
        col.get("MAT", zeros),
        _sex_codes(col.get("SEX", zeros)),
        pheno,
    )


# --- the three backends ------------------------------------------------------------


def _check_bed_size(prefix: Path, n_samples: int, n_variants: int) -> None:
    """A .bed holds ``3 + variants · ceil(samples / 4)`` bytes: name the file that is off.

    When the size fits the .bim's variants with another whole number of bytes per
    variant, the .fam (the sample count) does not belong to the .bed; otherwise the
    .bed is cut short (or has trailing bytes).
    """
    path = Path(f"{prefix}.bed")
    with path.open("rb") as f:
        if f.read(3) != b"l\x1b\x01":
            return  # not a variant-major .bed: bed-reader says so
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


def _vcf_tables(path: Path) -> tuple[VariantTable, SampleTable]:
    from cyvcf2 import VCF

    try:
        vcf = VCF(str(path), lazy=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot read as VCF ({exc})") from exc
    chrom, snp, bp, a1, a2 = [], [], [], [], []
    for v in vcf:  # record metadata; cyvcf2 yields one record at a time
        chrom.append(v.CHROM)
        snp.append(v.ID if v.ID is not None else ".")
        bp.append(v.POS)
        a1.append(",".join(v.ALT) if v.ALT else "0")
        a2.append(v.REF)
    ids = np.asarray(vcf.samples, dtype=str)
    vcf.close()
    parts = np.char.partition(ids, "_") if len(ids) else np.empty((0, 3), dtype=str)
    split = np.char.count(ids, "_") == 1 if len(ids) else np.zeros(0, dtype=bool)
    fid = np.where(split, parts[:, 0], ids)
    iid = np.where(split, parts[:, 2], ids)
    n = len(ids)
    variants = VariantTable(
        np.asarray(chrom),
        np.asarray(snp),
        np.zeros(len(snp)),
        np.asarray(bp),
        _dot_to_zero(np.asarray(a1)),
        np.asarray(a2),
    )
    samples = SampleTable(fid, iid, np.full(n, "0"), np.full(n, "0"), np.zeros(n), np.full(n, -9.0))
    return variants, samples


# --- public API --------------------------------------------------------------------


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
            self.variants = _read_bim(self.files["bim"])
            self.samples = _read_fam(self.files["fam"])
            self._backend: Any = _BedBackend(self.prefix, len(self.samples), len(self.variants))
        elif self.format == "pgen":
            self.variants = _read_pvar(self.files["pvar"])
            self.samples = _read_psam(self.files["psam"])
            self._backend = _PgenBackend(
                self.prefix, len(self.samples), len(self.variants), self._multiallelic()
            )
        else:
            self.variants, self.samples = _vcf_tables(self.files["vcf"])
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


# --- .pheno / .cov ------------------------------------------------------------------


def read_table_file(
    path: str | os.PathLike[str], columns: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(keys "FID<TAB>IID", values float (rows, k))`` from a ``FID IID ...`` file.

    Missing codes (-9, NA) become NaN. Raises UserError naming the file, line and column
    for a missing header, an unknown column, a short line, a duplicate sample or a value
    that is not a number.
    """
    path = Path(path)
    lines = _read_text(path).splitlines()
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
