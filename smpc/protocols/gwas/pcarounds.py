"""The PCA's jobs: pooled frequencies, subspace-iteration rounds, and the sites' scores.

A GWAS spec with ``pca:`` (or ``tests: [pca]``) first runs, before any association job:

1. ``pcafreq`` — every site shares its public variant table and its founders' genotype
   counts per variant; the parties align and add them (as in a scan) and deliver the
   alignment and the pooled founder counts to the analyst, which takes each variant's
   pooled founders' A1 frequency ``p`` and the variants to use: pooled MAF ≥ ``maf``
   (default 0.01), and in the ``variants:`` file if one is given.
2. ``pca`` rounds 1, 2, … — the job's public model carries the used variants' IDs, A1,
   ``p`` and the basis ``Q`` (float32, ``M × (K + 5)``); every site standardises its own
   genotypes (:func:`.pca.standardize`) and shares ``Y_sᵀ(Y_s Q)`` as exact hi/lo integer
   words (:func:`.sizes.split_limbs`: each site's entry exact to 2^-33); the parties add
   them and deliver the sum; the analyst takes the Rayleigh–Ritz step
   (:class:`.pca.SubspaceIteration`) until the top K Ritz values change by less than
   1e-10 relative (at most 200 rounds).
3. ``pcascores`` — the model carries the final unit vectors ``v`` (float32) and ``θ``;
   every site scores its own samples, writes ``<name>.eigenvec`` and a PC1–PC2 plot to
   its output folder, and shares only ``Σ u²`` per PC over its samples (the analyst
   checks the pooled sums are 1).

Later jobs of the run whose ``covar`` names ``PC1``… carry the same model (``pca`` of the
payload): each site recomputes its scores, rounded as its ``.eigenvec`` prints them, and
uses them as covariates. Both ``reveal`` modes run the PCA this way.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smpc.errors import UserError
from smpc.protocols.base import Outcome, Step
from smpc.protocols.gwas import pca
from smpc.protocols.gwas.plink.fileset import VariantTable
from smpc.protocols.gwas.spec import GwasPayload
from smpc.wire.messages import MAX_MODEL_BYTES, JobInput, encode_model

logger = logging.getLogger("smpc.gwas")

CHUNK = 2000  # variants read at a time


@dataclass
class PcaResult:
    """The analyst's PCA: used variants, their pooled A1 frequency, ``θ`` and ``v``."""

    variants: VariantTable
    freq: np.ndarray
    theta: np.ndarray
    vectors: np.ndarray
    rounds: int
    change: float
    norms: np.ndarray
    model: str  # the final model as jobs carry it (covariates of later jobs)
    sites: list[str]

    @property
    def eigenvalues(self) -> np.ndarray:
        return pca.eigenvalues(self.theta, len(self.freq))


def _text(values: Any) -> np.ndarray:
    return np.char.encode(np.asarray(values).astype(str), "utf-8")


def _decoded(values: np.ndarray) -> np.ndarray:
    return np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values.astype(str)


def _round_model(arrays: dict[str, np.ndarray], m: int, k: int) -> str:
    """A round's model as its job carries it, or the reason it is too large for one."""
    try:
        return encode_model(arrays)
    except UserError:
        raise UserError(
            f"pca: a round's basis for {m:,} variants and {k} components is larger than "
            f"a job carries ({MAX_MODEL_BYTES / 2**20:g} MiB as .npz): use fewer variants "
            "(pca: variants: an LD-pruned list, or a larger pca: maf) or fewer components"
        ) from None


def _limbs(name: str) -> tuple[JobInput, ...]:
    from smpc.protocols.gwas.job import real_inputs

    return tuple(real_inputs(name, statistics=False))


def freq_parts(mind: bool = False) -> tuple[tuple[JobInput, ...], tuple[JobInput, ...]]:
    """``pcafreq``: the variant tables and founder counts in, alignment and counts out;
    with ``mind`` also the merge's allele order over every sample (``merge``)."""
    from smpc.protocols.gwas.job import merge_inputs
    from smpc.protocols.gwas.sizes import COUNT_BITS, PUBLIC_BITS

    public = JobInput(name="site", frac_bits=0, int_bits=PUBLIC_BITS, public=True)
    counts = JobInput(name="counts", frac_bits=0, int_bits=COUNT_BITS)
    alignment = JobInput(name="alignment", frac_bits=0, int_bits=PUBLIC_BITS, public=True)
    merge = merge_inputs(mind)
    return (public, counts, *merge), (alignment, counts, *merge)


def pca_plan(spec: Any, mind: np.ndarray | None = None) -> Generator[Step, Outcome, PcaResult]:
    """The PCA's jobs (module docstring); returns the analyst's result.

    ``mind``: with ``filters: {mind}``, the IDs of the variants every site has, over which
    each site counts its samples' missing calls; every PCA job carries them and each site
    leaves out the samples ``mind`` drops, as ``plink2 --mind … --pca`` does.
    """
    from smpc.protocols.gwas.finalize import alignment_summary
    from smpc.protocols.gwas.sizes import join_limbs

    options = spec.pca
    inputs, outputs = freq_parts(mind is not None)
    mind_list = {} if mind is None else {"mind": _text(mind)}  # the variants mind counts over
    first = GwasPayload(stage="pcafreq", variants=encode_model(mind_list) if mind_list else None)
    freq = yield Step(
        inputs=inputs, outputs=outputs, deliver="analyst", payload=first,
        suffix="-pca0", label="pca frequencies",
    )  # fmt: skip
    summary = alignment_summary(freq.opened)
    variants, counts = _pooled_orientation(summary, freq.opened)
    p = pca.founder_frequency(counts)
    use = np.isfinite(p) & (np.minimum(p, 1.0 - p) >= options.maf * (1.0 - pca.SMALL_EPSILON))
    if options.variants is not None:
        path = Path(options.variants)
        try:
            listed = {w for w in path.read_text().split()}
        except OSError as exc:
            raise UserError(f"pca: variants: cannot read {path}: {exc.strerror}") from None
        use &= np.isin(variants.snp, sorted(listed))
    m, k = int(use.sum()), options.components
    if m < k + pca.OVERSAMPLE:
        raise UserError(
            f"pca: {m} variants pass maf {options.maf} (and the variants file): too few "
            f"for {k} components"
        )
    used, p = variants.take(use), p[use]
    base = {"snp": _text(used.snp), "a1": _text(used.a1), "p": p, **mind_list}
    iteration = pca.SubspaceIteration(m, k, seed=0)
    for r in itertools.count(1):
        model = _round_model({**base, "basis": iteration.basis}, m, k)
        outcome = yield Step(
            inputs=_limbs("pca.z"), outputs=None, deliver="analyst",
            payload=GwasPayload(stage="pca", round=r, variants=model),
            suffix=f"-pca{r}", label=f"pca round {r}",
        )  # fmt: skip
        z = join_limbs(outcome.opened["pca.z.hi"], outcome.opened["pca.z.lo"])
        done = iteration.update(z.reshape(m, -1))
        logger.info("pca round %d: %d variants, Ritz change %.3g", r, m, iteration.change)
        if done or r >= pca.MAX_ROUNDS:
            if not done:
                logger.warning("pca: not converged after %d rounds", r)
            break
    theta, v = iteration.result()
    model = encode_model({**base, "vectors": v.astype(np.float32), "theta": theta})
    scores = yield Step(
        inputs=_limbs("pca.norms"), outputs=None, deliver="analyst",
        payload=GwasPayload(stage="pcascores", variants=model),
        suffix="-pcas", label="pca scores",
    )  # fmt: skip
    norms = join_limbs(scores.opened["pca.norms.hi"], scores.opened["pca.norms.lo"])
    if not np.allclose(norms, 1.0, atol=1e-4):
        raise UserError(f"pca: the sites' scores have squared norms {norms}, not 1")
    return PcaResult(
        used, p, theta, v, iteration.rounds, iteration.change, norms, model, summary["sites"]
    )


def _pooled_orientation(summary: dict, opened: Any) -> tuple[VariantTable, np.ndarray]:
    """The variants and pooled counts in POOLED's .bim orientation (the merge's allele
    order, then A1 the founders' minor allele: :func:`.finalize.oriented_counts`), so that
    where the frequency is exactly 0.5 the major allele is PLINK 2's (the .bim's A2, its
    REF)."""
    from smpc.protocols.gwas.a1 import flip_alleles
    from smpc.protocols.gwas.finalize import oriented_counts

    counts, flip, _ = oriented_counts(opened)
    return flip_alleles(VariantTable.from_columns(summary["variants"]), flip), counts


# --- site -------------------------------------------------------------------------------


def _kept(spec: Any, site: Any, model: dict[str, np.ndarray] | None) -> np.ndarray:
    """The samples a PCA job uses: those ``filters: {mind}`` keeps over the job's list."""
    mind = spec.filters.mind if spec.filters is not None else None
    listed = model is not None and "mind" in model
    if listed != (mind is not None):
        raise UserError(
            "the PCA job's variants for mind and its spec's filters: {mind} disagree: "
            "a job built by smpc carries both or neither"
        )
    if model is None or mind is None:
        return np.ones(site.n_samples, dtype=bool)
    from smpc.protocols.gwas.mind import mind_keep

    return mind_keep(site, _decoded(model["mind"]), mind)


def site_freq(
    spec: Any, prefix: Path, model: dict[str, np.ndarray] | None
) -> tuple[dict[str, np.ndarray], int]:
    """``pcafreq``: the public variant table and the genotype counts of founders and of
    non-founders (the frequencies are the founders'; the merge's allele order, which
    decides the major allele at a frequency of exactly 0.5, counts everyone), over the
    samples ``mind`` keeps."""
    import json

    from smpc.core.encoding import bytes_to_words
    from smpc.protocols.gwas.align import merge_excess, site_counts
    from smpc.protocols.gwas.genotypes import iter_chunks, open_site
    from smpc.protocols.gwas.phenotypes import NO_PHENOTYPE

    with open_site(prefix) as site:
        keep = _kept(spec, site, model)  # also: the model names mind's variants iff the spec
        mind = model is not None and "mind" in model
        founder = np.asarray(site.samples.founder, dtype=bool)[keep]
        n_variants = len(site.variants.snp)
        counts = np.zeros((n_variants, 3, 2, 4), dtype=np.int64)
        classes = np.zeros(int(keep.sum()), dtype=np.int64)
        excess = np.zeros((n_variants, 2), dtype=np.int64) if mind else None
        every_founder = np.asarray(site.samples.founder, dtype=bool)
        no_flip = np.zeros(CHUNK, dtype=bool)
        for idx, chunk in iter_chunks(site, np.arange(n_variants), CHUNK):
            counts[idx] = site_counts(chunk[keep], no_flip[: len(idx)], classes, founder)
            if excess is not None:
                excess[idx] = merge_excess(chunk, every_founder)
        info = {
            "variants": site.variants.to_columns(),
            "phenotype": NO_PHENOTYPE,  # the PCA reads none (and tells none)
        }
    arrays = {"site": bytes_to_words(json.dumps(info).encode()), "counts": counts}
    if excess is not None:  # the merge's allele order, over every sample (before mind)
        arrays["merge"] = excess
    return arrays, len(classes)


def _genotypes(site: Any, prefix: Path, model: dict[str, np.ndarray]) -> np.ndarray:
    """The model's variants from this site's fileset, int8 ``(n, M)`` copies of the
    pooled A1 (-1 missing)."""
    from smpc.protocols.gwas.genotypes import iter_chunks

    rows = {snp: i for i, snp in enumerate(site.variants.snp)}
    snps, a1 = _decoded(model["snp"]), _decoded(model["a1"])
    missing = [s for s in snps if s not in rows]
    if missing:
        raise UserError(f"{prefix}: the job names variants this site lacks: {missing[:5]}")
    index = np.array([rows[s] for s in snps], dtype=np.int64)
    flip = np.asarray(site.variants.a2)[index] == a1  # this site counts the pooled A2
    out = np.empty((site.n_samples, len(index)), dtype=np.int8)
    for start in range(0, len(index), CHUNK):
        ((_, chunk),) = iter_chunks(site, index[start : start + CHUNK], CHUNK)
        f = flip[start : start + CHUNK]
        chunk = np.asarray(chunk, dtype=np.int8).copy()
        chunk[:, f] = np.where(chunk[:, f] < 0, -1, 2 - chunk[:, f])
        out[:, start : start + CHUNK] = chunk
    return out


def site_round(
    spec: Any, prefix: Path, model: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], int]:
    """A ``pca`` round: this site's ``Y_sᵀ(Y_s Q)`` as hi/lo words."""
    from smpc.protocols.gwas.genotypes import open_site
    from smpc.protocols.gwas.sizes import split_limbs

    with open_site(prefix) as site:
        g = _genotypes(site, prefix, model)[_kept(spec, site, model)]
    z = pca.site_product(g, np.asarray(model["p"], dtype=np.float64), model["basis"])
    hi, lo = split_limbs(z)
    return {"pca.z.hi": hi, "pca.z.lo": lo}, g.shape[0]


def scores(site: Any, prefix: Path, model: dict[str, np.ndarray]) -> np.ndarray:
    """This site's sample scores ``(n, K)`` for a final PCA model."""
    g = _genotypes(site, prefix, model)
    p = np.asarray(model["p"], dtype=np.float64)
    return pca.site_scores(g, p, model["vectors"], model["theta"])


def printed(values: np.ndarray) -> np.ndarray:
    """Scores as ``.eigenvec`` prints them (six significant digits), read back."""
    return np.vectorize(lambda x: float(pca.plink2_g(float(x))), otypes=[float])(values)


def site_scores(
    spec: Any, prefix: Path, model: dict[str, np.ndarray], out: Path | None
) -> tuple[dict[str, np.ndarray], int]:
    """``pcascores``: write this site's ``<name>.eigenvec`` and PC plot into ``out``;
    share the per-PC sums of squares of its scores (hi/lo words)."""
    from smpc.protocols.gwas.genotypes import open_site
    from smpc.protocols.gwas.sizes import split_limbs

    with open_site(prefix) as site:
        keep = _kept(spec, site, model)
        u = scores(site, prefix, model)[keep]
        fid = list(np.asarray(site.samples.fid).astype(str)[keep])
        iid = list(np.asarray(site.samples.iid).astype(str)[keep])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        pca.write_eigenvec(out / f"{spec.name}.eigenvec", fid, iid, u)
        if u.shape[1] >= 2:
            from smpc.protocols.gwas.plots import pc_scatter

            pc_scatter(out / f"{spec.name}.pca.png", u[:, 0], u[:, 1], spec.name)
    else:
        logger.warning("pca: this site has no output folder (out:); its scores are not written")
    hi, lo = split_limbs((u**2).sum(axis=0))
    return {"pca.norms.hi": hi, "pca.norms.lo": lo}, len(iid)


def site_covariates(
    spec: Any, prefix: Path, site: Any, model: dict[str, np.ndarray] | None
) -> np.ndarray:
    """The spec's covariates per sample ``(n, k)``: ``PREFIX.cov`` columns, and the run's
    principal components (as this site's ``.eigenvec`` prints them) for ``PC1``…"""
    from smpc.protocols.gwas.phenofiles import read_covar

    pcs = set(spec.principal_components()) if hasattr(spec, "principal_components") else set()
    samples = site.samples
    if not spec.covar:
        return np.zeros((len(samples.iid), 0))
    if not pcs:
        return read_covar(prefix, list(spec.covar), samples)
    if model is None:
        raise UserError(f"covar names {sorted(pcs)} but the job carries no PCA model")
    u = printed(scores(site, prefix, model))
    files = [c for c in spec.covar if c not in pcs]
    table = read_covar(prefix, files, samples) if files else np.zeros((len(u), 0))
    columns = []
    for c in spec.covar:
        columns.append(u[:, int(c[2:]) - 1] if c in pcs else table[:, files.index(c)])
    return np.column_stack(columns)


# --- analyst ------------------------------------------------------------------------------


def write_outputs(spec: Any, result: PcaResult, out: Path) -> dict[str, Any]:
    """``<name>.eigenval``, ``<name>.eigenvec.var`` and the scree plot; the run's PCA facts."""
    from smpc.protocols.gwas.plots import scree

    out.mkdir(parents=True, exist_ok=True)
    name = spec.name
    values = result.eigenvalues
    pca.write_eigenval(out / f"{name}.eigenval", values)
    weights = pca.variant_weights(result.vectors, result.freq)
    v = result.variants
    pca.write_eigenvec_var(
        out / f"{name}.eigenvec.var", v.chrom, v.snp, v.a1, v.a2, result.freq, weights
    )
    scree(out / f"{name}.scree.png", values, name)
    return {
        "components": len(values),
        "variants": len(result.freq),
        "rounds": result.rounds,
        "converged": result.change < pca.TOLERANCE,
        "ritz_change": result.change,
        # the definition (pca module docstring): plink2's exact default divides by the
        # pairwise called counts, which is not a sum over sites
        "missing_calls": "mean-imputed, as plink2 --pca meanimpute (and --pca approx)",
        "eigenvalues": [float(pca.plink2_g(float(x))) for x in values],
        "files": [f"{name}.eigenval", f"{name}.eigenvec.var", f"{name}.scree.png"],
    }
