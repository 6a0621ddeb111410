"""A site's shares for a GWAS job: genotype counts and cross products over its fileset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from smpc.core.encoding import bytes_to_words
from smpc.errors import UserError
from smpc.protocols.gwas.a1 import a1_is_minor
from smpc.protocols.gwas.combine import pack_symmetric
from smpc.protocols.gwas.job import statistics_mode
from smpc.protocols.gwas.mind import mind_keep
from smpc.protocols.gwas.phenotypes import is_case_control, phenotype_kind
from smpc.protocols.gwas.sizes import REG_VALUE_BITS, scale_cross_products, split_limbs

CHUNK = 2000  # variants per chunk at the sites


def site_statistics(
    spec: Any,
    prefix: Path,
    analysed: np.ndarray | None = None,
    *,
    table_only: bool = False,
    pca_model: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """A site's shared arrays for a GWAS spec, and its number of samples.

    ``analysed`` (the IDs of the variants every site has, from the job) is needed for
    ``filters: {mind}``: PLINK drops a sample whose missing calls over all variants
    exceed the bound before anything else, so each site drops its own such samples.
    ``table_only``: just the public ``site`` input (the preliminary alignment job).
    ``pca_model``: the run's PCA (:mod:`.pcarounds`) when ``covar`` names its PCs.
    """
    from smpc.protocols.gwas.genotypes import open_site

    with open_site(prefix) as site:
        return _site_statistics(spec, prefix, site, analysed, table_only, pca_model)


def _site_statistics(
    spec: Any,
    prefix: Path,
    site: Any,
    analysed: np.ndarray | None,
    table_only: bool,
    pca_model: dict[str, np.ndarray] | None,
) -> tuple[dict[str, np.ndarray], int]:
    from smpc.protocols.gwas.pcarounds import site_covariates

    samples = site.samples
    keep = np.ones(site.n_samples, dtype=bool)
    if spec.filters is not None and spec.filters.mind is not None and not table_only:
        if analysed is None:
            raise UserError("filters: mind needs the analysed variants in the job")
        keep = mind_keep(site, analysed, spec.filters.mind)
    pheno = phenotype(spec, prefix, samples)
    pheno_class = _phenotype_classes(pheno)
    info: dict[str, Any]
    if table_only:
        info = {
            "variants": site.variants.to_columns(),
            "phenotype": phenotype_kind(pheno),
        }
        return {"site": bytes_to_words(json.dumps(info).encode())}, int(keep.sum())
    founder = np.asarray(samples.founder, dtype=bool)
    covar = site_covariates(spec, prefix, site, pca_model)
    pheno, pheno_class, founder, covar = pheno[keep], pheno_class[keep], founder[keep], covar[keep]
    groups: dict[str, np.ndarray | None] = {}
    if "linear" in spec.tests:
        groups["linear"] = covar
    if "assoc" in spec.tests and spec.pheno is not None:
        groups["qt"] = None
    mind = spec.filters is not None and spec.filters.mind is not None
    counts, cross, excess = _scan(site, keep, pheno, pheno_class, founder, groups, mind)
    info = {
        "variants": site.variants.to_columns(),
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
    if excess is not None:  # the merge's allele order, over every sample (before mind)
        arrays["merge"] = excess
    if statistics_mode(spec) and "assoc" in spec.tests:
        arrays["alleles"] = case_control_alleles(counts)
    if statistics_mode(spec) and groups:
        check_regression_values(prefix, spec, pheno, covar)
    arrays.update(_shared_cross_products(spec, cross))
    return arrays, len(pheno)


def _phenotype_classes(pheno: np.ndarray) -> np.ndarray:
    """Per sample: 0 control, 1 case, 2 missing; a quantitative phenotype: 0 with a value."""
    binary = is_case_control(pheno)
    pheno_class = np.full(len(pheno), 2, dtype=np.int64)  # missing phenotype
    if binary:
        pheno_class[pheno == 1] = 0
        pheno_class[pheno == 2] = 1
    else:
        pheno_class[~np.isnan(pheno)] = 0  # quantitative: one class with a value
    return pheno_class


def _scan(
    site: Any,
    keep: np.ndarray,
    pheno: np.ndarray,
    pheno_class: np.ndarray,
    founder: np.ndarray,
    groups: dict[str, np.ndarray | None],
    merge: bool = False,
) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]], np.ndarray | None]:
    """One pass over the kept samples' genotypes: the count tensor and each group's
    cross products (x = [1, g, the group's covariates]); with ``merge`` also
    :func:`.align.merge_excess` over every sample."""
    from smpc.protocols.gwas.align import merge_excess, site_counts
    from smpc.protocols.gwas.genotypes import iter_chunks
    from smpc.protocols.gwas.plink.regression import linear_site_stats

    n_variants = len(site.variants.snp)
    counts = np.zeros((n_variants, 3, 2, 4), dtype=np.int64)
    cross = {
        g: {
            "xtx": np.zeros((n_variants, _width(c), _width(c))),
            "xty": np.zeros((n_variants, _width(c))),
            "yty": np.zeros(n_variants),
        }
        for g, c in groups.items()
    }
    excess = np.zeros((n_variants, 2), dtype=np.int64) if merge else None
    every_founder = np.asarray(site.samples.founder, dtype=bool)
    no_flip = np.zeros(CHUNK, dtype=bool)
    for idx, chunk in iter_chunks(site, np.arange(n_variants), CHUNK):
        if excess is not None:
            excess[idx] = merge_excess(chunk, every_founder)
        if not keep.all():
            chunk = chunk[keep]
        counts[idx] = site_counts(chunk, no_flip[: len(idx)], pheno_class, founder)
        for group, c in groups.items():
            stats = linear_site_stats(chunk, c, pheno)
            cross[group]["xtx"][idx] = stats.xtx
            cross[group]["xty"][idx] = stats.xty
            cross[group]["yty"][idx] = stats.yty
    return counts, cross, excess


def _shared_cross_products(
    spec: Any, cross: dict[str, dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The cross products as shared: with ``reveal: statistics`` scaled integers, else
    hi/lo words (:mod:`.sizes`); XᵀX as its upper triangle."""
    arrays = {}
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
    return arrays


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


def _width(covar: np.ndarray | None) -> int:
    """Columns of x = [1, g, covariates]."""
    return 2 + (0 if covar is None else covar.shape[1])


def phenotype(spec: Any, prefix: Path, samples: Any) -> np.ndarray:
    """The spec's phenotype per sample (NaN missing): a column of PREFIX.pheno, or the
    .fam phenotype with PLINK's missing codes (0, -9) as NaN."""
    from smpc.protocols.gwas.phenofiles import read_pheno

    if spec.pheno is not None:
        return read_pheno(prefix, spec.pheno, samples)
    out = np.asarray(samples.phenotype, dtype=np.float64).copy()
    out[(out == 0) | (out == -9)] = np.nan
    return out
