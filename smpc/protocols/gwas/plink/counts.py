"""Association statistics from pooled genotype counts: PLINK 1.9 ``--assoc``/``--model``.

Data model (shared by the GWAS modules)
---------------------------------------
Sites contribute, and the secure layer reveals, only *counts*, so every statistic
here is a function of them.  For ``V`` variants:

``counts``: ``np.ndarray[int64]`` of shape ``(V, 3, 2, 4)`` indexed
``[variant, phenotype class, founder flag, genotype]``:

- phenotype class: ``0`` control (PLINK ``1``), ``1`` case (``2``), ``2`` missing
  phenotype (``PHENO_CONTROL``, ``PHENO_CASE``, ``PHENO_MISSING``);
- founder flag: ``0`` non-founder, ``1`` founder (``NONFOUNDER``, ``FOUNDER``);
- genotype: ``0`` A1/A1 (two copies of A1), ``1`` A1/A2, ``2`` A2/A2, ``3`` missing
  call (``GENO_A1A1``, ``GENO_A1A2``, ``GENO_A2A2``, ``GENO_MISSING``).

Counts are in the *final* orientation: A1 is the allele PLINK reports as A1 (the
minor allele among founders unless ``--keep-allele-order``).  ``--assoc`` and
``--model`` use every sample with a case/control phenotype, founders and
non-founders alike; the founder split exists for allele orientation and QC.

Variant annotation: :class:`Variants` (``chrom, snp, bp, a1, a2``, arrays of
length ``V``), or any mapping/object with those names.

Quantitative traits (``qassoc``): ``qt_stats`` is a mapping of float64 arrays of
shape ``(V,)``, summed over samples with a non-missing call *and* a non-missing
trait ``y``, where ``g`` is the number of A1 alleles (0, 1, 2):
``n`` (sample count), ``sum_g``, ``sum_gg``, ``sum_y``, ``sum_yy``, ``sum_gy``.

Only autosomal (diploid) variants are modelled; PLINK treats X/Y/MT specially.

The formulas follow PLINK 1.9's source (``plink_assoc.c``, ``plink_stats.c``)
operation by operation, so printed values match to the last digit; NA cells are
NaN in the numeric tables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from smpc.protocols.gwas.plink.constants import SMALL_EPSILON
from smpc.protocols.gwas.plink.fileset import VariantTable
from smpc.protocols.gwas.plink.pvalues import chiprob_p, tprob

from .formats import fmt_g, fmt_int, plink_maxsnp, write_table

__all__ = [
    "FOUNDER",
    "GENO_A1A1",
    "GENO_A1A2",
    "GENO_A2A2",
    "GENO_MISSING",
    "MODEL_TESTS",
    "NONFOUNDER",
    "PHENO_CASE",
    "PHENO_CONTROL",
    "PHENO_MISSING",
    "Variants",
    "as_variants",
    "assoc_table",
    "case_control_genotypes",
    "chiprob_p",
    "model_table",
    "qassoc_table",
    "tprob",
    "write_assoc",
    "write_model",
    "write_qassoc",
]

PHENO_CONTROL, PHENO_CASE, PHENO_MISSING = 0, 1, 2
NONFOUNDER, FOUNDER = 0, 1
GENO_A1A1, GENO_A1A2, GENO_A2A2, GENO_MISSING = 0, 1, 2, 3
MODEL_TESTS = ("GENO", "TREND", "ALLELIC", "DOM", "REC")


@dataclass(frozen=True)
class Variants:
    """Per-variant annotation in output order (all arrays of length ``V``).

    Printed as given: pass chromosome codes as PLINK prints them (``1``..``22``).
    """

    chrom: np.ndarray
    snp: np.ndarray
    bp: np.ndarray
    a1: np.ndarray
    a2: np.ndarray

    def __post_init__(self) -> None:
        for name in ("chrom", "snp", "a1", "a2"):
            object.__setattr__(self, name, np.asarray(getattr(self, name)).astype(str))
        object.__setattr__(self, "bp", np.asarray(self.bp).astype(np.int64))
        n = {len(getattr(self, k)) for k in ("chrom", "snp", "bp", "a1", "a2")}
        if len(n) != 1:
            raise ValueError(f"variant annotation arrays differ in length: {sorted(n)}")

    def __len__(self) -> int:
        return len(self.snp)


def as_variants(v: Variants | Mapping[str, Any] | Any) -> Variants:
    """Accept a :class:`Variants`, a mapping, or any object with the five attributes (as
    a :class:`.fileset.VariantTable`)."""
    if isinstance(v, Variants):
        return v
    keys = ("chrom", "snp", "bp", "a1", "a2")
    if isinstance(v, Mapping):
        return Variants(**{k: v[k] for k in keys})
    return Variants(**{k: getattr(v, k) for k in keys})


def _check_counts(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts)
    if c.ndim != 4 or c.shape[1:] != (3, 2, 4):
        raise ValueError(f"counts must have shape (V, 3, 2, 4), got {c.shape}")
    return c.astype(np.int64, copy=False)


def case_control_genotypes(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-missing genotype counts ``(V, 3)`` [A1A1, A1A2, A2A2] of controls and cases.

    Founders and non-founders are pooled, as in PLINK's ``--assoc``/``--model``.
    """
    c = _check_counts(counts)
    by_pheno = c.sum(axis=2)  # (V, 3, 4)
    return by_pheno[:, PHENO_CONTROL, :3], by_pheno[:, PHENO_CASE, :3]


def _chi22(m11: np.ndarray, row1: np.ndarray, col1: np.ndarray, total: np.ndarray):
    """PLINK's ``chi22_eval``: 2x2 chi-square; second value marks a zero margin.

    Integer products are formed exactly and converted to double where PLINK does.
    """
    m11, row1, col1, total = (np.asarray(a, dtype=np.int64) for a in (m11, row1, col1, total))
    expm11_numer = (row1 * col1).astype(np.float64)
    denom = expm11_numer * ((total - row1) * (total - col1)).astype(np.float64)
    dxx = total.astype(np.float64)
    dyy = m11.astype(np.float64) * dxx - expm11_numer
    zero = denom == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        chi = np.where(zero, 0.0, (dyy * dyy * dxx) / np.where(zero, 1.0, denom))
    return chi, zero


def _chi22x(m11, row1, col1, total) -> np.ndarray:
    """PLINK's ``chi22_evalx``: NaN (PLINK's -9, printed NA) on a zero margin."""
    chi, zero = _chi22(m11, row1, col1, total)
    return np.where(zero, np.nan, chi)


def _chi23x(m11, m12, m13, m21, m22, m23) -> tuple[np.ndarray, np.ndarray]:
    """PLINK's ``chi23_evalx`` (2x3 genotypic test): ``(chisq, df)``; NaN/0 when undefined.

    A lone all-zero genotype column degrades it to a 1-df 2x2 test, as in PLINK.
    """
    m = [np.asarray(a, dtype=np.int64) for a in (m11, m12, m13, m21, m22, m23)]
    m11, m12, m13, m21, m22, m23 = m
    row1 = m11 + m12 + m13
    row2 = m21 + m22 + m23
    col1, col2, col3 = m11 + m21, m12 + m22, m13 + m23
    total = row1 + row2
    norow = (row1 == 0) | (row2 == 0)
    c1, c2, c3 = (c.astype(np.float64) for c in (col1, col2, col3))
    with np.errstate(invalid="ignore", divide="ignore"):
        tot_recip = 1.0 / total.astype(np.float64)
        chisq = np.zeros(row1.shape, dtype=np.float64)
        for rs, cells in ((row1, (m11, m12, m13)), (row2, (m21, m22, m23))):
            dxx = rs.astype(np.float64) * tot_recip
            for cell, cs in zip(cells, (c1, c2, c3), strict=True):
                expect = dxx * cs
                delta = cell.astype(np.float64) - expect
                chisq = chisq + delta * delta / expect
    chisq = np.where(chisq < SMALL_EPSILON * SMALL_EPSILON, 0.0, chisq)
    df = np.full(row1.shape, 2, dtype=np.int64)
    # lone zero columns -> 1-df tests
    alt_a = _chi22x(m12, row1, col2, total)  # column 1 empty
    alt_b = _chi22x(m11, row1, col1, total)  # column 2 or 3 empty
    c1zero = col1 == 0
    c23zero = ~c1zero & ((col2 == 0) | (col3 == 0))
    chisq = np.where(c1zero, alt_a, np.where(c23zero, alt_b, chisq))
    df = np.where(c1zero | c23zero, np.where(np.isnan(chisq), 0, 1), df)
    chisq = np.where(norow, np.nan, chisq)
    df = np.where(norow, 0, df)
    return chisq, df


def _ca_trend(case_dom_ct, case_ct, het_ct, homdom_ct, total) -> np.ndarray:
    """PLINK's ``ca_trend_evalx`` (Cochran-Armitage); NaN when two genotype columns are empty."""
    case_dom_ct, case_ct, het_ct, homdom_ct, total = (
        np.asarray(a, dtype=np.int64) for a in (case_dom_ct, case_ct, het_ct, homdom_ct, total)
    )
    dom_ct = (het_ct + 2 * homdom_ct).astype(np.float64)
    totald = total.astype(np.float64)
    case_ctd = case_ct.astype(np.float64)
    cat = case_dom_ct.astype(np.float64) * totald - dom_ct * case_ctd
    dxx = totald * (het_ct + 4 * homdom_ct).astype(np.float64) - dom_ct * dom_ct
    zero = dxx == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dxx = dxx * (case_ctd * (totald - case_ctd))
        out = cat * cat * totald / dxx
    return np.where(zero, np.nan, out)


def assoc_table(counts: np.ndarray) -> dict[str, np.ndarray]:
    """PLINK 1.9 case/control ``--assoc`` (1-df allelic chi-square) per variant.

    Returns allele counts (``case_a1, case_a2, ctrl_a1, ctrl_a2``) and ``F_A, F_U,
    CHISQ, P, OR`` as float64 with NaN where PLINK prints NA:
    F_A (F_U) when cases (controls) have no called allele; CHISQ and P unless both
    alleles are observed in the pooled cases+controls; OR when
    ``ctrl_a1 * case_a2 == 0`` (OR is 0 when only the numerator vanishes).
    """
    ctrl, case = case_control_genotypes(counts)
    case_a1 = 2 * case[:, 0] + case[:, 1]
    case_a2 = 2 * case[:, 2] + case[:, 1]
    ctrl_a1 = 2 * ctrl[:, 0] + ctrl[:, 1]
    ctrl_a2 = 2 * ctrl[:, 2] + ctrl[:, 1]
    da1, da2 = case_a1.astype(np.float64), case_a2.astype(np.float64)
    du1, du2 = ctrl_a1.astype(np.float64), ctrl_a2.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        f_a = np.where(case_a1 + case_a2 > 0, da1 / (da1 + da2), np.nan)
        f_u = np.where(ctrl_a1 + ctrl_a2 > 0, du1 / (du1 + du2), np.nan)
        chi, _ = _chi22(
            case_a2, case_a2 + case_a1, ctrl_a2 + case_a2, ctrl_a2 + ctrl_a1 + case_a2 + case_a1
        )
        valid = ((case_a1 + ctrl_a1) > 0) & ((case_a2 + ctrl_a2) > 0)
        chisq = np.where(valid, chi, np.nan)
        p = chiprob_p(chisq, 1.0)
        or_den = du1 * da2
        odds = np.where(or_den == 0.0, np.nan, (da1 * du2) / np.where(or_den == 0, 1.0, or_den))
    return {
        "case_a1": case_a1,
        "case_a2": case_a2,
        "ctrl_a1": ctrl_a1,
        "ctrl_a2": ctrl_a2,
        "F_A": f_a,
        "F_U": f_u,
        "CHISQ": chisq,
        "P": p,
        "OR": odds,
    }


def model_table(counts: np.ndarray, cell: int = 5) -> dict[str, np.ndarray]:
    """PLINK 1.9 ``--model``: GENO, TREND, ALLELIC, DOM, REC tests per variant.

    Returns ``{TEST}_CHISQ``, ``{TEST}_DF`` (int) and ``{TEST}_P`` (NaN = NA) plus the
    genotype counts ``case``/``ctrl`` (``(V, 3)``: A1A1, A1A2, A2A2).  NA rules:
    GENO, DOM and REC are NA when any of the six case/control genotype cells is
    below ``cell`` (``--cell``, default 5); TREND when two genotype columns are
    empty (e.g. monomorphic); ALLELIC (and any 2x2 test) on a zero margin.
    """
    ctrl, case = case_control_genotypes(counts)
    # PLINK's names: controls (uii A2A2, ujj het, ukk A1A1), cases (umm, unn, uoo)
    ukk, ujj, uii = ctrl[:, 0], ctrl[:, 1], ctrl[:, 2]
    uoo, unn, umm = case[:, 0], case[:, 1], case[:, 2]
    total = uii + ujj + ukk + umm + unn + uoo
    case_tot = uoo + unn + umm
    invalid = np.minimum(ctrl.min(axis=1), case.min(axis=1)) < cell

    geno_chi, geno_df = _chi23x(uii, ujj, ukk, umm, unn, uoo)
    geno_chi = np.where(invalid, np.nan, geno_chi)
    trend_chi = _ca_trend(umm * 2 + unn, case_tot, ujj + unn, uii + umm, total)
    allelic_chi = _chi22x(2 * uoo + unn, 2 * case_tot, 2 * (uoo + ukk) + unn + ujj, 2 * total)
    dom_chi = _chi22x(uoo + unn, case_tot, uoo + unn + ukk + ujj, total)
    rec_chi = _chi22x(uoo, case_tot, uoo + ukk, total)
    dom_chi = np.where(invalid, np.nan, dom_chi)
    rec_chi = np.where(invalid, np.nan, rec_chi)

    out: dict[str, np.ndarray] = {"case": case, "ctrl": ctrl}
    ones = np.ones(total.shape, dtype=np.int64)
    for name, chi, df in (
        ("GENO", geno_chi, geno_df),
        ("TREND", trend_chi, ones),
        ("ALLELIC", allelic_chi, ones),
        ("DOM", dom_chi, ones),
        ("REC", rec_chi, ones),
    ):
        out[f"{name}_CHISQ"] = chi
        out[f"{name}_DF"] = df
        out[f"{name}_P"] = chiprob_p(chi, np.maximum(df, 1))
    return out


def qassoc_table(qt_stats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PLINK 1.9 quantitative-trait ``--assoc`` (simple linear regression y ~ g).

    Returns ``NMISS`` (int) and ``BETA, SE, R2, T, P`` (float64).  PLINK prints
    everything but NMISS as NA when ``NMISS <= 1`` or BETA is not finite
    (monomorphic), and T/P as NA when T is not finite or ``NMISS <= 2``.
    SE/R2 may be NaN otherwise (printed ``nan`` by PLINK), e.g. SE when ``NMISS == 2``.
    """
    n = np.asarray(qt_stats["n"], dtype=np.float64)
    sum_g = np.asarray(qt_stats["sum_g"], dtype=np.float64)
    sum_gg = np.asarray(qt_stats["sum_gg"], dtype=np.float64)
    sum_y = np.asarray(qt_stats["sum_y"], dtype=np.float64)
    sum_yy = np.asarray(qt_stats["sum_yy"], dtype=np.float64)
    sum_gy = np.asarray(qt_stats["sum_gy"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        nanal_recip = 1.0 / n
        qt_mean = sum_y * nanal_recip
        geno_mean = sum_g * nanal_recip
        dxx = 1.0 / (n - 1.0)
        qt_var = (sum_yy - sum_y * qt_mean) * dxx
        geno_var = (sum_gg - sum_g * geno_mean) * dxx
        qt_g_covar = (sum_gy - sum_y * geno_mean) * dxx
        inv_gvar = 1.0 / geno_var
        beta = qt_g_covar * inv_gvar
        se = np.sqrt((qt_var * inv_gvar - beta * beta) / (n - 2.0))
        # Two points fit exactly: 0/0 in exact arithmetic.  PLINK's rounding noise
        # decides between nan and inf; nan (its usual outcome) is the honest answer.
        se = np.where(n == 2.0, np.nan, se)
        tstat = beta / se
        rsq = (qt_g_covar * qt_g_covar) / (qt_var * geno_var)
    p = tprob(tstat, n - 2.0)
    return {
        "NMISS": n.astype(np.int64),
        "BETA": beta,
        "SE": se,
        "R2": rsq,
        "T": tstat,
        "P": p,
    }


def _snp_width(v: Variants, snp_width: int | None) -> int:
    return plink_maxsnp(v.snp) if snp_width is None else snp_width


def _fmt_p(p: np.ndarray, output_min_p: float) -> np.ndarray:
    """P column: ``max(p, --output-min-p)`` (default 0) in 4 significant digits."""
    return fmt_g(np.where(np.isnan(p), np.nan, np.maximum(p, output_min_p)))


def write_assoc(
    path: str | os.PathLike[str],
    variants: Variants | VariantTable | Mapping[str, Any],
    counts: np.ndarray | None,
    snp_width: int | None = None,
    output_min_p: float = 0.0,
    table: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Write ``.assoc`` exactly as ``plink1.9 --assoc`` (case/control); returns the table.

    ``snp_width`` defaults to PLINK's rule over ``variants.snp`` (pass it when PLINK
    saw more variants than are written). ``table`` (F_A, F_U, CHISQ, P, OR) replaces
    the one computed from ``counts`` when the statistics were computed elsewhere
    (inside MPyC); ``counts`` is then unused.
    """
    v = as_variants(variants)
    if table is not None:
        t = dict(table)
    else:
        assert counts is not None  # the counts or a finished table
        t = assoc_table(counts)
    cols = [
        ("CHR", 4),
        ("SNP", _snp_width(v, snp_width)),
        ("BP", 10),
        ("A1", 4),
        ("F_A", 8),
        ("F_U", 8),
        ("A2", 4),
        ("CHISQ", 12),
        ("P", 12),
        ("OR", 12),
    ]
    rows = [
        v.chrom,
        v.snp,
        fmt_int(v.bp),
        v.a1,
        fmt_g(t["F_A"]),
        fmt_g(t["F_U"]),
        v.a2,
        fmt_g(t["CHISQ"]),
        _fmt_p(t["P"], output_min_p),
        fmt_g(t["OR"]),
    ]
    write_table(path, cols, rows, trailing_space=True)
    return t


def write_model(
    path: str | os.PathLike[str],
    variants: Variants | VariantTable | Mapping[str, Any],
    counts: np.ndarray,
    cell: int = 5,
    snp_width: int | None = None,
    output_min_p: float = 0.0,
) -> dict[str, np.ndarray]:
    """Write ``.model`` exactly as ``plink1.9 --model`` (five rows per variant)."""
    v = as_variants(variants)
    t = model_table(counts, cell=cell)
    nv = len(v)
    case, ctrl = t["case"], t["ctrl"]

    def slash(*parts: np.ndarray) -> np.ndarray:
        cols = [p.tolist() for p in parts]
        return np.array(["/".join(map(str, r)) for r in zip(*cols, strict=True)], dtype=object)

    g = (0, 1, 2)
    aff = [
        slash(*(case[:, i] for i in g)),
        slash(2 * case[:, 0] + case[:, 1], 2 * case[:, 2] + case[:, 1]),
        slash(2 * case[:, 0] + case[:, 1], 2 * case[:, 2] + case[:, 1]),
        slash(case[:, 0] + case[:, 1], case[:, 2]),
        slash(case[:, 0], case[:, 1] + case[:, 2]),
    ]
    unaff = [
        slash(*(ctrl[:, i] for i in g)),
        slash(2 * ctrl[:, 0] + ctrl[:, 1], 2 * ctrl[:, 2] + ctrl[:, 1]),
        slash(2 * ctrl[:, 0] + ctrl[:, 1], 2 * ctrl[:, 2] + ctrl[:, 1]),
        slash(ctrl[:, 0] + ctrl[:, 1], ctrl[:, 2]),
        slash(ctrl[:, 0], ctrl[:, 1] + ctrl[:, 2]),
    ]
    chisq, df, p = [], [], []
    for name in MODEL_TESTS:
        c = t[f"{name}_CHISQ"]
        na = np.isnan(c)
        chisq.append(fmt_g(c))
        df.append(np.where(na, "NA", fmt_int(t[f"{name}_DF"])))
        p.append(_fmt_p(np.where(na, np.nan, t[f"{name}_P"]), output_min_p))

    def interleave(per_test: list[np.ndarray]) -> np.ndarray:
        return np.stack([np.asarray(a, dtype=object) for a in per_test], axis=1).reshape(-1)

    def rep(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.asarray(a, dtype=object), len(MODEL_TESTS))

    cols = [
        ("CHR", 4),
        ("SNP", _snp_width(v, snp_width)),
        ("A1", 4),
        ("A2", 4),
        ("TEST", 8),
        ("AFF", 14),
        ("UNAFF", 14),
        ("CHISQ", 12),
        ("DF", 4),
        ("P", 12),
    ]
    rows = [
        rep(v.chrom),
        rep(v.snp),
        rep(v.a1),
        rep(v.a2),
        np.tile(np.array(MODEL_TESTS, dtype=object), nv),
        interleave(aff),
        interleave(unaff),
        interleave(chisq),
        interleave(df),
        interleave(p),
    ]
    write_table(path, cols, rows, trailing_space=False)
    return t


def write_qassoc(
    path: str | os.PathLike[str],
    variants: Variants | VariantTable | Mapping[str, Any],
    qt_stats: Mapping[str, np.ndarray] | None,
    snp_width: int | None = None,
    output_min_p: float = 0.0,
    *,
    table: Mapping[str, np.ndarray] | None = None,
) -> Mapping[str, np.ndarray]:
    """Write ``.qassoc`` exactly as ``plink1.9 --assoc`` with a quantitative trait.

    From the pooled sums ``qt_stats``, or from a finished ``table`` (the columns of
    :func:`qassoc_table`, e.g. opened inside MPyC).
    """
    v = as_variants(variants)
    if table is None:
        assert qt_stats is not None  # the pooled sums or a finished table
        t: Mapping[str, np.ndarray] = qassoc_table(qt_stats)
    else:
        t = table
    n = t["NMISS"]
    fit = (n > 1) & np.isfinite(t["BETA"])
    has_p = (n > 1) & ~np.isnan(t["P"])
    na = np.array("NA", dtype=object)
    cols = [
        ("CHR", 4),
        ("SNP", _snp_width(v, snp_width)),
        ("BP", 10),
        ("NMISS", 8),
        ("BETA", 10),
        ("SE", 10),
        ("R2", 10),
        ("T", 8),
        ("P", 12),
    ]
    rows = [
        v.chrom,
        v.snp,
        fmt_int(v.bp),
        fmt_int(n),
        np.where(fit, fmt_g(t["BETA"], nan="nan"), na),
        np.where(fit, fmt_g(t["SE"], nan="nan"), na),
        np.where(fit, fmt_g(t["R2"], nan="nan"), na),
        np.where(has_p, fmt_g(t["T"]), na),
        np.where(has_p, _fmt_p(t["P"], output_min_p), na),
    ]
    write_table(path, cols, rows, trailing_space=True)
    return t
