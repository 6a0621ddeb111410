"""The GWAS protocol family (``protocol: gwas``) behind the protocol interface.

A run is up to four kinds of job, each a :class:`GwasPayload` stage: with
``filters: {mind}`` first an ``align`` job that only aligns the sites' variant tables;
with ``pca:`` then the PCA's jobs (:mod:`.pcarounds`, over the samples ``mind`` keeps);
then the ``scan`` job (counts, alignment, regression sums; its payload names the analysed
variants when ``mind`` dropped samples); then, for the ``logistic`` test, one ``newton``
job per Newton iteration carrying the variants and their current coefficients. What each
computes is in :mod:`.job` (the job's parts), :mod:`.site`, :mod:`.pooling`,
:mod:`.finalize` and :mod:`.opened` (site statistics, party combination, outputs),
:mod:`.logistic` (Newton rounds) and :mod:`.mpc.session` (inside MPyC).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from smpc.config.federation import Federation
from smpc.config.spec import GWAS_TESTS, Filters, Pca, SpecFile
from smpc.core.encoding import words_to_bytes
from smpc.core.field import MERSENNE61, field_for
from smpc.errors import UserError
from smpc.mpc.task import SecType, SessionTask
from smpc.protocols.base import (
    Outcome,
    Plan,
    Protocol,
    RunContext,
    SiteData,
    SiteSource,
    SkipJob,
    Step,
)
from smpc.protocols.gwas.spec import GwasPayload, GwasSpec
from smpc.protocols.gwas.task import GwasSession
from smpc.wire.messages import Job, encode_model

logger = logging.getLogger("smpc.gwas")


@dataclass
class GwasRun:
    """A GWAS run's result: the scan job's outcome (None for ``tests: [pca]``), the
    logistic fit and the PCA (or None)."""

    scan: Outcome | None
    logistic: dict[str, np.ndarray] | None = None
    pca: Any = None  # a .pcarounds.PcaResult


class GwasProtocol(Protocol):
    name: ClassVar[str] = "gwas"
    spec_model = GwasSpec
    payload_model = GwasPayload
    multiplies = True
    reveals = ("statistics", "aggregates")
    default_reveal = ("statistics",)
    uses = frozenset({"tests", "pheno", "covar", "filters", "pca"})

    # --- spec ---------------------------------------------------------------------------

    def unused_problem(self, key: str, value: Any, users: list[str]) -> str:
        if key == "inputs":
            return (
                "gwas reads each site's PLINK files, not named inputs: drop inputs "
                "(name the phenotype with pheno and covariates with covar)"
            )
        if key == "dp":
            return "differential privacy is offered for protocols sum and fedavg only; drop dp"
        return super().unused_problem(key, value, users)

    def reveal_problem(self, items: list[str]) -> str:
        if len(items) > 1:
            return (
                "gwas reveals either statistics (test results only) or aggregates (the summed "
                "counts and matrices, from which statistics follow): choose one"
            )
        return ""

    def resolve(
        self,
        raw: SpecFile,
        common: dict[str, Any],
        federation: Federation | None,
        problem: Callable[[str, str], None],
    ) -> dict[str, Any]:
        tests = tuple(raw.tests) if raw.tests is not None else ("assoc",)
        n = len(federation.parties) if federation is not None else None
        if common["reveal"] == ("statistics",) and n and (common["min_parties"] or n) < n:
            problem(
                "min_parties",
                f"{common['min_parties']}: reveal: statistics computes inside an MPyC session "
                f"among all N = {n} computing parties, so it needs every party; drop "
                "min_parties or use reveal: aggregates",
            )
        if not tests:
            problem("tests", f"empty: list at least one of {', '.join(GWAS_TESTS)}")
        case_control = [t for t in tests if t in ("model", "logistic")]
        if "linear" in tests and case_control:
            problem(
                "tests",
                f"linear needs a quantitative phenotype and {', '.join(case_control)} a "
                "case/control one: a spec has one phenotype, so split it into two specs",
            )
        covar = tuple(raw.covar or ())
        if covar and not {"linear", "logistic"} & set(tests):
            problem(
                "covar",
                "covariates are used by the linear and logistic tests only: add one of them "
                "to tests or drop covar",
            )
        options = raw.pca if raw.pca is not None else (Pca() if "pca" in tests else None)
        if options is not None:
            if "pca" not in tests:
                tests = (*tests, "pca")
            pcs = [c for c in covar if c.startswith("PC") and c[2:].isdigit()]
            beyond = [c for c in pcs if not 1 <= int(c[2:]) <= options.components]
            if beyond:
                problem(
                    "covar",
                    f"{', '.join(beyond)}: pca computes PC1 to PC{options.components}; "
                    "raise pca: components or drop them",
                )
        return {
            "tests": tests,
            "pheno": raw.pheno,
            "covar": covar,
            "filters": raw.filters or Filters(),
            "pca": options,
        }

    # --- analyst ------------------------------------------------------------------------

    def jobs_per_run(self, spec: Any) -> int:
        mind = spec.filters.mind is not None
        scan = 0 if tuple(spec.tests) == ("pca",) else 1
        pca = 4 if spec.pca is not None else 0  # frequencies, at least 2 rounds, scores
        return scan + int(mind) + pca + (2 if "logistic" in spec.tests else 0)  # Newton: >= 2

    def exact_openings(self, job: Job) -> bool:
        return True  # fractions' parts and counts, never fixed point

    def plan(self, spec: Any, context: RunContext) -> Plan:
        from smpc.protocols.gwas.finalize import analysed_ids, analysed_variants
        from smpc.protocols.gwas.job import alignment_parts, job_parts, statistics_mode
        from smpc.protocols.gwas.logistic import newton_plan

        deliver = spec.deliver
        if statistics_mode(spec):
            if spec.filters.hwe is not None and "hardy" not in spec.tests:
                raise UserError(
                    f"{spec.name}: with reveal: statistics this version cannot compute "
                    "the hwe filter without hardy (it tests the counts .hwe prints); "
                    "use reveal: aggregates for those"
                )
            deliver = "parties"  # opened inside MPyC, signed by every party
        mind = spec.filters.mind is not None
        variants, ids = None, None
        pca_run, pca_model = None, None
        if mind:  # first the variants every site has, over which sites count missing calls
            inputs, outputs = alignment_parts()
            aligned = yield Step(
                inputs=inputs, outputs=outputs, deliver="analyst",
                payload=GwasPayload(stage="align"), suffix="-align",
            )  # fmt: skip
            ids = analysed_ids(aligned.opened)
            variants = encode_model({"snp": np.char.encode(np.asarray(ids).astype(str), "utf-8")})
        if spec.pca is not None:  # then the PCA: the PCs may be the tests' covariates
            from smpc.protocols.gwas.pcarounds import pca_plan

            pca_run = yield from pca_plan(spec, mind=ids)
            if spec.principal_components():
                pca_model = pca_run.model
            if tuple(spec.tests) == ("pca",):
                return GwasRun(None, pca=pca_run)
        inputs, outputs = job_parts(spec)
        scan = yield Step(
            inputs=inputs, outputs=outputs, deliver=deliver,
            payload=GwasPayload(stage="scan", variants=variants, pca=pca_model),
        )  # fmt: skip
        if "logistic" not in spec.tests:
            return GwasRun(scan, pca=pca_run)
        fit = yield from newton_plan(
            spec, analysed_variants(spec, scan.opened), deliver=deliver,
            mind=analysed_ids(scan.opened) if mind else None, pca=pca_model,
        )  # fmt: skip
        return GwasRun(scan, fit, pca_run)

    def finalize(self, spec: Any, result: GwasRun, out: Path) -> dict[str, Any]:
        from smpc.protocols.gwas.finalize import finalize

        summary: dict[str, Any] = {}
        if result.scan is None and result.pca is not None:  # tests: [pca]
            summary = {"sites": result.pca.sites, "reveal": spec.reveal[0]}
        if result.scan is not None:
            summary = finalize(spec, result.scan.opened, out, logistic=result.logistic)
        if result.pca is None:
            return summary
        from smpc.protocols.gwas.pcarounds import write_outputs

        facts = write_outputs(spec, result.pca, out)
        summary = {**summary, "pca": facts, "files": [*summary.get("files", []), *facts["files"]]}
        (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    # --- site ---------------------------------------------------------------------------

    def site_data(self, spec: Any, job: Job, source: SiteSource) -> SiteData:
        if source.data is None:
            raise SkipJob(
                "a gwas job reads a data file (data: in the site config, --data PATH), "
                "not named inputs"
            )
        payload = self.payload(job)
        arrays = payload.arrays()
        if payload.stage.startswith("pca"):
            from smpc.protocols.gwas import pcarounds

            if payload.stage == "pcafreq":
                return SiteData(*pcarounds.site_freq(spec, source.data, arrays))
            if arrays is None:
                raise UserError(f"job {job.id}: a PCA job carries no model")
            if payload.stage == "pca":
                return SiteData(*pcarounds.site_round(spec, source.data, arrays))
            return SiteData(*pcarounds.site_scores(spec, source.data, arrays, source.out))
        if payload.stage == "newton":
            from smpc.protocols.gwas.logistic import site_round

            if arrays is None:
                raise UserError(f"job {job.id}: a Newton round names no variants")
            shared, samples = site_round(spec, source.data, arrays, payload.pca_model())
            return SiteData(shared, samples)
        from smpc.protocols.gwas.site import site_statistics

        analysed = None if arrays is None else np.char.decode(arrays["snp"], "utf-8")
        shared, samples = site_statistics(
            spec, source.data, analysed, table_only=payload.stage == "align",
            pca_model=payload.pca_model(),
        )  # fmt: skip
        return SiteData(shared, samples)

    # --- party --------------------------------------------------------------------------

    def combine(self, party: Any, job: Job, spec: Any, shares: dict) -> Any:
        stage = self.payload(job).stage
        if stage in ("pca", "pcascores"):  # plain sums, delivered to the analyst
            return party.sum_shares(job, spec, shares)
        if stage != "newton":
            return self._combine_statistics(party, job, spec, shares)
        if job.deliver == "parties":  # reveal: statistics: the step is computed in MPyC
            return self._combine_newton(party, job, shares)
        return party.sum_shares(job, spec, shares)  # the pooled gradient and Hessian

    def _combine_statistics(self, party: Any, job: Job, spec: Any, shares: dict) -> Any:
        """Align the sites' GWAS statistics on shares and add them.

        ``reveal: aggregates`` seals the pooled statistics to the analyst; ``statistics``
        hands them to this party's MPyC session, which opens only the printed values.
        """
        from smpc.protocols.gwas.job import statistics_mode
        from smpc.protocols.gwas.phenotypes import phenotype_problem
        from smpc.protocols.gwas.pooling import combine, regression_sessions
        from smpc.protocols.gwas.sizes import assoc_modulus

        field = field_for(job.modulus)
        pcafreq = self.payload(job).stage == "pcafreq"  # delivered to the analyst in either mode

        def share_of(name: str, site: str) -> np.ndarray:
            return party.share_values(shares[(name, site)])

        def pooled() -> Any:
            try:
                for name, values in combine(job, field, share_of):
                    if name == "alignment" and not pcafreq:  # refuse before any sum
                        summary = json.loads(words_to_bytes(field.to_signed(values)))
                        problem = phenotype_problem(spec, summary["phenotype"])
                        if problem:
                            raise UserError(problem)
                    yield name, values
            except (ValueError, KeyError, IndexError) as exc:
                logger.exception("job %s: the sites' statistics do not combine", job.id)
                raise UserError(f"the sites' statistics do not combine: {exc}") from None

        if not statistics_mode(spec) or job.input("counts") is None or pcafreq:
            outputs = {o.name: o for o in job.delivered}
            return party.seal_outputs(job, ((outputs[n], v) for n, v in pooled()))
        workdir = party.session_dir(job)
        arrays = {}
        try:
            for name, values in pooled():
                arrays[name] = values
        except UserError as exc:
            return party.failed(job, str(exc))
        summary = json.loads(words_to_bytes(field.to_signed(arrays["alignment"])))
        np.save(workdir / "alignment.npy", field.to_signed(arrays["alignment"]))
        (workdir / "counts.bin").write_bytes(field.to_bytes(arrays["counts"].reshape(-1, 24)))
        if "merge" in arrays:
            (workdir / "merge.bin").write_bytes(field.to_bytes(arrays["merge"]))
        alleles = job.input("alleles")
        if alleles is not None:
            big = field_for(alleles.modulus)
            (workdir / "alleles.bin").write_bytes(big.to_bytes(arrays["alleles"]))
        regression = regression_sessions(spec, job, arrays, workdir)
        modulus, bits = assoc_modulus() if alleles is not None else (None, None)
        filters = spec.filters
        task = SessionTask(
            job=job.id,
            party=party.index,
            sectype=SecType(kind="int", bit_length=MERSENNE61.bit_length() - 32, prime=job.modulus),
            protocol=self.name,
            step="scan",
            payload=GwasSession(
                variants=int(arrays["counts"].shape[0]),
                samples=party.declared_records(job, shares),
                tests=list(spec.tests),
                a1_side=summary.get("a1_side", ""),
                counts="counts.bin",
                merge="merge.bin" if "merge" in arrays else None,
                alleles="alleles.bin" if alleles is not None else None,
                assoc_modulus=modulus,
                assoc_field_bits=bits,
                geno=filters.geno,
                maf=filters.maf,
                hwe=filters.hwe,
                quantitative=summary["phenotype"] != "case/control",
                regression=regression,
            ).model_dump(mode="json"),
        )
        return party.session(task)

    def _combine_newton(self, party: Any, job: Job, shares: dict) -> Any:
        """A logistic Newton round with ``reveal: statistics``: add the sites' gradients and
        Hessians and hand them to the MPyC session, which opens only the step."""
        from smpc.protocols.gwas.logistic import pooled_round

        def share_of(name: str, site: str) -> np.ndarray:
            return party.share_values(shares[(name, site)])

        newton = pooled_round(job, share_of, party.session_dir(job))
        task = SessionTask(
            job=job.id,
            party=party.index,
            sectype=SecType(kind="int", bit_length=MERSENNE61.bit_length() - 32, prime=job.modulus),
            protocol=self.name,
            step="newton",
            payload=newton.model_dump(mode="json"),
        )
        return party.session(task)

    def session_openings(
        self, party: Any, job: Job, spec: Any, task: SessionTask, opened: dict
    ) -> dict:
        """The scan's alignment (public: every party computed the same) and, as empty
        arrays, the announced outputs the sites' phenotype does not read."""
        if task.step != "scan":
            return opened
        from smpc.protocols.gwas.job import unread_outputs

        words = np.load(party.session_dir(job) / "alignment.npy")
        opened["alignment"] = {"shape": list(words.shape), "values": words.tolist()}
        kind = (
            "quantitative"
            if GwasSession.model_validate(task.payload).quantitative
            else "case/control"
        )
        unread = {name: {"shape": [0], "values": []} for name in unread_outputs(spec, kind)}
        return {**unread, **opened}  # opened values win

    # --- MPyC session process -------------------------------------------------------------

    async def session(self, mpc: Any, task: SessionTask, workdir: Path) -> dict[str, Any]:
        if task.step not in ("scan", "newton"):  # a Newton round's plain sums
            from smpc.protocols.linear import open_sums

            return await open_sums(mpc, task, workdir)
        from smpc.protocols.gwas.mpc.session import run_gwas, run_newton

        run = run_gwas if task.step == "scan" else run_newton
        return {"job": task.job, "party": mpc.pid, "outputs": await run(mpc, task, workdir)}
