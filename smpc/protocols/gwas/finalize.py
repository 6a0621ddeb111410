"""The analyst's part: PLINK 1.9's files from the opened pooled aggregates."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smpc.core.encoding import words_to_bytes
from smpc.errors import UserError
from smpc.protocols.gwas.a1 import flip_alleles
from smpc.protocols.gwas.align import pooled_bim_swap, write_excluded
from smpc.protocols.gwas.combine import unpack_symmetric
from smpc.protocols.gwas.job import CROSS_PARTS
from smpc.protocols.gwas.opened import finalize_statistics, opened_masks
from smpc.protocols.gwas.phenotypes import phenotype_problem
from smpc.protocols.gwas.plink import counts as count_tests
from smpc.protocols.gwas.plink import qc, regression
from smpc.protocols.gwas.plink.fileset import VariantTable
from smpc.protocols.gwas.plink.formats import plink_maxsnp
from smpc.protocols.gwas.results import summarise
from smpc.protocols.gwas.sizes import join_limbs

logger = logging.getLogger("smpc.gwas")


def alignment_summary(opened: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The opened alignment: the reference variants, the exclusions, the sites' phenotype."""
    return json.loads(words_to_bytes(np.asarray(opened["alignment"]).astype(np.int64)))


def analysed_ids(opened: Mapping[str, np.ndarray]) -> np.ndarray:
    """The IDs of the variants every site has, from an opened alignment."""
    summary = alignment_summary(opened)
    return VariantTable.from_columns(summary["variants"]).snp


@dataclass
class Pooled:
    """The opened aggregates in PLINK's orientation, with the quality-control masks."""

    variants: VariantTable
    counts: np.ndarray
    swap: np.ndarray  # minor-allele swap relative to the merged .bim
    cross: dict[str, Any]
    masks: dict[str, np.ndarray]
    keep: np.ndarray  # passes every filter: what the association tests analyse


def oriented_counts(opened: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The opened pooled counts ``(V, 3, 2, 4)`` as PLINK orients them on the merged
    fileset, with ``flip`` (relative to the reference orientation the sites were aligned
    to) and ``swap`` (the founders' minor-allele swap relative to the merged .bim): the
    merge's allele order (:func:`.align.pooled_bim_swap`, from ``merge`` with ``mind``),
    then A1 = the founders' minor allele (a tie keeps the merged order)."""
    counts = np.rint(np.asarray(opened["counts"], dtype=np.float64)).astype(np.int64)
    counts = counts.reshape(-1, 3, 2, 4)
    excess = opened.get("merge")  # filters: {mind}: the merge's order over every sample
    merged = pooled_bim_swap(counts, None if excess is None else np.rint(excess))
    counts = qc.swap_alleles(counts, merged)
    swap = qc.minor_allele_swap(counts)
    return qc.swap_alleles(counts, swap), merged ^ swap, swap


def _orient(
    spec: Any, opened: Mapping[str, np.ndarray], variants: VariantTable, quantitative: bool
) -> Pooled:
    """Orientation as PLINK on the merged fileset (:func:`oriented_counts`)."""
    counts, flip, swap = oriented_counts(opened)
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


def analysed_variants(spec: Any, opened: Mapping[str, np.ndarray]) -> VariantTable:
    """The variants the association tests analyse (after filters), in PLINK's orientation."""
    summary = alignment_summary(opened)
    quantitative = summary["phenotype"] == "quantitative"
    variants = VariantTable.from_columns(summary["variants"])
    if "a1.merge" in opened:  # reveal: statistics
        merge, swap, _, keep = opened_masks(opened)
        return flip_alleles(variants, merge ^ swap).take(keep)
    pooled = _orient(spec, opened, variants, quantitative)
    return pooled.variants.take(pooled.keep)


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
    out.mkdir(parents=True, exist_ok=True)
    summary = alignment_summary(opened)
    variants = VariantTable.from_columns(summary["variants"])
    quantitative = summary["phenotype"] == "quantitative"
    write_excluded(out / f"{spec.name}.excluded", summary["excluded"])  # from .align
    for row in summary["excluded"]:
        logger.info("excluded %s", " ".join(row))
    problem = phenotype_problem(spec, summary["phenotype"])
    if problem:
        raise UserError(problem)
    if "a1.merge" in opened:
        return finalize_statistics(spec, opened, out, summary, variants, logistic)
    pooled = _orient(spec, opened, variants, quantitative)
    width = plink_maxsnp(pooled.variants["snp"])  # PLINK sizes SNP columns before filtering
    name = out / spec.name
    written = _write_qc_reports(spec, name, pooled, quantitative, width)
    kept = pooled.variants.take(pooled.keep)
    tested, p_values = _write_association(spec, name, pooled, kept, quantitative, width, logistic)
    return summarise(
        spec, out, kept, p_values, [*written, *tested],
        variants=len(pooled.variants["snp"]), excluded=len(summary["excluded"]),
        filtered=int((~pooled.keep).sum()), sites=summary["sites"], reveal="aggregates",
    )  # fmt: skip


def _write_qc_reports(
    spec: Any, name: Path, pooled: Pooled, quantitative: bool, width: int
) -> list[str]:
    """``freq`` and ``missing`` on every variant, ``hardy`` after ``--geno``: the files."""
    variants, counts, swap = pooled.variants, pooled.counts, pooled.swap
    written = []
    for test in spec.tests:
        if test == "freq":
            written.append(f"{spec.name}.frq")
            qc.write_frq(f"{name}.frq", variants, counts, swapped=swap, snp_width=width)
        elif test == "missing":
            written.append(f"{spec.name}.lmiss")
            qc.write_lmiss(f"{name}.lmiss", variants, counts, snp_width=width)
        elif test == "hardy":
            g = pooled.masks["geno"]
            written.append(f"{spec.name}.hwe")
            qc.write_hwe(
                f"{name}.hwe", variants.take(g), counts[g],
                quantitative=quantitative, swapped=swap[g], snp_width=width,
            )  # fmt: skip
    return written


def _write_association(
    spec: Any,
    name: Path,
    pooled: Pooled,
    kept: VariantTable,
    quantitative: bool,
    width: int,
    logistic: Mapping[str, np.ndarray] | None,
) -> tuple[list[str], np.ndarray | None]:
    """The association tests on the variants passing every filter: the files, and the
    P values of the last test (for the plots)."""
    counts, cross, keep = pooled.counts, pooled.cross, pooled.keep
    written, p_values = [], None
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
    return written, p_values


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
