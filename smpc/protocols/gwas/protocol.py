"""A GWAS as one job: what sites share, what parties combine, what the analyst writes.

**Sites** (:func:`site_statistics`) read their fileset (``--site NAME=PREFIX``), and share,
in their own variant order and allele orientation:

- ``site`` — public (t = 0, every party reads it; the broker sees ciphertext): the
  variant table (CHR, SNP, CM, BP, A1, A2 as in its .bim) and whether its phenotype is
  case/control or quantitative. Variant identities are not patient data; an allele
  ``0`` tells that no sample of the site carries it, which PLINK's own .bim tells too.
  With ``reveal: statistics`` also ``a1_minor`` (:func:`a1_is_minor`): whether every
  A1 is a minor allele of the site's founders, as a PLINK-written .bim has it.
- ``counts`` — genotype counts per variant × phenotype class × founder × genotype
  (:mod:`.counts`), integers;
- ``linear.*`` — per-variant cross products of x = [1, g, covariates] and y over the
  samples with a call, a phenotype and every covariate (:mod:`.regression`), each real
  as two integers, ``.hi`` = floor(v) and ``.lo`` = round((v - floor v)·2^32), so the
  pooled sums are exact to 2^-33 per site while every word stays within GF(2^61 - 1)'s
  fast field (one 16-bit fixed point changed PLINK's 4th printed digit where a
  regression cancels); ``linear`` in ``tests``;
- ``qt.*`` — the same without covariates for ``assoc`` on a quantitative phenotype.

**Parties** (:func:`combine`) align the sites' tables (:mod:`.align`), rearrange each
site's shares into the reference order and orientation (:mod:`.combine`) and add them.
With ``reveal: aggregates`` each party seals its share of the pooled statistics and the
alignment to the analyst.

**The analyst** (:func:`finalize`) reconstructs, takes A1 as the founders' minor allele
as PLINK 1.9 does, applies the quality-control filters and writes PLINK 1.9's files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from smpc.core.encoding import bytes_to_words, words_to_bytes
from smpc.core.field import PrimeField, field_for
from smpc.errors import UserError
from smpc.protocols.gwas.combine import pack_symmetric, unpack_symmetric
from smpc.protocols.gwas.counts import SMALL_EPSILON
from smpc.wire.messages import JobInput

logger = logging.getLogger("smpc.gwas")

COUNT_BITS = 40
LIMB_BITS = 32
"""Cross products travel as hi = floor(v) and lo = round((v - hi)·2^32): exact to 2^-33."""
CROSS_INT_BITS = 40  # |floor(v)| < 2^40 per site
CROSS_PARTS = ("xtx", "xty", "yty")
RegressionGroup = Literal["linear", "qt"]  # .assoc.linear, and the .qassoc of a quantitative assoc
REG_SCALE_BITS = 32
"""With ``reveal: statistics`` covariates and the phenotype enter the cross products as
x·2^32 (the intercept and the allele count unscaled), so every pooled entry is an
integer, exact to 2^-33 of its sum as in aggregates mode (2^-17 moved PLINK's 4th digit
of a t statistic near 0)."""
REG_ENTRY_BITS = 117  # a site's scaled entry: < 2^20 samples · (2^16·2^32)^2
REG_POOLED_BITS = 150  # pooled entries, signed, for the conversion (up to 2^32 sites)
REG_SHARE_BITS = 192
"""The sites share scaled entries in a 192-bit prime field (24 bytes a value); inside
MPyC the parties convert them to the regression's wide field (:func:`.secure.convert_field`)."""
REG_VALUE_BITS = 16  # |covariate|, |phenotype| < 2^16 with reveal: statistics
REG_MAX_SAMPLES = 1 << 20  # samples the secure regressions are sized for
RATIOS = ("f_a", "f_u", "chisq", "or")
TEST_EXTENSION = {
    "assoc": "assoc", "model": "model", "hardy": "hwe", "freq": "frq", "missing": "lmiss",
    "linear": "assoc.linear", "logistic": "assoc.logistic",
}  # fmt: skip  # the .assoc columns opened as exact fractions
PUBLIC_BITS = 57
TABLE_COLUMNS = ("chrom", "snp", "cm", "bp", "a1", "a2")
CHUNK = 2000  # variants per chunk at the sites


def statistics_mode(spec: Any) -> bool:
    """``reveal: statistics``: the statistics are computed and opened inside MPyC."""
    return "statistics" in spec.reveal


def assoc_modulus() -> tuple[int, int]:
    """The prime field of the sites' allele counts for a secure ``assoc``, and its bits."""
    from smpc.protocols.gwas.mpc.bounds import MAX_ALLELES, assoc_field_bits, field_prime

    bits = assoc_field_bits(MAX_ALLELES)
    return field_prime(bits), bits


PHENOTYPES = ("case/control", "quantitative")
"""The phenotype kinds a job's sites may have (:func:`phenotype_kind`)."""
NO_PHENOTYPE = "none"
"""What a site declares when none of its samples has a phenotype value (a VCF's .fam
phenotype): the other sites decide the kind."""


def regression_groups(spec: Any, phenotype: str | None = None) -> dict[RegressionGroup, int]:
    """The cross-product groups a spec needs, with their design width k = len(x).

    ``qt`` is ``assoc``'s quantitative reading of a ``pheno:`` column: the sites share
    its cross products whatever their phenotype (a job is built before they declare
    it), and a declared ``case/control`` phenotype does not read it.
    """
    groups: dict[RegressionGroup, int] = {}
    if "linear" in spec.tests:
        groups["linear"] = 2 + len(spec.covar)
    if "assoc" in spec.tests and spec.pheno is not None and phenotype != "case/control":
        groups["qt"] = 2
    return groups


def regression_field(
    k: int, samples: int, pheno_bits: int, covar_bits: Sequence[int]
) -> tuple[int, Any]:
    """The prime of a width-``k`` secure regression and the bounds of what
    :func:`.secure.secure_linear` opens (:class:`.secure.LinearBounds`).

    Sized from what the sites declare publicly (their samples, and the bit length of
    their largest |phenotype| and |covariate|): pooled, columns scaled by
    2^REG_SCALE_BITS. Four times the samples cover the sites' rounding of each entry
    (by at most 1/2 per site, well below a diagonal entry): the rounded matrix's
    determinant is at most that of the exact one with every diagonal entry doubled.
    """
    from smpc.protocols.gwas.mpc.bounds import field_prime, linear_bounds

    scaled = [1 << (REG_SCALE_BITS + b) for b in covar_bits[: k - 2]]
    y = 1 << (REG_SCALE_BITS + pheno_bits)
    bounds = linear_bounds(4 * max(samples, 1), [1, 2, *scaled], y)
    return field_prime(bounds.field_bits), bounds


def real_inputs(name: str, statistics: bool) -> list[JobInput]:
    """How a site shares a real-valued sum: with ``reveal: statistics`` one scaled integer
    in the 192-bit field (:func:`scale_cross_products`), else exact hi/lo words in the
    job's field (:func:`split_limbs`)."""
    if statistics:
        return [JobInput(name=name, frac_bits=0, int_bits=REG_ENTRY_BITS, modulus=share_modulus())]
    return [
        JobInput(name=f"{name}.hi", frac_bits=0, int_bits=CROSS_INT_BITS),
        JobInput(name=f"{name}.lo", frac_bits=0, int_bits=LIMB_BITS + 1),
    ]


def share_modulus() -> int:
    """The 192-bit prime the sites share scaled regression entries in (statistics mode)."""
    from smpc.protocols.gwas.mpc.bounds import field_prime

    return field_prime(REG_SHARE_BITS)


def column_scale_bits(k: int) -> np.ndarray:
    """Per column of x = [1, g, covariates...]: its scale's power of two (statistics mode)."""
    return np.array([0, 0] + [REG_SCALE_BITS] * (k - 2), dtype=np.int64)


def job_parts(spec: Any) -> tuple[tuple[JobInput, ...], tuple[JobInput, ...]]:
    """The inputs every site shares and the outputs every party delivers."""
    public = JobInput(name="site", frac_bits=0, int_bits=PUBLIC_BITS, public=True)
    counts = JobInput(name="counts", frac_bits=0, int_bits=COUNT_BITS)
    alignment = JobInput(name="alignment", frac_bits=0, int_bits=PUBLIC_BITS, public=True)
    statistics = statistics_mode(spec)
    cross = [
        i
        for group in regression_groups(spec)
        for part in CROSS_PARTS
        for i in real_inputs(f"{group}.{part}", statistics)
    ]
    if statistics:
        inputs = [public, counts, *cross]
        if "assoc" in spec.tests:  # a case/control phenotype's (whichever the sites have)
            modulus, _ = assoc_modulus()
            inputs.append(JobInput(name="alleles", frac_bits=0, int_bits=40, modulus=modulus))
        return tuple(inputs), (alignment, *statistics_outputs(spec))
    return (public, counts, *cross), (alignment, counts, *cross)


def alignment_parts() -> tuple[tuple[JobInput, ...], tuple[JobInput, ...]]:
    """The preliminary job of ``filters: {mind}``: variant tables in, alignment out."""
    public = JobInput(name="site", frac_bits=0, int_bits=PUBLIC_BITS, public=True)
    alignment = JobInput(name="alignment", frac_bits=0, int_bits=PUBLIC_BITS, public=True)
    return (public,), (alignment,)


def analysed_ids(opened: Mapping[str, np.ndarray]) -> np.ndarray:
    """The IDs of the variants every site has, from an opened alignment."""
    summary = json.loads(words_to_bytes(np.asarray(opened["alignment"]).astype(np.int64)))
    return parse_table(summary["variants"])["snp"]


def statistics_outputs(spec: Any, phenotype: str | None = None) -> list[JobInput]:
    """What the parties open with ``reveal: statistics`` (:mod:`.session`): the one place
    that decides it, for the job and for the session alike.

    A job is built before any site declares its phenotype, so the job announces the
    outputs of either kind (``phenotype`` None): ``assoc`` reads a ``pheno:`` column as
    case/control (``.assoc``: the ``assoc.*`` ratios) or as quantitative (``.qassoc``:
    the ``qt`` regression). Once the sites have declared their kind (one of
    :data:`PHENOTYPES`), the session opens ``statistics_outputs(spec, kind)`` and every
    party delivers the announced outputs that kind does not read as empty arrays
    (:func:`unread_outputs`): each party delivers exactly the outputs the job names.
    """
    names = ["a1.merge", "a1.swap"]
    if spec.filters and (spec.filters.geno is not None or spec.filters.maf is not None):
        names += ["filter.geno", "filter.maf"]
    if spec.filters and spec.filters.hwe is not None:
        names += ["filter.hwe"]
    for test, opened in (
        ("model", ["model.counts"]),
        ("hardy", ["hardy.counts"]),
        ("freq", ["freq.alleles"]),
        ("missing", ["missing.counts"]),
    ):
        if test in spec.tests:
            names += opened
    for group in regression_groups(spec, phenotype):
        ratios = ("beta", "t2") if group == "linear" else ("beta", "se2")
        names += [f"{group}.nmiss"] + [f"{group}.{r}.{p}" for r in ratios for p in ("num", "den")]
    if "assoc" in spec.tests and phenotype != "quantitative":  # .assoc's opened ratios
        names += [f"assoc.{s}.{p}" for s in RATIOS for p in ("num", "den")]
    return [JobInput(name=n, frac_bits=0, int_bits=200) for n in names]


def unread_outputs(spec: Any, phenotype: str) -> list[str]:
    """The outputs a job announces that the sites' declared ``phenotype`` does not read
    (:func:`statistics_outputs`): the parties deliver them as empty arrays."""
    read = {o.name for o in statistics_outputs(spec, phenotype)}
    return [o.name for o in statistics_outputs(spec) if o.name not in read]


# --- site side ------------------------------------------------------------------------


def site_statistics(
    spec: Any, prefix: Path, analysed: np.ndarray | None = None, *, table_only: bool = False
) -> tuple[dict[str, np.ndarray], int]:
    """A site's shared arrays for a GWAS spec, and its number of samples.

    ``analysed`` (the IDs of the variants every site has, from the job) is needed for
    ``filters: {mind}``: PLINK drops a sample whose missing calls over all variants
    exceed the bound before anything else, so each site drops its own such samples.
    ``table_only``: just the public ``site`` input (the preliminary alignment job).
    """
    from smpc.protocols.gwas.sitedata import open_site

    with open_site(prefix) as site:
        return _site_statistics(spec, prefix, site, analysed, table_only)


def mind_keep(site: Any, analysed: np.ndarray, mind: float) -> np.ndarray:
    """Samples passing PLINK 1.9's ``--mind``: missing calls <= int(mind·V·(1 + 2^-44))."""
    from smpc.protocols.gwas.sitedata import iter_chunks

    rows = {snp: i for i, snp in enumerate(site.variants.snp)}
    absent = [snp for snp in analysed if snp not in rows]
    if absent:
        raise UserError(f"the job's analysed variants include some this site lacks: {absent[:5]}")
    index = np.sort(np.array([rows[snp] for snp in analysed], dtype=np.int64))
    missing = np.zeros(site.n_samples, dtype=np.int64)
    for _, chunk in iter_chunks(site, index, CHUNK):
        missing += np.count_nonzero(chunk < 0, axis=1)
    return missing <= int(mind * len(index) * (1 + SMALL_EPSILON))


def _site_statistics(
    spec: Any, prefix: Path, site: Any, analysed: np.ndarray | None, table_only: bool
) -> tuple[dict[str, np.ndarray], int]:
    from smpc.protocols.gwas.align import site_counts
    from smpc.protocols.gwas.regression import linear_site_stats
    from smpc.protocols.gwas.sitedata import iter_chunks, read_covar

    samples = site.samples
    n_variants = len(site.variants.snp)
    keep = np.ones(site.n_samples, dtype=bool)
    if spec.filters is not None and spec.filters.mind is not None and not table_only:
        if analysed is None:
            raise UserError("filters: mind needs the analysed variants in the job")
        keep = mind_keep(site, analysed, spec.filters.mind)
    pheno = phenotype(spec, prefix, samples)
    binary = is_case_control(pheno)
    pheno_class = np.full(len(pheno), 2, dtype=np.int64)  # missing phenotype
    if binary:
        pheno_class[pheno == 1] = 0
        pheno_class[pheno == 2] = 1
    else:
        pheno_class[~np.isnan(pheno)] = 0  # quantitative: one class with a value
    info: dict[str, Any]
    if table_only:
        info = {
            "variants": _table_columns(site.variants),
            "phenotype": phenotype_kind(pheno),
        }
        return {"site": bytes_to_words(json.dumps(info).encode())}, int(keep.sum())
    founder = np.asarray(samples.founder, dtype=bool)
    covar = (
        read_covar(prefix, list(spec.covar), samples) if spec.covar else np.zeros((len(pheno), 0))
    )
    pheno, pheno_class, founder, covar = pheno[keep], pheno_class[keep], founder[keep], covar[keep]
    groups: dict[str, np.ndarray | None] = {}
    if "linear" in spec.tests:
        groups["linear"] = covar
    if "assoc" in spec.tests and spec.pheno is not None:
        groups["qt"] = None
    counts = np.zeros((n_variants, 3, 2, 4), dtype=np.int64)
    cross = {
        g: {
            "xtx": np.zeros((n_variants, _width(c), _width(c))),
            "xty": np.zeros((n_variants, _width(c))),
            "yty": np.zeros(n_variants),
        }
        for g, c in groups.items()
    }
    no_flip = np.zeros(CHUNK, dtype=bool)
    for idx, chunk in iter_chunks(site, np.arange(n_variants), CHUNK):
        if not keep.all():
            chunk = chunk[keep]
        counts[idx] = site_counts(chunk, no_flip[: len(idx)], pheno_class, founder)
        for group, c in groups.items():
            stats = linear_site_stats(chunk, c, pheno)
            cross[group]["xtx"][idx] = stats.xtx
            cross[group]["xty"][idx] = stats.xty
            cross[group]["yty"][idx] = stats.yty
    info = {
        "variants": _table_columns(site.variants),
        "phenotype": phenotype_kind(pheno),
    }
    if statistics_mode(spec):  # what the site's .bim says when PLINK wrote it (README)
        info["a1_minor"] = a1_is_minor(counts)
    if statistics_mode(spec) and groups:  # sizes the regression's field (README)
        info["magnitudes"] = {
            "samples": len(pheno),
            "pheno": magnitude_bits(pheno),
            "covar": [magnitude_bits(covar[:, j]) for j in range(covar.shape[1])],
        }
    arrays = {"site": bytes_to_words(json.dumps(info).encode()), "counts": counts}
    if statistics_mode(spec) and "assoc" in spec.tests:
        arrays["alleles"] = case_control_alleles(counts)
    if statistics_mode(spec) and groups:
        check_regression_values(prefix, spec, pheno, covar)
    for group, parts in cross.items():
        if statistics_mode(spec):  # exact integers in float64, encoded as such
            parts = scale_cross_products(parts)
        parts = {**parts, "xtx": pack_symmetric(parts["xtx"])}
        if statistics_mode(spec):
            arrays.update({f"{group}.{p}": v for p, v in parts.items()})
            continue
        for part, value in parts.items():
            hi, lo = split_limbs(value)
            arrays[f"{group}.{part}.hi"], arrays[f"{group}.{part}.lo"] = hi, lo
    return arrays, len(pheno)


def a1_is_minor(counts: np.ndarray) -> bool:
    """Whether every variant's A1 is a minor allele of the site's founders (ties count).

    ``plink --make-bed`` writes each .bim so (A1 is the founders' minor allele), so for
    such a site this tells nothing its public variant table does not. When every site
    says so, the pooled founders' A1 alleles cannot exceed their A2 alleles wherever the
    sites' A1 alleles agree, and the parties need only MPyC's cheap zero test to learn
    the pooled A1 choice there (:func:`a1_sides`); a secure comparison only elsewhere.
    """
    founders = counts[:, :, 1, :].sum(axis=1)  # (V, genotype): A1A1, het, A2A2, missing
    return bool(np.all(founders[:, 0] <= founders[:, 2]))


def a1_sides(claims: Sequence[bool], flips: Sequence[np.ndarray], variants: int) -> str:
    """Per reference variant, the side of 0 the founders' A2 minus A1 homozygotes are on:
    ``+`` (≥ 0), ``-`` (≤ 0) or ``?`` (unknown, a secure comparison decides).

    Known when every site claims its A1 minor (:func:`a1_is_minor`) and all sites' A1
    are the same reference allele: each site's difference has that sign, so their sum has.
    """
    if not claims or not all(claims):
        return "?" * variants
    flip = np.stack([np.asarray(f, dtype=bool) for f in flips])
    side = np.full(variants, b"?", dtype="S1")
    side[~flip.any(axis=0)] = b"+"
    side[flip.all(axis=0)] = b"-"
    return side.tobytes().decode()


def side_signs(sides: str, variants: int) -> np.ndarray:
    """:func:`a1_sides` as int8: 1 (≥ 0), -1 (≤ 0), 0 unknown; no string: all unknown."""
    if not sides:
        return np.zeros(variants, dtype=np.int8)
    if len(sides) != variants:
        raise ValueError(f"a1_side has {len(sides)} entries for {variants} variants")
    codes = np.frombuffer(sides.encode(), dtype=np.uint8)
    return (codes == ord("+")).astype(np.int8) - (codes == ord("-"))


def scale_cross_products(parts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cross products of the scaled columns (covariates and y times 2^32), rounded.

    Powers of two scale float64 exactly and rounding to an integer is exact, so each
    entry is round(entry·2^(scale_i + scale_j)) as an integral float64, which encodes
    exactly however wide (:class:`smpc.core.encoding.FixedPoint`).
    """
    k = parts["xtx"].shape[-1]
    col = 2.0 ** column_scale_bits(k).astype(np.float64)
    y = 2.0**REG_SCALE_BITS
    return {
        "xtx": np.rint(parts["xtx"] * (col[:, None] * col[None, :])),
        "xty": np.rint(parts["xty"] * (col * y)),
        "yty": np.rint(parts["yty"] * (y * y)),
    }


def magnitude_bits(values: np.ndarray) -> int:
    """The least b with |x| < 2^b for every value present (0 when none is)."""
    present = np.abs(values[~np.isnan(values)])
    return int(np.frexp(present.max())[1]) if present.size and present.max() > 0 else 0


def check_regression_values(prefix: Path, spec: Any, pheno: np.ndarray, covar: np.ndarray) -> None:
    """``reveal: statistics`` sizes its field for |values| < 2^16: refuse larger ones."""
    bound = 2.0**REG_VALUE_BITS
    named = [(spec.pheno or "phenotype", pheno)] + [
        (c, covar[:, j]) for j, c in enumerate(spec.covar)
    ]
    for name, values in named:
        big = np.abs(values) >= bound
        if big.any():
            raise UserError(
                f"{prefix}: {name} has |value| {np.abs(values[big]).max():g} >= 2^{REG_VALUE_BITS}"
                f"; reveal: statistics sizes its field for smaller values: rescale the column "
                "or use reveal: aggregates"
            )


def case_control_alleles(counts: np.ndarray) -> np.ndarray:
    """Per variant: case A1 alleles, case called alleles, control A1, control called."""
    every = counts.sum(axis=2)  # founders and non-founders
    a1 = 2 * every[:, :, 0] + every[:, :, 1]
    called = a1 + every[:, :, 1] + 2 * every[:, :, 2]
    return np.stack([a1[:, 1], called[:, 1], a1[:, 0], called[:, 0]], axis=1)


def split_limbs(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A real array as integers hi = floor(v), lo = round((v - hi)·2^32) (exact split)."""
    hi = np.floor(value)
    lo = np.rint((value - hi) * 2.0**LIMB_BITS)  # v - floor(v) is exact in float64
    return hi.astype(np.int64), lo.astype(np.int64)


def join_limbs(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Pooled hi and lo sums back to reals."""
    return np.asarray(hi, dtype=np.float64) + np.asarray(lo, dtype=np.float64) * 2.0**-LIMB_BITS


def _width(covar: np.ndarray | None) -> int:
    """Columns of x = [1, g, covariates]."""
    return 2 + (0 if covar is None else covar.shape[1])


def phenotype(spec: Any, prefix: Path, samples: Any) -> np.ndarray:
    """The spec's phenotype per sample (NaN missing): a column of PREFIX.pheno, or the
    .fam phenotype with PLINK's missing codes (0, -9) as NaN."""
    from smpc.protocols.gwas.sitedata import read_pheno

    if spec.pheno is not None:
        return read_pheno(prefix, spec.pheno, samples)
    out = np.asarray(samples.phenotype, dtype=np.float64).copy()
    out[(out == 0) | (out == -9)] = np.nan
    return out


def flip_alleles(variants: Mapping[str, np.ndarray], flip: np.ndarray) -> dict[str, np.ndarray]:
    """A variant table with A1 and A2 exchanged where ``flip``."""
    out = dict(variants)
    out["a1"] = np.where(flip, variants["a2"], variants["a1"])
    out["a2"] = np.where(flip, variants["a1"], variants["a2"])
    return out


def phenotype_kind(pheno: np.ndarray) -> str:
    """What a site declares of its phenotype: one of :data:`PHENOTYPES`, or
    :data:`NO_PHENOTYPE` when no sample has a value."""
    if np.isnan(pheno).all():
        return NO_PHENOTYPE
    return "case/control" if is_case_control(pheno) else "quantitative"


def phenotype_problem(spec: Any, phenotype: str) -> str:
    """Why the spec's tests do not run on the sites' pooled ``phenotype`` ("" if they do).

    The parties check it as soon as they know the sites' declarations (before any
    statistic is opened), the analyst again before writing; the refusals follow PLINK
    1.9, which refuses ``--model``/``--logistic`` on a quantitative and ``--linear`` on a
    case/control phenotype.
    """
    tests = set(spec.tests)
    source = f"pheno: {spec.pheno}" if spec.pheno else "the .fam phenotype"
    if phenotype == NO_PHENOTYPE:
        return (
            f"{spec.name}: no sample of any site has a value of {source} (a VCF carries "
            "no .fam phenotype): give pheno: COLUMN of the sites' PREFIX.pheno"
        )
    binary_only = sorted(tests & {"model", "logistic"})
    if phenotype == "quantitative" and binary_only:
        return (
            f"{spec.name}: {' and '.join(binary_only)} need a case/control phenotype (1/2); "
            f"{source} is quantitative (use linear, or assoc for .qassoc)"
        )
    if phenotype == "quantitative" and "assoc" in tests and spec.pheno is None:
        return (
            f"{spec.name}: assoc on a quantitative trait (.qassoc) needs it as pheno: COLUMN "
            "of the sites' PREFIX.pheno"
        )
    if phenotype == "case/control" and "linear" in tests:
        return (
            f"{spec.name}: linear needs a quantitative phenotype; {source} is case/control "
            "(1/2): use logistic"
        )
    return ""


def is_case_control(pheno: np.ndarray) -> bool:
    """PLINK 1.9: a phenotype is case/control when every value present is 1 or 2."""
    present = pheno[~np.isnan(pheno)]
    return bool(np.isin(present, (1.0, 2.0)).all())


def _table_columns(variants: Any) -> dict[str, str]:
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
    """Inverse of :func:`_table_columns`."""
    table = {
        c: np.array(columns[c].split("\n") if columns[c] else [], dtype=str) for c in TABLE_COLUMNS
    }
    table["bp"] = table["bp"].astype(np.int64)
    return table


# --- party side -----------------------------------------------------------------------


def combine(
    job: Any,
    field: PrimeField,
    share_of: Callable[[str, str], np.ndarray],
) -> Iterator[tuple[str, np.ndarray]]:
    """This party's shares of the pooled, aligned statistics: (name, shares), one by one.

    ``share_of(input, site)`` gives this party's share of a site's input as field
    elements. Raises UserError when the sites cannot be combined (e.g. one site's
    phenotype is case/control and another's quantitative). ``alignment`` comes first.
    """
    from smpc.protocols.gwas.align import align
    from smpc.protocols.gwas.combine import take_counts, take_cross_products
    from smpc.protocols.gwas.sitedata import VariantTable

    sites = list(job.close)
    infos = {s: json.loads(words_to_bytes(field.to_signed(share_of("site", s)))) for s in sites}
    kinds = {info["phenotype"] for info in infos.values()} - {NO_PHENOTYPE}
    if len(kinds) > 1:
        raise UserError(
            "sites disagree on the phenotype: "
            + ", ".join(f"{s}: {infos[s]['phenotype']}" for s in sites)
        )
    tables = [VariantTable(**parse_table(infos[s]["variants"])) for s in sites]
    alignment = align(tables, sites)
    inputs = {i.name: i for i in job.inputs}
    reference = alignment.variants
    summary = {
        "variants": _table_columns(reference),
        "excluded": [list(map(str, row)) for row in alignment.excluded],
        "phenotype": kinds.pop() if kinds else NO_PHENOTYPE,
        "sites": sites,
    }
    if all("a1_minor" in info for info in infos.values()):  # reveal: statistics
        claims = [bool(infos[s]["a1_minor"]) for s in sites]
        summary["a1_side"] = a1_sides(claims, alignment.flip, len(reference))
    declared = [infos[s]["magnitudes"] for s in sites if "magnitudes" in infos[s]]
    if declared:  # the pooled bounds of the secure regressions (regression_field)
        summary["magnitudes"] = {
            "samples": sum(int(m["samples"]) for m in declared),
            "pheno": max(int(m["pheno"]) for m in declared),
            "covar": np.max([m["covar"] for m in declared], axis=0, initial=0).tolist(),
        }
    yield "alignment", field.from_int(bytes_to_words(json.dumps(summary).encode()))
    if "counts" not in inputs:  # the preliminary job of filters: {mind}: alignment only
        return
    total = None
    for k, s in enumerate(sites):
        part = take_counts(share_of("counts", s), alignment.index[k], alignment.flip[k])
        total = part if total is None else field.add(total, part)
    assert total is not None  # a close names at least one site
    yield "counts", total
    if "alleles" in inputs:  # a field of its own; a flip turns A1 counts into A2 counts
        big = field_for(inputs["alleles"].modulus)
        pooled = None
        for k, s in enumerate(sites):
            part = share_of("alleles", s)[alignment.index[k]]
            f = np.flatnonzero(alignment.flip[k])
            part[f, 0] = big.sub(part[f, 1], part[f, 0])
            part[f, 2] = big.sub(part[f, 3], part[f, 2])
            pooled = part if pooled is None else big.add(pooled, part)
        assert pooled is not None  # a close names at least one site
        yield "alleles", pooled
    for group in ("linear", "qt"):
        for suffix in ("", ".hi", ".lo"):  # statistics: one wide entry; aggregates: limbs
            if f"{group}.xtx{suffix}" not in inputs:
                continue
            modulus = inputs[f"{group}.xtx{suffix}"].modulus
            own = field if modulus is None else field_for(modulus)
            sums: dict[str, np.ndarray] = {}
            for k, s in enumerate(sites):
                index, flip = alignment.index[k], alignment.flip[k]
                xtx, xty = take_cross_products(
                    own,
                    unpack_symmetric(share_of(f"{group}.xtx{suffix}", s)),
                    share_of(f"{group}.xty{suffix}", s),
                    index,
                    flip,
                )
                parts = {
                    "xtx": pack_symmetric(xtx),
                    "xty": xty,
                    "yty": share_of(f"{group}.yty{suffix}", s)[index],
                }
                for name, value in parts.items():
                    sums[name] = value if name not in sums else own.add(sums[name], value)
            for name in CROSS_PARTS:
                yield f"{group}.{name}{suffix}", sums[name]


def regression_sessions(
    spec: Any, job: Any, pooled: Mapping[str, np.ndarray], workdir: Path
) -> list[Any]:
    """Write the pooled scaled cross products for the MPyC session (``reveal: statistics``).

    Shares in the 192-bit field the sites used (the session converts them to the
    regression's own field); the groups the sites' declared phenotype reads
    (:func:`regression_groups`: ``qt`` not for a case/control one, which has .assoc).
    """
    from smpc.mpc.task import RegressionSession

    summary = json.loads(words_to_bytes(field_for(job.modulus).to_signed(pooled["alignment"])))
    out = []
    for group, k in regression_groups(spec, summary["phenotype"]).items():
        shared = job.input(f"{group}.xtx").modulus
        narrow = field_for(shared)
        files = {}
        for part in CROSS_PARTS:
            files[part] = f"{group}.{part}.bin"
            value = pooled[f"{group}.{part}"]
            (workdir / files[part]).write_bytes(narrow.to_bytes(value.reshape(-1)))
        m = summary["magnitudes"]
        out.append(
            RegressionSession(
                group=group, k=k, share_modulus=shared, samples=m["samples"],
                pheno_bits=m["pheno"], covar_bits=m["covar"][: k - 2],
                beta_scale_bits=REG_SCALE_BITS, files=files,
            )
        )  # fmt: skip
    return out


# --- analyst side ---------------------------------------------------------------------


@dataclass
class Pooled:
    """The opened aggregates in PLINK's orientation, with the quality-control masks."""

    variants: dict[str, np.ndarray]
    counts: np.ndarray
    swap: np.ndarray  # minor-allele swap relative to the merged .bim
    cross: dict[str, Any]
    masks: dict[str, np.ndarray]
    keep: np.ndarray  # passes every filter: what the association tests analyse


def _orient(
    spec: Any, opened: Mapping[str, np.ndarray], variants: dict[str, np.ndarray], quantitative: bool
) -> Pooled:
    """Orientation as PLINK on the merged fileset: the merge's allele order by pooled
    allele counts (:func:`.align.pooled_bim_swap`), then A1 = the founders' minor allele."""
    from smpc.protocols.gwas import qc, regression
    from smpc.protocols.gwas.align import pooled_bim_swap

    counts = np.rint(np.asarray(opened["counts"], dtype=np.float64)).astype(np.int64)
    merged = pooled_bim_swap(counts)
    counts = qc.swap_alleles(counts, merged)
    swap = qc.minor_allele_swap(counts)
    counts = qc.swap_alleles(counts, swap)
    flip = merged ^ swap  # relative to the reference orientation the sites were aligned to
    variants = flip_alleles(variants, flip)
    cross = {}
    for group in ("linear", "qt"):
        if f"{group}.xtx.hi" in opened:
            real = {
                part: join_limbs(opened[f"{group}.{part}.hi"], opened[f"{group}.{part}.lo"])
                for part in CROSS_PARTS
            }
            real["xtx"] = unpack_symmetric(real["xtx"])
            pooled = regression.LinearStats(
                n=np.rint(real["xtx"][:, 0, 0]).astype(np.int64), **real
            )
            cross[group] = regression.flip_linear_stats(pooled, flip)
    f = spec.filters
    masks = qc.qc_filters(
        counts,
        maf=f.maf if f else None,
        geno=f.geno if f else None,
        hwe=f.hwe if f else None,
        quantitative=quantitative,
    )
    keep = masks["geno"] & masks["hwe"] & masks["maf"]
    return Pooled(variants, counts, swap, cross, masks, keep)


def analysed_variants(spec: Any, opened: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The variants the association tests analyse (after filters), in PLINK's orientation."""
    summary = json.loads(words_to_bytes(np.asarray(opened["alignment"]).astype(np.int64)))
    quantitative = summary["phenotype"] == "quantitative"
    variants = parse_table(summary["variants"])
    if "a1.merge" in opened:  # reveal: statistics
        merge, swap, _, keep = _opened_masks(opened)
        return {k: v[keep] for k, v in flip_alleles(variants, merge ^ swap).items()}
    pooled = _orient(spec, opened, variants, quantitative)
    return {k: v[pooled.keep] for k, v in pooled.variants.items()}


def finalize(
    spec: Any,
    opened: Mapping[str, np.ndarray],
    out: Path,
    *,
    logistic: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write PLINK 1.9's files for the spec's tests from the opened pooled statistics.

    The orientation follows PLINK on the merged fileset: its merge first writes each
    variant's alleles by pooled allele counts (:func:`.align.pooled_bim_swap`), then
    PLINK makes A1 the founders' minor allele (ties keep the merged .bim). Reports sit
    where PLINK writes them: ``freq`` and ``missing`` on every variant, ``hardy`` after
    ``--geno``, the association tests after all filters. ``logistic`` is the fit of the
    Newton rounds (:func:`.logistic.run_rounds`) over :func:`analysed_variants`.
    """
    from smpc.protocols.gwas import counts as count_tests
    from smpc.protocols.gwas import qc, regression
    from smpc.protocols.gwas.align import write_excluded
    from smpc.protocols.gwas.plink_format import plink_maxsnp

    out.mkdir(parents=True, exist_ok=True)
    summary = json.loads(words_to_bytes(np.asarray(opened["alignment"]).astype(np.int64)))
    variants = parse_table(summary["variants"])
    quantitative = summary["phenotype"] == "quantitative"
    write_excluded(out / f"{spec.name}.excluded", summary["excluded"])  # from .align
    for row in summary["excluded"]:
        logger.info("excluded %s", " ".join(row))
    problem = phenotype_problem(spec, summary["phenotype"])
    if problem:
        raise UserError(problem)
    if "a1.merge" in opened:
        return _finalize_statistics(spec, opened, out, summary, variants, logistic)
    pooled = _orient(spec, opened, variants, quantitative)
    variants, counts, swap, cross = pooled.variants, pooled.counts, pooled.swap, pooled.cross
    masks, keep = pooled.masks, pooled.keep
    width = plink_maxsnp(variants["snp"])  # PLINK sizes SNP columns before filtering
    name = out / spec.name

    def subset(mask: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[mask] for k, v in variants.items()}

    written, p_values = [], None
    for test in spec.tests:
        if test == "freq":
            written.append(f"{spec.name}.frq")
            qc.write_frq(f"{name}.frq", variants, counts, swapped=swap, snp_width=width)
        elif test == "missing":
            written.append(f"{spec.name}.lmiss")
            qc.write_lmiss(f"{name}.lmiss", variants, counts, snp_width=width)
        elif test == "hardy":
            g = masks["geno"]
            written.append(f"{spec.name}.hwe")
            qc.write_hwe(
                f"{name}.hwe", subset(g), counts[g],
                quantitative=quantitative, swapped=swap[g], snp_width=width,
            )  # fmt: skip
    kept = subset(keep)
    for test in spec.tests:
        if test == "assoc" and quantitative:
            stats = cross["qt"]
            table = count_tests.write_qassoc(
                f"{name}.qassoc", kept, _qt_stats(stats, keep), snp_width=width
            )
            written.append(f"{spec.name}.qassoc")
            p_values = table["P"]
        elif test == "assoc":
            table = count_tests.write_assoc(f"{name}.assoc", kept, counts[keep], snp_width=width)
            written.append(f"{spec.name}.assoc")
            p_values = table["P"]
        elif test == "model":
            count_tests.write_model(f"{name}.model", kept, counts[keep], snp_width=width)
            written.append(f"{spec.name}.model")
        elif test == "linear":
            stats = cross["linear"]
            result = regression.linear_from_stats(
                regression.LinearStats(
                    stats.n[keep], stats.xtx[keep], stats.xty[keep], stats.yty[keep]
                )
            )
            regression.write_linear(f"{name}.assoc.linear", kept, result, snp_width=width)
            written.append(f"{spec.name}.assoc.linear")
            p_values = np.where(result["ok"], result["P"], np.nan)
        elif test == "logistic" and logistic is not None:
            regression.write_logistic(f"{name}.assoc.logistic", kept, logistic, snp_width=width)
            written.append(f"{spec.name}.assoc.logistic")
            p_values = np.where(logistic["ok"], logistic["P"], np.nan)
    return _summarise(
        spec, out, kept, p_values, written,
        variants=len(variants["snp"]), excluded=len(summary["excluded"]),
        filtered=int((~keep).sum()), sites=summary["sites"], reveal="aggregates",
    )  # fmt: skip


def _finalize_statistics(
    spec: Any,
    opened: Mapping[str, np.ndarray],
    out: Path,
    summary: dict[str, Any],
    variants: dict[str, np.ndarray],
    logistic: Mapping[str, np.ndarray] | None,
) -> dict[str, Any]:
    """PLINK's files from what the parties opened inside MPyC (:mod:`.session`).

    Each report is written by the same writer as in aggregates mode, from a count
    tensor that holds exactly the opened counts that report prints (and zeros
    elsewhere), oriented by the opened A1 bits; ``.assoc`` from the opened fractions.
    """
    from smpc.protocols.gwas import counts as count_tests
    from smpc.protocols.gwas import qc, regression
    from smpc.protocols.gwas.mpc.rational import Ratio
    from smpc.protocols.gwas.plink_format import plink_maxsnp

    merge, swap, geno, keep = _opened_masks(opened)
    variants = flip_alleles(variants, merge ^ swap)
    v = len(variants["snp"])
    width = plink_maxsnp(variants["snp"])
    name = out / spec.name
    everything = np.ones(v, dtype=bool)
    kept = {k: x[keep] for k, x in variants.items()}

    def oriented(fill: Any, rows: np.ndarray = everything) -> np.ndarray:
        """A reference-orientation tensor of ``rows`` filled by ``fill``, oriented as PLINK."""
        tensor = np.zeros((int(rows.sum()), 3, 2, 4), dtype=np.int64)
        fill(tensor)
        return qc.swap_alleles(qc.swap_alleles(tensor, merge[rows]), swap[rows])

    def ints(key: str) -> np.ndarray:
        return np.asarray(opened[key]).astype(np.int64)

    written, p_values = [], None
    for test in spec.tests:
        path = f"{name}.{TEST_EXTENSION[test]}"
        if test == "freq":
            a1, called = ints("freq.alleles").T

            def fill_freq(t: np.ndarray, a1: np.ndarray = a1, called: np.ndarray = called) -> None:
                t[:, 0, 1, 0], t[:, 0, 1, 1] = a1 // 2, a1 % 2  # any genotypes with these
                t[:, 0, 1, 2] = called // 2 - a1 // 2 - a1 % 2  # allele counts print alike

            qc.write_frq(path, variants, oriented(fill_freq), swapped=swap, snp_width=width)
        elif test == "missing":
            missing, samples = ints("missing.counts").T

            def fill_missing(t: np.ndarray, m: np.ndarray = missing, n: np.ndarray = samples):
                t[:, 0, 1, 3], t[:, 0, 1, 0] = m, n - m

            qc.write_lmiss(path, variants, oriented(fill_missing), snp_width=width)
        elif test == "hardy":
            hardy = ints("hardy.counts").reshape(-1, 3, 3)

            def fill_hardy(t: np.ndarray, h: np.ndarray = hardy) -> None:
                t[:, :, 1, :3] = h

            counts = oriented(fill_hardy, geno)
            subset = {k: x[geno] for k, x in variants.items()}
            qc.write_hwe(
                path, subset, counts, swapped=swap[geno], snp_width=width,
                quantitative=summary["phenotype"] == "quantitative",
            )  # fmt: skip
        elif test == "model":
            model = ints("model.counts").reshape(-1, 2, 3)

            def fill_model(t: np.ndarray, m: np.ndarray = model) -> None:
                t[:, :2, 1, :3] = m

            count_tests.write_model(path, kept, oriented(fill_model, keep), snp_width=width)
        elif test == "assoc" and summary["phenotype"] == "quantitative":
            path = f"{name}.qassoc"
            table = _qassoc_from_ratios(opened)
            count_tests.write_qassoc(path, kept, None, snp_width=width, table=table)
            p_values = table["P"]
        elif test == "logistic" and logistic is not None:
            regression.write_logistic(path, kept, logistic, snp_width=width)
            p_values = np.where(logistic["ok"], logistic["P"], np.nan)
        elif test == "linear":
            result = _linear_from_ratios(opened, 2 + len(spec.covar))
            regression.write_linear(path, kept, result, snp_width=width)
            p_values = np.where(result["ok"], result["P"], np.nan)
        elif test == "assoc":
            ratios = {
                r: Ratio(
                    np.asarray(opened[f"assoc.{r}.num"], dtype=object).reshape(-1),
                    np.asarray(opened[f"assoc.{r}.den"], dtype=object).reshape(-1),
                ).to_float()
                for r in RATIOS
            }
            table = {
                "F_A": ratios["f_a"],
                "F_U": ratios["f_u"],
                "CHISQ": ratios["chisq"],
                "P": count_tests.chiprob_p(ratios["chisq"], 1.0),
                "OR": ratios["or"],
            }
            count_tests.write_assoc(path, kept, None, snp_width=width, table=table)
            p_values = table["P"]
        written.append(Path(path).name)
    return _summarise(
        spec, out, kept, p_values, written,
        variants=v, excluded=len(summary["excluded"]), filtered=int((~keep).sum()),
        sites=summary["sites"],
        reveal="statistics",
    )  # fmt: skip


def _opened_masks(opened: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """``reveal: statistics``: the opened A1 bits (merge, swap) and filter masks (geno, all)."""
    merge = np.asarray(opened["a1.merge"]).astype(bool).reshape(-1)
    swap = np.asarray(opened["a1.swap"]).astype(bool).reshape(-1)
    everything = np.ones(merge.size, dtype=bool)
    geno = np.asarray(opened.get("filter.geno", everything)).astype(bool).reshape(-1)
    keep = geno & np.asarray(opened.get("filter.maf", everything)).astype(bool).reshape(-1)
    keep &= np.asarray(opened.get("filter.hwe", everything)).astype(bool).reshape(-1)
    return merge, swap, geno, keep


def _opened_ratio(opened: Mapping[str, np.ndarray], key: str) -> Any:
    from smpc.protocols.gwas.mpc.rational import Ratio

    return Ratio(
        np.asarray(opened[f"{key}.num"], dtype=object).reshape(-1),
        np.asarray(opened[f"{key}.den"], dtype=object).reshape(-1),
    )


def _linear_from_ratios(opened: Mapping[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """``.assoc.linear``'s ADD columns from the opened NMISS, BETA and T² (:mod:`.session`).

    NA where PLINK's regression has no solution: n <= k, a singular XᵀX or RSS = 0
    (exactly: T²'s denominator is 0). STAT = sign(BETA)·√T², P two-sided with n − k df.
    """
    from smpc.protocols.gwas.pvalues import t_two_sided

    n = np.asarray(opened["linear.nmiss"]).astype(np.int64).reshape(-1)
    beta = _opened_ratio(opened, "linear.beta").to_float()
    t2 = _opened_ratio(opened, "linear.t2")
    ok = (n > k) & ~t2.na & np.isfinite(beta)
    with np.errstate(invalid="ignore"):
        stat = np.where(ok, np.sign(beta) * np.sqrt(t2.to_float()), np.nan)
        df = np.maximum(n - k, 1).astype(np.float64)
        pval = np.where(ok, t_two_sided(stat, df), np.nan)
    beta = np.where(ok, beta, np.nan)
    return {"NMISS": n, "BETA": beta, "STAT": stat, "P": pval, "ok": ok}


def _qassoc_from_ratios(opened: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``.qassoc``'s columns from the opened NMISS, BETA and SE² (:mod:`.session`).

    T = BETA/SE and R2 = T²/(T² + n − 2) (the simple regression's r²; 1 for a perfect
    fit, SE = 0), P two-sided with n − 2 df, as :func:`.counts.qassoc_table`.
    """
    from smpc.protocols.gwas.counts import tprob

    n = np.asarray(opened["qt.nmiss"]).astype(np.int64).reshape(-1)
    beta = _opened_ratio(opened, "qt.beta").to_float()
    se = np.sqrt(_opened_ratio(opened, "qt.se2").to_float())
    df = (n - 2).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = beta / se
        r2 = np.where(se == 0, 1.0, t * t / (t * t + df))
    return {"NMISS": n, "BETA": beta, "SE": se, "R2": r2, "T": t, "P": tprob(t, df)}


def _summarise(
    spec: Any,
    out: Path,
    tested: Mapping[str, np.ndarray],
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


def _qt_stats(stats: Any, keep: np.ndarray) -> dict[str, np.ndarray]:
    """The quantitative ``--assoc`` sums from the [1, g] cross products."""
    xtx, xty = stats.xtx[keep], stats.xty[keep]
    return {
        "n": np.rint(xtx[:, 0, 0]),
        "sum_g": xtx[:, 0, 1],
        "sum_gg": xtx[:, 1, 1],
        "sum_y": xty[:, 0],
        "sum_yy": stats.yty[keep],
        "sum_gy": xty[:, 1],
    }
