"""Logistic regression across sites: PLINK 1.9's Newton iterations, one job round each.

After the first job of a GWAS (counts, alignment) the analyst knows the analysed
variants in PLINK's orientation. Every Newton iteration is then one more job of the
same protocol (``round`` k ≥ 1) whose public ``model`` carries, per analysed variant,
its ID, A1 and A2 and the current coefficients (intercept, ADD, covariates). Every site
(``smpc site serve`` with its fileset as ``data``) finds each variant in its own file
by ID, flips its genotype coding where its A2 is the pooled A1, and shares the sums
PLINK's Newton step needs at those coefficients over its samples — the number of
samples with a call, the gradient Σ(y − π)x and the Hessian Σπ(1 − π)xxᵀ, each real
as exact hi/lo integer words (:func:`.protocol.split_limbs`). The parties add the
shares and deliver the sums; the analyst takes the step (:func:`.regression.logistic_fit`:
PLINK's single-precision solve, stopping rules and NA rules) and sends the next
coefficients, for as many rounds as PLINK iterates (at most 15).

Revealed: to the sites and parties, every intermediate coefficient vector of every
variant (they travel in the jobs); to the analyst, the pooled gradient and Hessian of
every iteration. Nothing per site.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from smpc.errors import UserError
from smpc.messages import JobInput

logger = logging.getLogger("smpc.gwas")

PARTS = ("grad", "hess")


def round_inputs() -> tuple[JobInput, ...]:
    """What every site shares in a Newton round."""
    from smpc.protocols.gwas.protocol import COUNT_BITS, CROSS_INT_BITS, LIMB_BITS

    out = [JobInput(name="logistic.n", frac_bits=0, int_bits=COUNT_BITS)]
    for part in PARTS:
        out.append(JobInput(name=f"logistic.{part}.hi", frac_bits=0, int_bits=CROSS_INT_BITS))
        out.append(JobInput(name=f"logistic.{part}.lo", frac_bits=0, int_bits=LIMB_BITS + 1))
    return tuple(out)


def round_model(variants: dict[str, np.ndarray], beta: np.ndarray) -> dict[str, np.ndarray]:
    """The public part of a round's job: the variants and their current coefficients."""

    def text(name: str) -> np.ndarray:  # UTF-8 bytes: half the size of NumPy's UCS-4
        return np.char.encode(np.asarray(variants[name]).astype(str), "utf-8")

    return {
        "snp": text("snp"),
        "a1": text("a1"),
        "a2": text("a2"),
        "beta": np.asarray(beta, dtype=np.float32),  # PLINK 1.9 fits in single precision
    }


def _text(values: np.ndarray) -> np.ndarray:
    return np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values.astype(str)


def site_round(spec: Any, prefix: Any, model: dict[str, np.ndarray]) -> tuple[dict, int]:
    """A site's shares of one Newton round at the model's coefficients."""
    from smpc.protocols.gwas.protocol import CHUNK, is_case_control, phenotype, split_limbs
    from smpc.protocols.gwas.regression import flip_genotypes, logistic_site_stats
    from smpc.protocols.gwas.sitedata import iter_chunks, open_site, read_covar

    with open_site(prefix) as site:
        samples = site.samples
        pheno = phenotype(spec, prefix, samples)
        if not is_case_control(pheno):
            raise UserError(f"{prefix}: logistic needs a case/control phenotype (1/2)")
        y = pheno - 1.0  # 0 control, 1 case, NaN missing
        covar = read_covar(prefix, list(spec.covar), samples) if spec.covar else None
        rows = {snp: i for i, snp in enumerate(site.variants.snp)}
        snps, a1 = _text(model["snp"]), _text(model["a1"])
        missing = [s for s in snps if s not in rows]
        if missing:
            raise UserError(f"{prefix}: the job names variants this site lacks: {missing[:5]}")
        index = np.array([rows[s] for s in snps], dtype=np.int64)
        flip = site.variants.a2[index] == a1  # this site counts the pooled A2
        beta = np.asarray(model["beta"], dtype=np.float64)
        v, p = beta.shape
        n = np.zeros(v, dtype=np.int64)
        grad, hess = np.zeros((v, p)), np.zeros((v, p, p))
        for start in range(0, v, CHUNK):
            part = slice(start, start + CHUNK)
            ((_, genotypes),) = iter_chunks(site, index[part], CHUNK)
            genotypes = flip_genotypes(genotypes, flip[part])
            n[part], grad[part], hess[part] = logistic_site_stats(genotypes, covar, y, beta[part])
    arrays: dict[str, np.ndarray] = {"logistic.n": n}
    for name, value in (("grad", grad), ("hess", hess)):
        hi, lo = split_limbs(value)
        arrays[f"logistic.{name}.hi"], arrays[f"logistic.{name}.lo"] = hi, lo
    return arrays, len(samples)


def run_rounds(
    kit: Any,
    federation: Any,
    spec: Any,
    variants: dict[str, np.ndarray],
    *,
    run_id: str,
    upload_window: float,
    timeout: float,
) -> dict[str, np.ndarray]:
    """Fit every analysed variant by Newton rounds through the federation (blocking)."""
    from smpc.analyst import build_job, run_job
    from smpc.protocols.gwas.protocol import join_limbs
    from smpc.protocols.gwas.regression import logistic_fit

    v, p = len(variants["snp"]), 2 + len(spec.covar)
    rounds = 0

    def evaluate(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nonlocal rounds
        rounds += 1
        job = build_job(
            spec, kit, federation, job_id=f"{run_id}-r{rounds}", round=rounds,
            model=round_model(variants, beta),
        )  # fmt: skip
        try:
            outcome = asyncio.run(
                run_job(kit, federation, job, upload_window=upload_window, timeout=timeout)
            )
        except UserError as exc:
            raise type(exc)(f"logistic round {rounds}: {exc}") from None
        opened = outcome.opened
        grad, hess = (
            join_limbs(opened[f"logistic.{x}.hi"], opened[f"logistic.{x}.lo"]) for x in PARTS
        )
        logger.info("logistic round %d: %d variants", rounds, v)
        return np.rint(np.asarray(opened["logistic.n"], dtype=np.float64)), grad, hess

    return logistic_fit(evaluate, v, p)
