"""GWAS end to end through ``smpc local`` against PLINK 1.9 on the pooled data.

A fresh simulated cohort (:mod:`tests.simulate`): 3 sites of unequal
size, each fileset written by its own ``plink --make-bed`` (so each site's A1 is its
local minor allele), one site's variants shuffled, missing calls, missing phenotypes,
covariates, a quantitative trait, and variants absent at a site, with mismatched alleles,
on a flipped strand, duplicated or on chrX. PLINK 1.9 runs on POOLED (the merge in site
order of the variants that survive alignment), and every column of every output must
match: identical strings and NA cells, numbers within one unit of PLINK's last printed
digit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from smpc.local import run_local
from tests.simulate import simulate_cohort

pytestmark = pytest.mark.timeout(300)

PLINK = "plink1.9"
COUNT_TESTS = [
    ("--assoc", "assoc"),
    ("--model", "model"),
    ("--hardy", "hwe"),
    ("--freq", "frq"),
    ("--missing", "lmiss"),
]
"""The count-based tests: PLINK flag and output extension."""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    if shutil.which(PLINK) is None:
        pytest.fail("plink1.9 is not installed (tests/run.sh installs the Debian package)")
    return simulate_cohort(tmp_path_factory.mktemp("cohort"), 700, 1200, 3, seed=11)


def _plink(cohort, out: Path, *flags: str) -> Path:
    subprocess.run(
        [PLINK, "--bfile", str(cohort.pooled), "--allow-no-sex", *flags, "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def _unit(token: str) -> Decimal:
    """One unit of the last printed digit of a number as PLINK printed it."""
    mantissa, _, exponent = token.lower().partition("e")
    digits = mantissa.split(".")[1] if "." in mantissa else ""
    return Decimal(1).scaleb(-len(digits) + int(exponent or 0))


def _number(token: str) -> Decimal | None:
    try:
        value = Decimal(token)
    except ArithmeticError:
        return None
    return value if value.is_finite() else None


def assert_same_table(ours: Path, plink: Path, *, single_precision: bool = False) -> None:
    """Token by token: strings identical, numbers within one unit of PLINK's last digit.

    ``single_precision`` (logistic, which PLINK 1.9 fits in float32) also accepts 1e-3
    relative or 1e-5 absolute.
    """
    mine, theirs = ours.read_text().splitlines(), plink.read_text().splitlines()
    assert len(mine) == len(theirs), f"{ours.name}: {len(mine)} lines, PLINK {len(theirs)}"
    for line, (a, b) in enumerate(zip(mine, theirs, strict=True), 1):
        ta, tb = a.split(), b.split()
        assert len(ta) == len(tb), f"{ours.name}:{line}: {a!r} vs PLINK {b!r}"
        for x, y in zip(ta, tb, strict=True):
            nx, ny = _number(x), _number(y)
            if nx is None or ny is None:
                assert x == y, f"{ours.name}:{line}: {x!r} vs PLINK {y!r} in {b!r}"
            else:
                close = abs(nx - ny) <= _unit(y) or (
                    single_precision
                    and abs(nx - ny) <= max(Decimal("1e-5"), Decimal("1e-3") * abs(ny))
                )
                assert close, f"{ours.name}:{line}: {x} vs PLINK {y}"


def _run(cohort, tmp_path: Path, spec: str) -> Path:
    (tmp_path / "spec.yaml").write_text(spec)
    sites = {s: cohort.prefixes[s] for s in cohort.sites}
    run_local(tmp_path / "spec.yaml", sites, tmp_path / "out", parties=3, threshold=1)
    return tmp_path / "out"


def test_case_control_reports_equal_plink(cohort, tmp_path):
    out = _run(
        cohort,
        tmp_path,
        "name: cc\nprotocol: gwas\ntests: [assoc, model, hardy, freq, missing]\n"
        "reveal: aggregates\n",
    )
    for flag, ext in COUNT_TESTS:
        plink = _plink(cohort, tmp_path / f"plink-{ext}", flag)
        assert_same_table(out / f"cc.{ext}", plink.with_suffix(f".{ext}"))
    excluded = (out / "cc.excluded").read_text().splitlines()
    assert excluded[0].split("\t") == ["SNP", "CHR", "REASON"]
    assert {row.split("\t")[0] for row in excluded[1:]} == set(cohort.excluded)
    result = json.loads((out / "result.json").read_text())
    assert result["sites"] == cohort.sites  # pooled in site order, as POOLED
    assert (out / "cc.manhattan.png").stat().st_size > 0
    assert (out / "cc.qq.png").stat().st_size > 0


def test_statistics_opened_inside_mpyc_with_secure_filters_equal_plink(cohort, tmp_path):
    """The default ``reveal: statistics``: the parties compute and open inside MPyC."""
    out = _run(
        cohort,
        tmp_path,
        "name: cs\nprotocol: gwas\ntests: [assoc, model, hardy, freq, missing]\n"
        "filters: {maf: 0.02, geno: 0.03, hwe: 1.0e-3, mind: 0.02}\n",
    )
    filters = ["--maf", "0.02", "--geno", "0.03", "--hwe", "1e-3", "--mind", "0.02"]
    for flag, ext in COUNT_TESTS:
        plink = _plink(cohort, tmp_path / f"plink-{ext}", flag, *filters)
        assert_same_table(out / f"cs.{ext}", plink.with_suffix(f".{ext}"))
    result = json.loads((out / "result.json").read_text())
    assert result["reveal"] == "statistics"
    assert result["filtered"] > 0


@pytest.mark.parametrize("reveal", ["aggregates", "statistics"])
def test_quantitative_trait_linear_and_qassoc_with_filters_equal_plink(cohort, tmp_path, reveal):
    """With ``statistics`` the regressions run inside MPyC (exact fractions opened)."""
    out = _run(
        cohort,
        tmp_path,
        "name: qt\nprotocol: gwas\ntests: [linear, assoc, freq, hardy]\npheno: QT\n"
        f"covar: [AGE, SEX2]\nreveal: {reveal}\n"
        "filters: {maf: 0.02, geno: 0.03, hwe: 1.0e-4, mind: 0.02}\n",
    )
    pooled = cohort.pooled
    common = ["--pheno", f"{pooled}.pheno", "--pheno-name", "QT"]
    filters = ["--maf", "0.02", "--geno", "0.03", "--hwe", "1e-4", "--mind", "0.02"]
    covar = ["--covar", f"{pooled}.cov", "--covar-name", "AGE,SEX2"]
    linear = _plink(cohort, tmp_path / "pl", *common, *filters, *covar, "--linear", "hide-covar")
    assert_same_table(out / "qt.assoc.linear", linear.with_suffix(".assoc.linear"))
    qassoc = _plink(cohort, tmp_path / "pq", *common, *filters, "--assoc")
    assert_same_table(out / "qt.qassoc", qassoc.with_suffix(".qassoc"))
    reports = _plink(cohort, tmp_path / "pr", *common, *filters, "--freq", "--hardy")
    assert_same_table(out / "qt.frq", reports.with_suffix(".frq"))
    assert_same_table(out / "qt.hwe", reports.with_suffix(".hwe"))
    result = json.loads((out / "result.json").read_text())
    assert result["filtered"] > 0
    assert result["reveal"] == reveal


@pytest.mark.parametrize("reveal", ["statistics", "aggregates"])
def test_case_control_pheno_column_with_assoc_equals_plink(cohort, tmp_path, reveal):
    """A case/control ``pheno:`` column (1/2/-9 in PREFIX.pheno) gives ``.assoc``: the job
    also announces what a quantitative reading (``.qassoc``) would open, and the parties
    deliver those empty, so the default ``reveal: statistics`` completes too."""
    out = _run(
        cohort,
        tmp_path,
        f"name: c3\nprotocol: gwas\npheno: CC\ntests: [assoc]\nreveal: {reveal}\n",
    )
    pheno = ["--pheno", f"{cohort.pooled}.pheno", "--pheno-name", "CC"]
    plink = _plink(cohort, tmp_path / "plink", *pheno, "--assoc")
    assert_same_table(out / "c3.assoc", plink.with_suffix(".assoc"))
    assert not (out / "c3.qassoc").exists()
    result = json.loads((out / "result.json").read_text())
    assert result["reveal"] == reveal
    assert result["files"][0] == "c3.assoc"


@pytest.mark.parametrize(
    ("reveal", "filters"),
    [("aggregates", {}), ("statistics", {}), ("statistics", {"mind": "0.02", "maf": "0.02"})],
    ids=["aggregates", "statistics", "statistics-mind-maf"],
)
def test_logistic_by_newton_rounds_through_the_sites_equals_plink(
    cohort, tmp_path, reveal, filters
):
    """With ``statistics`` each round's step H⁻¹g is computed and opened inside MPyC;
    with ``mind`` every site drops the same samples in every round as in the first job."""
    spec = f"name: lg\nprotocol: gwas\ntests: [logistic]\ncovar: [AGE, SEX2]\nreveal: {reveal}\n"
    if filters:
        spec += "filters: {" + ", ".join(f"{k}: {v}" for k, v in filters.items()) + "}\n"
    out = _run(cohort, tmp_path, spec)
    pooled = cohort.pooled
    covar = ["--covar", f"{pooled}.cov", "--covar-name", "AGE,SEX2"]
    flags = [x for k, v in filters.items() for x in (f"--{k}", v)]
    plink = _plink(cohort, tmp_path / "plink", *covar, *flags, "--logistic", "hide-covar")
    assert_same_table(
        out / "lg.assoc.logistic", plink.with_suffix(".assoc.logistic"), single_precision=True
    )
    assert json.loads((out / "result.json").read_text())["reveal"] == reveal


def test_a_site_in_pgen_format_gives_the_same_results(cohort, tmp_path):
    """One site as PLINK 2 .pgen/.pvar/.psam (written by plink2): the same files.

    (A VCF carries no parents and no phenotype, so a VCF site is compared on its
    genotypes in tests/test_gwas_sitedata.py instead.)
    """
    if shutil.which("plink2") is None:
        pytest.fail("plink2 is not installed (tests/run.sh installs the Debian package)")
    site = cohort.sites[-1]  # stored in plink's own order, as plink2 expects
    prefixes = dict(cohort.prefixes)
    out = tmp_path / site
    subprocess.run(
        ["plink2", "--bfile", str(prefixes[site]), "--make-pgen", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    for ext in ("pheno", "cov"):  # the extra phenotype and covariate files stay
        shutil.copy(f"{prefixes[site]}.{ext}", f"{out}.{ext}")
    prefixes[site] = out
    (tmp_path / "spec.yaml").write_text(
        "name: fm\nprotocol: gwas\ntests: [assoc, freq]\nreveal: aggregates\n"
    )
    run_local(tmp_path / "spec.yaml", prefixes, tmp_path / "out", parties=3, threshold=1)
    for flag, ext in [("--assoc", "assoc"), ("--freq", "frq")]:
        plink = _plink(cohort, tmp_path / f"plink-{ext}", flag)
        assert_same_table(tmp_path / "out" / f"fm.{ext}", plink.with_suffix(f".{ext}"))
