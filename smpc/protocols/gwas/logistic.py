"""Logistic regression across sites: PLINK 1.9's Newton iterations, one job round each.

After the first job of a GWAS (counts, alignment) the analyst knows the analysed
variants in PLINK's orientation. Every Newton iteration is then one more job of the
same protocol (``round`` k ≥ 1) whose public ``model`` carries, per analysed variant,
its ID, A1 and A2 and the current coefficients (intercept, ADD, covariates). Every site
(``smpc site serve`` with its fileset as ``data``) finds each variant in its own file
by ID, flips its genotype coding where its A2 is the pooled A1, and shares the sums
PLINK's Newton step needs at those coefficients over its samples — the number of
samples with a call, the gradient Σ(y − π)x and the Hessian Σπ(1 − π)xxᵀ, each real
as exact hi/lo integer words (:func:`.sizes.split_limbs`; the Hessian's upper
triangle only). The parties add the
shares and deliver the sums; the analyst takes the step (:func:`.plink.regression.logistic_fit`:
PLINK's single-precision solve, stopping rules and NA rules) and sends the next
coefficients, for as many rounds as PLINK iterates (at most 15).

With ``reveal: statistics`` the parties instead compute the step inside MPyC
(:func:`.mpc.session.run_newton`) and open only H⁻¹g and (H⁻¹)_tt; the analyst applies
PLINK's rules to the step (``logistic_fit(steps=True)``).

Revealed: to the sites and parties, every intermediate coefficient vector of every
variant (they travel in the jobs); with ``aggregates`` to the analyst the pooled
gradient and Hessian of every iteration, with ``statistics`` to parties and analyst
each iteration's step and (H⁻¹)_tt. Nothing per site.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Generator
from typing import Any

import numpy as np

from smpc.errors import UserError
from smpc.protocols.base import Outcome, Step
from smpc.protocols.gwas.combine import pack_symmetric, unpack_symmetric
from smpc.protocols.gwas.plink.fileset import VariantTable
from smpc.protocols.gwas.spec import GwasPayload
from smpc.wire.messages import JobInput, encode_model

logger = logging.getLogger("smpc.gwas")

PARTS = ("grad", "hess")


def round_inputs(spec: Any) -> tuple[JobInput, ...]:
    """What every site shares in a Newton round.

    With ``reveal: statistics`` the gradient and Hessian travel as round(v·2^32), one
    integer per entry in the 192-bit field; the session converts them to the Newton
    field (:func:`newton_field`) for :func:`.mpc.newton.secure_newton_step`.
    """
    from smpc.protocols.gwas.job import real_inputs, statistics_mode
    from smpc.protocols.gwas.sizes import COUNT_BITS

    out = [JobInput(name="logistic.n", frac_bits=0, int_bits=COUNT_BITS)]
    for part in PARTS:  # statistics: round(v·2^32), one wide integer per entry
        out += real_inputs(f"logistic.{part}", statistics_mode(spec))
    return tuple(out)


def round_outputs(spec: Any) -> tuple[JobInput, ...]:
    """What the parties open in a Newton round with ``reveal: statistics`` (:mod:`.mpc.session`)."""
    names = ["logistic.n"] + [f"logistic.{r}.{p}" for r in ("step", "var") for p in ("num", "den")]
    return tuple(JobInput(name=n, frac_bits=0, int_bits=200) for n in names)


def newton_field(k: int) -> tuple[int, Any]:
    """The prime of a width-``k`` Newton round's shares and the bounds of its openings."""
    from smpc.protocols.gwas.mpc.bounds import field_prime, newton_bounds
    from smpc.protocols.gwas.sizes import LIMB_BITS, REG_MAX_SAMPLES, REG_VALUE_BITS

    cols = [1, 2] + [1 << REG_VALUE_BITS] * (k - 2)
    bounds = newton_bounds(4 * REG_MAX_SAMPLES, cols, LIMB_BITS)
    return field_prime(bounds.field_bits), bounds


def round_model(
    variants: VariantTable, beta: np.ndarray, mind: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The public part of a round's job: the variants and their current coefficients;
    with ``filters: {mind}`` also every aligned variant's ID, over which each site counts
    its samples' missing calls (as in the first job)."""

    def text(values: np.ndarray) -> np.ndarray:  # UTF-8 bytes: half the size of UCS-4
        return np.char.encode(np.asarray(values).astype(str), "utf-8")

    model = {
        "snp": text(variants["snp"]),
        "a1": text(variants["a1"]),
        "a2": text(variants["a2"]),
        "beta": np.asarray(beta, dtype=np.float32),  # PLINK 1.9 fits in single precision
    }
    if mind is not None:
        model["mind"] = text(mind)
    return model


def _text(values: np.ndarray) -> np.ndarray:
    return np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values.astype(str)


def site_round(
    spec: Any,
    prefix: Any,
    model: dict[str, np.ndarray],
    pca_model: dict[str, np.ndarray] | None = None,
) -> tuple[dict, int]:
    """A site's shares of one Newton round at the model's coefficients (``pca_model``: the
    run's PCA when ``covar`` names its PCs)."""
    from smpc.protocols.gwas.genotypes import iter_chunks, open_site
    from smpc.protocols.gwas.job import statistics_mode
    from smpc.protocols.gwas.mind import mind_keep
    from smpc.protocols.gwas.pcarounds import site_covariates
    from smpc.protocols.gwas.phenotypes import is_case_control
    from smpc.protocols.gwas.plink.regression import flip_genotypes, logistic_site_stats
    from smpc.protocols.gwas.site import CHUNK, check_regression_values, phenotype
    from smpc.protocols.gwas.sizes import LIMB_BITS, split_limbs

    with open_site(prefix) as site:
        samples = site.samples
        pheno = phenotype(spec, prefix, samples)
        if not is_case_control(pheno):
            raise UserError(f"{prefix}: logistic needs a case/control phenotype (1/2)")
        y = pheno - 1.0  # 0 control, 1 case, NaN missing
        covar = site_covariates(spec, prefix, site, pca_model) if spec.covar else None
        if statistics_mode(spec) and covar is not None:
            check_regression_values(prefix, spec, y, covar)
        keep = np.ones(len(y), dtype=bool)
        if spec.filters is not None and spec.filters.mind is not None:
            if "mind" not in model:
                raise UserError("filters: mind needs the aligned variants in the round's job")
            keep = mind_keep(site, _text(model["mind"]), spec.filters.mind)
        y = y[keep]
        covar = None if covar is None else covar[keep]
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
            genotypes = flip_genotypes(genotypes[keep], flip[part])
            n[part], grad[part], hess[part] = logistic_site_stats(genotypes, covar, y, beta[part])
    arrays: dict[str, np.ndarray] = {"logistic.n": n}
    for name, value in (("grad", grad), ("hess", pack_symmetric(hess))):  # H's triangle
        if statistics_mode(spec):  # exact: a power-of-two scale, then an integral float
            arrays[f"logistic.{name}"] = np.rint(value * 2.0**LIMB_BITS)
            continue
        hi, lo = split_limbs(value)
        arrays[f"logistic.{name}.hi"], arrays[f"logistic.{name}.lo"] = hi, lo
    return arrays, int(keep.sum())


def newton_plan(
    spec: Any,
    variants: VariantTable,
    *,
    deliver: str,
    mind: np.ndarray | None = None,
    pca: str | None = None,
) -> Generator[Step, Outcome, dict[str, np.ndarray]]:
    """The Newton rounds that fit every analysed variant: one job per iteration of
    :func:`.plink.regression.logistic_iterations`, as many as PLINK iterates.

    ``mind``: the aligned variants' IDs when ``filters: {mind}`` is set (the sites drop
    the same samples as in the scan). With ``deliver: parties`` (``reveal: statistics``)
    each round's step is computed inside MPyC and only it is opened."""
    from smpc.protocols.gwas.job import statistics_mode
    from smpc.protocols.gwas.plink.regression import logistic_iterations
    from smpc.protocols.gwas.sizes import join_limbs

    v, p = len(variants["snp"]), 2 + len(spec.covar)
    secure = statistics_mode(spec)
    inputs = round_inputs(spec)
    outputs = round_outputs(spec) if deliver == "parties" else None
    iterations = logistic_iterations(v, p, steps=secure)
    try:
        beta = next(iterations)
        for k in itertools.count(1):
            outcome = yield Step(
                inputs=inputs, outputs=outputs, deliver=deliver,  # type: ignore[arg-type]
                payload=GwasPayload(
                    stage="newton",
                    round=k,
                    variants=encode_model(round_model(variants, beta, mind)),
                    pca=pca,
                ),
                suffix=f"-r{k}", label=f"logistic round {k}",
            )  # fmt: skip
            opened = outcome.opened
            logger.info("logistic round %d: %d variants", k, v)
            n = np.rint(np.asarray(opened["logistic.n"], dtype=np.float64))
            if secure:
                beta = iterations.send((n, *opened_step(opened, v, p)))
                continue
            grad, hess = (
                join_limbs(opened[f"logistic.{x}.hi"], opened[f"logistic.{x}.lo"]) for x in PARTS
            )
            beta = iterations.send((n, grad, unpack_symmetric(hess)))
    except StopIteration as stop:
        return stop.value
    raise AssertionError("unreachable: the Newton iterations end")


def opened_step(opened: Any, v: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """The Newton step H⁻¹g (V, p) and (H⁻¹)_tt (V,) a round opened (NaN where NA)."""
    from smpc.protocols.gwas.mpc.rational import Ratio
    from smpc.protocols.gwas.sizes import LIMB_BITS

    def ratio(name: str) -> np.ndarray:
        num = np.asarray(opened[f"logistic.{name}.num"], dtype=object).reshape(-1)
        den = np.asarray(opened[f"logistic.{name}.den"], dtype=object).reshape(-1)
        return Ratio(num, den).to_float()

    step = ratio("step").reshape(v, p)
    var = ratio("var") * 2.0**LIMB_BITS  # H was scaled by 2^32, so H⁻¹ by 2^-32
    return step, var


def pooled_round(job: Any, share_of: Any, workdir: Any) -> Any:
    """A party's shares of a round's pooled n, gradient and Hessian, written for MPyC.

    Each is the sum of the sites' shares, in the field the sites shared it in (the
    session converts the gradient and Hessian to the Newton field, :func:`newton_field`).
    """
    from smpc.core.field import field_for
    from smpc.protocols.gwas.task import NewtonSession

    files, sizes, moduli = {}, {}, {}
    for name in ("n", *PARTS):
        spec = job.input(f"logistic.{name}")
        field = field_for(job.modulus if spec.modulus is None else spec.modulus)
        total = None
        for site in job.close:
            part = share_of(spec.name, site)
            total = part if total is None else field.add(total, part)
        assert total is not None  # a close names at least one site
        files[name], sizes[name], moduli[name] = f"{name}.bin", total.size, field.modulus
        (workdir / files[name]).write_bytes(field.to_bytes(total.reshape(-1)))
    v = sizes["n"]
    k = sizes["grad"] // max(v, 1)
    if v and (sizes["grad"] != v * k or sizes["hess"] != v * k * (k + 1) // 2):
        raise ValueError(f"a Newton round's shares have {sizes} values for {v} variants")
    return NewtonSession(
        variants=v, k=max(k, 2), share_modulus=moduli["grad"], modulus=newton_field(k)[0],
        files=files,
    )  # fmt: skip
