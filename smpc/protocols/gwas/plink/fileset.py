"""A site's variant and sample tables, read from its .bim/.fam, .pvar/.psam or VCF.

**Variant table** (:class:`VariantTable`): the columns of a PLINK 1 ``.bim`` — chrom, snp,
cm, bp, a1, a2 — as the site's file states them (chromosome names are not normalised here;
:mod:`smpc.protocols.gwas.align` does that). ``g`` in
:meth:`smpc.protocols.gwas.genotypes.SiteGenotypes.read_chunk` is the number of copies of
*a1*. For .pgen/.vcf a variant's ``a1`` is ALT and ``a2`` is REF, which is what
``plink2 --make-bed`` (and ``plink1.9 --vcf --keep-allele-order``) writes, so a .bed
converted from the same data with plink2 reads identically; an ALT of ``.`` becomes ``0``
as in a .bim. Which allele is a1 at a site does not matter downstream:
:mod:`smpc.protocols.gwas.align` flips each site into one reference orientation. A
multi-allelic record (ALT ``A,C``) keeps its comma-joined ALT as a1 and reads as missing;
:mod:`smpc.protocols.gwas.align` excludes it. A VCF record without an ID keeps ``.``, so
several of them are duplicate IDs to :mod:`smpc.protocols.gwas.align` (excluded): set IDs
first (e.g. ``plink2 --set-all-var-ids``). Reading a VCF walks its records in file order
(cyvcf2 has no random access), so chunks in ascending order cost one pass.

**Samples** (:class:`SampleTable`): fid, iid, father, mother, sex (1 male, 2 female,
0 unknown), phenotype (float; PLINK's missing codes kept as -9) and founder. PLINK 1.9
(``load_fam``) makes a sample a founder exactly when both parent IDs are ``0``; a parent
ID naming nobody in the dataset still makes a non-founder (only ``--make-founders``
changes that), and we do the same so founder-based statistics match. A VCF has no
pedigree, sex or phenotype: parents ``0``, sex 0, phenotype -9. A VCF sample ID
``F_I`` with exactly one ``_`` becomes FID ``F``, IID ``I``, and one without ``_`` is both
FID and IID, as ``plink1.9 --vcf`` does by default (``plink2 --export vcf`` writes
``FID_IID``); PLINK rejects IDs with several ``_``, we keep them whole (``--double-id``).
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smpc.errors import UserError

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

    def to_columns(self) -> dict[str, str]:
        """The table as one newline-joined text per column, as the public JSON carries it.

        By columns, not rows: each column parses back with one ``split`` and one array
        conversion, where rows would take a Python loop over every variant at every party.
        """
        return {
            c: "\n".join(np.asarray(getattr(self, c)).astype(str).tolist())
            for c in _VARIANT_COLUMNS
        }

    @classmethod
    def from_columns(cls, columns: Mapping[str, str]) -> VariantTable:
        """Inverse of :meth:`to_columns`."""
        return cls(
            **{
                c: np.array(columns[c].split("\n") if columns[c] else [], dtype=str)
                for c in _VARIANT_COLUMNS
            }
        )


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


def _tokens(path: Path, ncol: int, what: str, skip_header: bool = False) -> np.ndarray:
    """A whitespace table as an ``(rows, ncol)`` string array, in one vectorised split.

    Lines starting with ``#`` are skipped when ``skip_header`` (PLINK 2 headers). A line
    with the wrong number of fields is reported by its number.
    """
    text = read_text(path)
    lines = text.splitlines()
    if skip_header:
        lines = [ln for ln in lines if not ln.startswith("#")]
    lines = [ln for ln in lines if ln.strip()]
    flat = " ".join(lines).split()
    if len(flat) != ncol * len(lines):
        for number, line in enumerate(read_text(path).splitlines(), start=1):
            skipped = not line.strip() or (skip_header and line.startswith("#"))
            if not skipped and len(line.split()) != ncol:
                raise UserError(
                    f"{path}: line {number} has {len(line.split())} fields, "
                    f"a {what} line has {ncol}"
                )
    return np.asarray(flat, dtype=str).reshape(len(lines), ncol)


def read_text(path: Path) -> str:
    try:
        if str(path).endswith((".gz", ".bgz")):
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"{path}: file not found") from exc
    except (OSError, EOFError) as exc:  # a corrupt or truncated .gz
        raise UserError(f"{path}: cannot read: {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None


def read_bim(path: Path) -> VariantTable:
    t = _tokens(path, 6, ".bim")
    try:
        return VariantTable(
            t[:, 0], t[:, 1], t[:, 2].astype(float), t[:, 3].astype(np.int64), t[:, 4], t[:, 5]
        )
    except (ValueError, OverflowError) as exc:
        for row, (cm, bp) in enumerate(zip(t[:, 2], t[:, 3], strict=True)):
            problem = _bim_problem(str(cm), str(bp))
            if problem:
                raise UserError(f"{path}: variant {row + 1} ({t[row, 1]}): {problem}") from None
        raise UserError(f"{path}: a CM or BP value is not a number ({exc})") from exc


def _bim_problem(cm: str, bp: str) -> str:
    """Why a .bim line's CM or BP column cannot be read ("" if both can)."""
    try:
        float(cm)
    except ValueError:
        return f"column 3 (CM) {cm!r} is not a number"
    try:
        position = int(bp)
    except ValueError:
        return f"column 4 (BP) {bp!r} is not an integer"
    if not -(2**63) <= position < 2**63:
        return f"column 4 (BP) {bp!r} is out of range"
    return ""


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


def unique_samples(path: Path, samples: SampleTable, first_line: int = 1) -> SampleTable:
    """``samples`` if no (FID, IID) appears twice; else a UserError naming both lines.

    PLINK 1.9 refuses a duplicate ID wherever it looks samples up by ID (``--pheno``,
    ``--covar``: "Duplicate ID"), and its ``--merge-list`` keeps one of the two silently;
    a sample counted twice would bias every pooled statistic, so a site's table with one
    is refused. ``first_line`` is the file line of the first sample.
    """
    keys = samples.id_keys()
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if (counts == 1).all():
        return samples
    where = np.flatnonzero(keys == keys[first[np.argmax(counts > 1)]])[:2] + first_line
    fid, _, iid = str(keys[where[0] - first_line]).partition("\t")
    raise UserError(
        f"{path}: lines {where[0]} and {where[1]}: sample FID {fid!r} IID {iid!r} appears twice: "
        "give each sample one line"
    )


def read_fam(path: Path) -> SampleTable:
    t = _tokens(path, 6, ".fam")
    return unique_samples(
        path,
        SampleTable(
            t[:, 0], t[:, 1], t[:, 2], t[:, 3], _sex_codes(t[:, 4]), _phenotype_values(t[:, 5])
        ),
    )


def read_pvar(path: Path) -> VariantTable:
    """A .pvar (``#CHROM POS ID REF ALT ...`` header, or .bim-like without one)."""
    header = None
    with open(path, encoding="utf-8", errors="replace") as handle:  # read_text checks
        for line in handle:
            if line.startswith("##"):
                continue
            if line.startswith("#CHROM"):
                header = line[1:].split()
            break
    if header is None:  # .bim column order: CHROM ID CM POS ALT REF
        bim = read_bim(path)
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


def read_psam(path: Path) -> SampleTable:
    """A .psam with a ``#FID IID``/``#IID`` header, or a headerless .fam-like file."""
    with open(path, encoding="utf-8", errors="replace") as handle:  # read_text checks
        first = handle.readline()
    if not first.startswith("#"):
        return read_fam(path)
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
    samples = SampleTable(
        fid,
        col["IID"],
        col.get("PAT", zeros),
        col.get("MAT", zeros),
        _sex_codes(col.get("SEX", zeros)),
        pheno,
    )
    return unique_samples(path, samples, first_line=2)  # after the header line


def vcf_tables(path: Path) -> tuple[VariantTable, SampleTable]:
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
