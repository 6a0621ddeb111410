"""``--linear``/``--logistic hide-covar`` from summed per-site statistics equal PLINK 1.9.

A pooled cohort is simulated here (monomorphic, rare and colinear variants, missing
calls, samples missing a covariate or phenotype), written as a PLINK fileset and
analysed by ``plink1.9``; the same samples split over three "sites" (one of them in
the opposite allele orientation for some variants) give per-site statistics whose
sums must reproduce PLINK's report column for column.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smpc.protocols.gwas.plink.regression import (
    LOGISTIC_MAX_ITER,
    LinearStats,
    flip_genotypes,
    flip_linear_stats,
    linear_from_stats,
    linear_site_stats,
    logistic_fit,
    logistic_site_stats,
    write_linear,
    write_logistic,
)

PLINK = shutil.which("plink1.9") or "/usr/bin/plink1.9"
N_SAMPLES = 500
N_SNPS = 300


def _require_plink() -> None:
    if not Path(PLINK).exists():
        pytest.fail(f"plink1.9 not found (looked for {PLINK}); install PLINK 1.9 to run this test")


class Cohort:
    """Simulated pooled data in PLINK orientation (g = copies of the pooled minor allele)."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        n, v = N_SAMPLES, N_SNPS
        maf = rng.uniform(0.02, 0.5, v)
        maf[:6] = 0.0  # monomorphic
        maf[6:16] = 0.004  # rare: a handful of carriers
        g = rng.binomial(2, maf, size=(n, v)).astype(np.float64)
        self.age = np.round(rng.normal(50, 10, n), 1)
        self.sex2 = rng.integers(0, 2, n).astype(np.float64)
        g[:, 16] = 2 * self.sex2  # exactly colinear with SEX2: VIF fails
        g[:, 17] = np.where(rng.random(n) < 0.03, 1 - self.sex2, self.sex2)  # nearly so
        g[:, 18] = 1.0  # everyone heterozygous: zero variance
        g[:, 21] = self.sex2  # see below: SEX2 but for two samples
        g[rng.random((n, v)) < 0.03] = np.nan
        g[rng.random(n) < 0.995, 19] = np.nan  # almost all missing: n <= p
        carriers = rng.choice(n, 4, replace=False)
        g[:, 20] = 0.0
        g[carriers, 20] = 1.0  # rare variant, all carriers cases: separation
        # quantitative trait and case/control status
        qt = 0.4 * np.nan_to_num(g[:, 30]) + 0.02 * self.age + 0.5 * self.sex2
        self.qt = qt + rng.normal(0, 1, n)
        eta = -3.0 + 0.8 * np.nan_to_num(g[:, 30]) + 0.04 * self.age + 0.3 * self.sex2
        self.cc = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.float64)
        self.cc[carriers] = 1.0
        # missing covariates / phenotypes (NaN here, -9 in the files)
        self.age[rng.choice(n, 5, replace=False)] = np.nan
        self.sex2[rng.choice(n, 3, replace=False)] = np.nan
        self.qt[rng.choice(n, 6, replace=False)] = np.nan
        self.cc[rng.choice(n, 6, replace=False)] = np.nan
        # variant 21 is SEX2 but for two women with g = 1, one case and one control:
        # correlation with SEX2 < 0.999 but VIF > 50 (linear: NA), and no separation
        # (logistic: a finite fit; one discordant sample would make PLINK's float32
        # iterations chaotic)
        ok = ~np.isnan(self.age) & ~np.isnan(self.qt) & ~np.isnan(self.cc)
        i, j = np.flatnonzero(ok & (self.sex2 == 0))[:2]
        g[:, 21] = np.nan_to_num(self.sex2)
        g[[i, j], 21] = 1.0
        self.cc[[i, j]] = [1.0, 0.0]
        # a trait almost determined by variant 31: p-values deep in the subnormal range
        self.qt2 = np.nan_to_num(g[:, 31]) + 0.107 * rng.normal(0, 1, n) + 0.01 * self.age
        self.qt2[np.isnan(g[:, 31])] = np.nan
        # .bim orientation: for some variants allele_1 is the major allele, so PLINK
        # must swap them; bed-reader writes copies of allele_1
        bim_major = rng.random(v) < 0.5
        bim_major[:6] = False
        self.val = np.where(bim_major, 2 - g, g)
        # PLINK's A1: allele_1 unless allele_2's frequency over all (founder) calls is
        # strictly below 0.5 (then it swaps them)
        called = ~np.isnan(self.val)
        a2_freq = 1 - np.nansum(self.val, axis=0) / np.maximum(2 * called.sum(axis=0), 1)
        self.swap = (a2_freq < 0.5) & called.any(axis=0)
        self.g_minor = np.where(self.swap, 2 - self.val, self.val)
        self.snp = np.array([f"rs{1000 + i}" if i % 7 else f"snp_{i}" for i in range(v)])
        self.bp = np.arange(v) * 1000 + 12345
        self.allele_1 = np.where(rng.random(v) < 0.5, "A", "C")
        self.allele_2 = np.where(self.allele_1 == "A", "G", "T")
        # sites: random assignment of samples to three sites
        self.site = rng.integers(0, 3, n)
        self.flip_site = 1
        self.flip = rng.random(v) < 0.5

    def write(self, d: Path) -> Path:
        from bed_reader import to_bed

        n = N_SAMPLES
        fid = [f"F{i}" for i in range(n)]
        iid = [f"I{i}" for i in range(n)]
        to_bed(
            d / "pooled.bed",
            self.val,
            properties={
                "fid": fid,
                "iid": iid,
                "sex": np.zeros(n, dtype=np.int32),
                "pheno": np.full(n, -9.0),
                "chromosome": ["1"] * N_SNPS,
                "sid": self.snp,
                "bp_position": self.bp,
                "allele_1": self.allele_1,
                "allele_2": self.allele_2,
            },
        )

        def col(x: np.ndarray, cc: bool = False) -> list[str]:
            if cc:
                return ["-9" if np.isnan(v) else str(int(v) + 1) for v in x]
            return ["-9" if np.isnan(v) else repr(float(v)) for v in x]

        with open(d / "covar.txt", "w") as f:
            f.write("FID IID AGE SEX2\n")
            for row in zip(fid, iid, col(self.age), col(self.sex2), strict=True):
                f.write(" ".join(row) + "\n")
        with open(d / "pheno.txt", "w") as f:
            f.write("FID IID QT CC QT2\n")
            cols = [col(self.qt), col(self.cc, cc=True), col(self.qt2)]
            for row in zip(fid, iid, *cols, strict=True):
                f.write(" ".join(row) + "\n")
        return d / "pooled"

    def variants(self) -> dict[str, np.ndarray]:
        """Variant table in the final orientation (A1 = pooled minor allele)."""
        return {
            "chrom": np.full(N_SNPS, "1"),
            "snp": self.snp,
            "bp": self.bp,
            "a1": np.where(self.swap, self.allele_2, self.allele_1),
        }

    def covar(self, with_covar: bool) -> np.ndarray | None:
        return np.column_stack([self.age, self.sex2]) if with_covar else None

    def site_data(
        self, s: int, with_covar: bool
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """A site's genotypes as it holds them (flipped site: 2 - g on ``flip``)."""
        m = self.site == s
        g = self.g_minor[m]
        if s == self.flip_site:
            g = np.where(self.flip, 2 - g, g)
        c = self.covar(with_covar)
        return g, None if c is None else c[m], m


def _run_plink(prefix: Path, out: Path, model: str, pheno: str, with_covar: bool) -> Path:
    cmd = [PLINK, "--bfile", str(prefix), "--allow-no-sex", f"--{model}", "hide-covar"]
    cmd += ["--pheno", str(prefix.parent / "pheno.txt"), "--pheno-name", pheno]
    if with_covar:
        cmd += ["--covar", str(prefix.parent / "covar.txt"), "--covar-name", "AGE,SEX2"]
    cmd += ["--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Path(f"{out}.assoc.{model}")


_NUM = re.compile(r"^-?(\d+)(?:\.(\d+))?(?:e([+-]\d+))?$")


def _last_digit_unit(s: str) -> float:
    m = _NUM.match(s)
    assert m, f"not a PLINK number: {s!r}"
    decimals = len(m.group(2) or "")
    exp = int(m.group(3) or 0)
    return 10.0 ** (exp - decimals)


def _compare(ours: Path, theirs: Path, logistic: bool) -> None:
    a = ours.read_text().splitlines()
    b = theirs.read_text().splitlines()
    assert a[0] == b[0], f"header differs:\n{a[0]!r}\n{b[0]!r}"
    assert len(a) == len(b), f"{len(a)} rows vs PLINK's {len(b)}"
    names = b[0].split()
    mismatches = []
    for la, lb in zip(a[1:], b[1:], strict=True):
        fa, fb = la.split(), lb.split()
        assert len(fa) == len(fb) == len(names), (la, lb)
        for name, x, y in zip(names, fa, fb, strict=True):
            if name in ("CHR", "SNP", "BP", "A1", "TEST", "NMISS") or "NA" in (x, y):
                if x != y:
                    mismatches.append(f"{fb[1]} {name}: ours {x} PLINK {y}")
                continue
            xv, yv = float(x), float(y)
            tol = _last_digit_unit(y) * (1 + 1e-9)
            if abs(xv - yv) <= tol:
                continue
            if logistic and (abs(xv - yv) <= 1e-3 * abs(yv) or abs(xv - yv) <= 1e-5):
                continue
            mismatches.append(f"{fb[1]} {name}: ours {x} PLINK {y}")
    assert not mismatches, "\n".join(mismatches[:30]) + f"\n({len(mismatches)} cells differ)"


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return Cohort()


@pytest.fixture(scope="module")
def fileset(cohort: Cohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_plink()
    return cohort.write(tmp_path_factory.mktemp("pooled"))


def _pooled_linear(cohort: Cohort, with_covar: bool, trait: str = "qt") -> LinearStats:
    parts = []
    for s in range(3):
        g, c, m = cohort.site_data(s, with_covar)
        st = linear_site_stats(g, c, getattr(cohort, trait)[m])
        if s == cohort.flip_site:
            st = flip_linear_stats(st, cohort.flip)
        parts.append(st)
    return LinearStats.sum(parts)


def _pooled_logistic_evaluator(
    cohort: Cohort, with_covar: bool, calls: list[int]
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The coordinator's round trip: every site evaluates at beta, the sums are added."""
    sites = []
    for s in range(3):
        g, c, m = cohort.site_data(s, with_covar)
        if s == cohort.flip_site:  # the site puts its genotypes in the pooled orientation
            g = flip_genotypes(g, cohort.flip)
        sites.append((g, c, cohort.cc[m]))

    def evaluate(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        calls.append(1)
        parts = [logistic_site_stats(g, c, y, beta) for g, c, y in sites]
        n, grad, hess = (sum(x[i] for x in parts) for i in range(3))
        return n, grad, hess

    return evaluate


@pytest.mark.timeout(180)
@pytest.mark.parametrize("with_covar", [True, False], ids=["covar", "nocovar"])
def test_linear_matches_plink(
    cohort: Cohort, fileset: Path, tmp_path: Path, with_covar: bool
) -> None:
    theirs = _run_plink(fileset, tmp_path / "plink", "linear", "QT", with_covar)
    result = linear_from_stats(_pooled_linear(cohort, with_covar))
    ours = tmp_path / "ours.assoc.linear"
    write_linear(ours, cohort.variants(), result)
    _compare(ours, theirs, logistic=False)
    # the designed NA cases are NA (already equal to PLINK's), and most variants are not
    na = ~result["ok"]
    designed = [0, 1, 2, 3, 4, 5, 18] + ([16, 19, 21] if with_covar else [])
    assert na[designed].all()
    assert na.sum() < 20


@pytest.mark.timeout(180)
def test_linear_subnormal_pvalue(cohort: Cohort, fileset: Path, tmp_path: Path) -> None:
    """t ~ 100: PLINK prints a subnormal p-value (its last bit rounded as PLINK does)."""
    theirs = _run_plink(fileset, tmp_path / "plink", "linear", "QT2", True)
    result = linear_from_stats(_pooled_linear(cohort, True, "qt2"))
    assert 0 < result["P"][31] < 1e-307
    ours = tmp_path / "ours.assoc.linear"
    write_linear(ours, cohort.variants(), result)
    _compare(ours, theirs, logistic=False)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("with_covar", [True, False], ids=["covar", "nocovar"])
def test_logistic_matches_plink(
    cohort: Cohort, fileset: Path, tmp_path: Path, with_covar: bool
) -> None:
    theirs = _run_plink(fileset, tmp_path / "plink", "logistic", "CC", with_covar)
    calls: list[int] = []
    p = 4 if with_covar else 2
    result = logistic_fit(_pooled_logistic_evaluator(cohort, with_covar, calls), N_SNPS, p)
    assert len(calls) == int(result["iterations"].max()) <= LOGISTIC_MAX_ITER
    ours = tmp_path / "ours.assoc.logistic"
    write_logistic(ours, cohort.variants(), result)
    _compare(ours, theirs, logistic=True)
    na = ~result["ok"]
    designed = [0, 1, 2, 3, 4, 5, 18, 20] + ([16, 19] if with_covar else [])
    assert result["ok"][21]
    assert na[designed].all()
    assert na.sum() < 20


def test_flip_is_exact(cohort: Cohort) -> None:
    """Flipping the statistics equals computing them on 2 - g."""
    g, c, m = cohort.site_data(0, True)
    flip = cohort.flip
    direct = linear_site_stats(np.where(flip, 2 - g, g), c, cohort.qt[m])
    mapped = flip_linear_stats(linear_site_stats(g, c, cohort.qt[m]), flip)
    np.testing.assert_array_equal(direct.n, mapped.n)
    np.testing.assert_allclose(direct.xtx, mapped.xtx, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(direct.xty, mapped.xty, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(direct.yty, mapped.yty)
    # flipping twice is the identity; int8 genotypes keep -127 as missing
    back = flip_linear_stats(mapped, flip)
    np.testing.assert_allclose(back.xtx, linear_site_stats(g, c, cohort.qt[m]).xtx, atol=1e-9)
    as_int = np.where(np.isnan(g), -127, g).astype(np.int8)
    flipped = flip_genotypes(as_int, flip)
    assert flipped.dtype == np.int8
    np.testing.assert_array_equal(flipped == -127, np.isnan(g))
    np.testing.assert_array_equal(np.where(flipped < 0, np.nan, flipped), flip_genotypes(g, flip))


def test_int8_genotypes_equal_float(cohort: Cohort) -> None:
    """bed-reader's int8 with -127 for missing gives the same sums as float with NaN."""
    g, c, m = cohort.site_data(2, True)
    as_int = np.where(np.isnan(g), -127, g).astype(np.int8)
    a = linear_site_stats(g, c, cohort.qt[m])
    b = linear_site_stats(as_int, c, cohort.qt[m])
    np.testing.assert_array_equal(a.xtx, b.xtx)
    np.testing.assert_array_equal(a.xty, b.xty)


@pytest.mark.timeout(120)
def test_site_stats_at_scale_match_numpy() -> None:
    """10,000 samples x 2,000 variants with 2 covariates and missing calls: every variant's
    X'X, X'y and y'y equal NumPy's on that variant's called samples (the speed of this
    path is benchmarks/gwas.py's subject, not a test's)."""
    rng = np.random.default_rng(3)
    n, v = 10_000, 2_000
    g = rng.binomial(2, 0.3, (n, v)).astype(np.float32)
    g[rng.random((n, v)) < 0.02] = np.nan
    covar = np.column_stack([rng.normal(50, 10, n), rng.integers(0, 2, n)])
    y = rng.normal(size=n)
    st = linear_site_stats(g, covar, y)
    assert st.xtx.shape == (v, 4, 4)
    for j in rng.choice(v, 25, replace=False):
        called = ~np.isnan(g[:, j])
        x = np.column_stack([np.ones(called.sum()), g[called, j], covar[called]])
        np.testing.assert_allclose(st.xtx[j], x.T @ x, rtol=1e-9)
        np.testing.assert_allclose(st.xty[j], x.T @ y[called], rtol=1e-9)
        np.testing.assert_allclose(st.yty[j], y[called] @ y[called], rtol=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=7), st.integers(min_value=0, max_value=5))
def test_symmetric_matrices_travel_as_their_upper_triangle(k, batch):
    from smpc.protocols.gwas.combine import pack_symmetric, unpack_symmetric

    rng = np.random.default_rng(k * 10 + batch)
    a = rng.integers(-(2**40), 2**40, size=(batch, k, k))
    a = a + np.swapaxes(a, -1, -2)
    packed = pack_symmetric(a)
    assert packed.shape == (batch, k * (k + 1) // 2)
    assert np.array_equal(unpack_symmetric(packed), a)
    with pytest.raises(ValueError, match="upper triangle"):
        unpack_symmetric(np.zeros((batch, k * (k + 1) // 2 + 1)))
