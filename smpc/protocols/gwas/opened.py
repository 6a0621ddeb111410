"""PLINK 1.9's files from the statistics opened inside MPyC (``reveal: statistics``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from smpc.protocols.gwas.a1 import flip_alleles
from smpc.protocols.gwas.job import RATIOS, TEST_EXTENSION
from smpc.protocols.gwas.mpc.rational import Ratio
from smpc.protocols.gwas.plink import counts as count_tests
from smpc.protocols.gwas.plink import qc, regression
from smpc.protocols.gwas.plink.counts import tprob
from smpc.protocols.gwas.plink.fileset import VariantTable
from smpc.protocols.gwas.plink.formats import plink_maxsnp
from smpc.protocols.gwas.plink.pvalues import t_two_sided
from smpc.protocols.gwas.results import summarise


def finalize_statistics(
    spec: Any,
    opened: Mapping[str, np.ndarray],
    out: Path,
    summary: dict[str, Any],
    variants: VariantTable,
    logistic: Mapping[str, np.ndarray] | None,
) -> dict[str, Any]:
    """PLINK's files from what the parties opened inside MPyC (:mod:`.mpc.session`).

    Each report is written by the same writer as in aggregates mode, from a count
    tensor that holds exactly the opened counts that report prints (and zeros
    elsewhere), oriented by the opened A1 bits; ``.assoc`` from the opened fractions.
    """
    merge, swap, geno, keep = opened_masks(opened)
    variants = flip_alleles(variants, merge ^ swap)
    v = len(variants["snp"])
    width = plink_maxsnp(variants["snp"])
    name = out / spec.name
    kept = variants.take(keep)
    counts = _OpenedCounts(opened, merge, swap)
    quantitative = summary["phenotype"] == "quantitative"

    written, p_values = [], None
    for test in spec.tests:
        if test == "pca":  # written by .pcarounds
            continue
        path = f"{name}.{TEST_EXTENSION[test]}"
        if test == "freq":
            qc.write_frq(path, variants, counts.freq(), swapped=swap, snp_width=width)
        elif test == "missing":
            qc.write_lmiss(path, variants, counts.missing(), snp_width=width)
        elif test == "hardy":
            subset = variants.take(geno)
            qc.write_hwe(
                path, subset, counts.hardy(geno), swapped=swap[geno], snp_width=width,
                quantitative=quantitative,
            )  # fmt: skip
        elif test == "model":
            count_tests.write_model(path, kept, counts.model(keep), snp_width=width)
        elif test == "assoc" and quantitative:
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
            table = _assoc_from_ratios(opened)
            count_tests.write_assoc(path, kept, None, snp_width=width, table=table)
            p_values = table["P"]
        written.append(Path(path).name)
    return summarise(
        spec, out, kept, p_values, written,
        variants=v, excluded=len(summary["excluded"]), filtered=int((~keep).sum()),
        sites=summary["sites"],
        reveal="statistics",
    )  # fmt: skip


class _OpenedCounts:
    """Count tensors holding exactly the opened counts a report prints, oriented as PLINK."""

    def __init__(self, opened: Mapping[str, np.ndarray], merge: np.ndarray, swap: np.ndarray):
        self.opened, self.merge, self.swap = opened, merge, swap
        self.everything = np.ones(merge.size, dtype=bool)

    def oriented(self, fill: Any, rows: np.ndarray | None = None) -> np.ndarray:
        """A reference-orientation tensor of ``rows`` filled by ``fill``, oriented as PLINK."""
        rows = self.everything if rows is None else rows
        tensor = np.zeros((int(rows.sum()), 3, 2, 4), dtype=np.int64)
        fill(tensor)
        return qc.swap_alleles(qc.swap_alleles(tensor, self.merge[rows]), self.swap[rows])

    def ints(self, key: str) -> np.ndarray:
        return np.asarray(self.opened[key]).astype(np.int64)

    def freq(self) -> np.ndarray:
        a1, called = self.ints("freq.alleles").T

        def fill(t: np.ndarray) -> None:
            t[:, 0, 1, 0], t[:, 0, 1, 1] = a1 // 2, a1 % 2  # any genotypes with these
            t[:, 0, 1, 2] = called // 2 - a1 // 2 - a1 % 2  # allele counts print alike

        return self.oriented(fill)

    def missing(self) -> np.ndarray:
        missing, samples = self.ints("missing.counts").T

        def fill(t: np.ndarray) -> None:
            t[:, 0, 1, 3], t[:, 0, 1, 0] = missing, samples - missing

        return self.oriented(fill)

    def hardy(self, geno: np.ndarray) -> np.ndarray:
        hardy = self.ints("hardy.counts").reshape(-1, 3, 3)

        def fill(t: np.ndarray) -> None:
            t[:, :, 1, :3] = hardy

        return self.oriented(fill, geno)

    def model(self, keep: np.ndarray) -> np.ndarray:
        model = self.ints("model.counts").reshape(-1, 2, 3)

        def fill(t: np.ndarray) -> None:
            t[:, :2, 1, :3] = model

        return self.oriented(fill, keep)


def _assoc_from_ratios(opened: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``.assoc``'s columns from the opened F_A, F_U, CHISQ and OR fractions."""
    ratios = {r: _opened_ratio(opened, f"assoc.{r}").to_float() for r in RATIOS}
    return {
        "F_A": ratios["f_a"],
        "F_U": ratios["f_u"],
        "CHISQ": ratios["chisq"],
        "P": count_tests.chiprob_p(ratios["chisq"], 1.0),
        "OR": ratios["or"],
    }


def opened_masks(opened: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """``reveal: statistics``: the opened A1 bits (merge, swap) and filter masks (geno, all)."""
    merge = np.asarray(opened["a1.merge"]).astype(bool).reshape(-1)
    swap = np.asarray(opened["a1.swap"]).astype(bool).reshape(-1)
    everything = np.ones(merge.size, dtype=bool)
    geno = np.asarray(opened.get("filter.geno", everything)).astype(bool).reshape(-1)
    keep = geno & np.asarray(opened.get("filter.maf", everything)).astype(bool).reshape(-1)
    keep &= np.asarray(opened.get("filter.hwe", everything)).astype(bool).reshape(-1)
    return merge, swap, geno, keep


def _opened_ratio(opened: Mapping[str, np.ndarray], key: str) -> Any:
    return Ratio(
        np.asarray(opened[f"{key}.num"], dtype=object).reshape(-1),
        np.asarray(opened[f"{key}.den"], dtype=object).reshape(-1),
    )


def _linear_from_ratios(opened: Mapping[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """``.assoc.linear``'s ADD columns from the opened NMISS, BETA and T² (:mod:`.mpc.session`).

    NA where PLINK's regression has no solution: n <= k, a singular XᵀX or RSS = 0
    (exactly: T²'s denominator is 0). STAT = sign(BETA)·√T², P two-sided with n − k df.
    """
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
    """``.qassoc``'s columns from the opened NMISS, BETA and SE² (:mod:`.mpc.session`).

    T = BETA/SE and R2 = T²/(T² + n − 2) (the simple regression's r²; 1 for a perfect
    fit, SE = 0), P two-sided with n − 2 df, as :func:`.plink.counts.qassoc_table`.
    """
    n = np.asarray(opened["qt.nmiss"]).astype(np.int64).reshape(-1)
    beta = _opened_ratio(opened, "qt.beta").to_float()
    se = np.sqrt(_opened_ratio(opened, "qt.se2").to_float())
    df = (n - 2).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = beta / se
        r2 = np.where(se == 0, 1.0, t * t / (t * t + df))
    return {"NMISS": n, "BETA": beta, "SE": se, "R2": r2, "T": t, "P": tprob(t, df)}
