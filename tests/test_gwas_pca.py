"""Federated PCA against ``plink2 --pca`` on the pooled fileset.

The math (:mod:`smpc.protocols.gwas.pca`) first, on simulated cohorts with ancestry
structure (msprime island model, K+1 populations, uneven sites, missing calls): the
pooled fileset's rows are split into uneven sites, each computes ``Y_sᵀ(Y_s Q)``, the sum
drives the subspace iteration, and each site scores its own rows. Eigenvalues within
1e-4 relative; every PC separated from its neighbours by more than 2 % correlates at
|r| ≥ 0.9999 with PLINK 2's (sign free); a cluster of closer eigenvalues is compared as
a subspace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from smpc.protocols.gwas import pca
from smpc.protocols.gwas.genotypes import open_site
from tests.simulate import simulate_cohort

pytestmark = pytest.mark.timeout(300)

PLINK2 = "plink2"
K = 4


def _need_plink2() -> None:
    if shutil.which(PLINK2) is None:
        pytest.fail("plink2 is not installed (tests/run.sh installs the Debian package)")


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    """600 samples, 5 populations, 3 uneven sites, 1.5 % missing calls."""
    _need_plink2()
    return simulate_cohort(tmp_path_factory.mktemp("pca"), 600, 3000, 3, seed=5, populations=5)


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    """The same kind of cohort without missing calls: plain ``--pca`` applies."""
    _need_plink2()
    return simulate_cohort(
        tmp_path_factory.mktemp("pca-full"), 500, 2500, 3, seed=8, populations=5, missing_rate=0.0
    )


def plink2_pca(prefix: Path, out: Path, k: int, *modifiers: str) -> dict[str, np.ndarray]:
    """``plink2 --maf 0.01 --pca K biallelic-var-wts`` on a fileset: its three files."""
    subprocess.run(
        [PLINK2, "--bfile", str(prefix), "--maf", "0.01", "--pca", str(k), "biallelic-var-wts",
         *modifiers, "--out", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    vec = np.loadtxt(f"{out}.eigenvec", dtype=str, comments=None)
    var = np.loadtxt(f"{out}.eigenvec.var", dtype=str, comments=None)
    return {
        "eigenval": np.loadtxt(f"{out}.eigenval"),
        "header": vec[0],
        "iid": vec[1:, 1],
        "scores": vec[1:, 2:].astype(float),
        "var_header": var[0],
        "var_ids": var[1:, 1],
        "weights": var[1:, 4:].astype(float),
    }


def separated(values: np.ndarray, gap: float = 0.02) -> list[int]:
    """The components whose eigenvalue is more than ``gap`` relative from each neighbour's."""
    out = []
    for k, v in enumerate(values):
        left = k == 0 or (values[k - 1] - v) / v > gap
        right = k == len(values) - 1 or (v - values[k + 1]) / v > gap
        if left and right:
            out.append(k)
    return out


def assert_same_pca(
    ours_vals: np.ndarray, ours: np.ndarray, plink_vals: np.ndarray, plink: np.ndarray
) -> None:
    """Eigenvalues within 1e-4; separated PCs at |r| ≥ 0.9999; clusters as subspaces."""
    np.testing.assert_allclose(ours_vals, plink_vals, rtol=1e-4)
    alone = separated(plink_vals)
    for k in alone:
        r = abs(np.corrcoef(ours[:, k], plink[:, k])[0, 1])
        assert r >= 0.9999, f"PC{k + 1}: |r| = {r}"
    rest = [k for k in range(len(plink_vals)) if k not in alone]
    if rest:  # the near-degenerate components: the same span (cosines of principal angles)
        a, _ = np.linalg.qr(ours[:, rest])
        b, _ = np.linalg.qr(plink[:, rest])
        cosines = np.linalg.svd(a.T @ b, compute_uv=False)
        assert cosines.min() >= 0.9999, f"PCs {[k + 1 for k in rest]}: cosines {cosines}"


def federated_pca(prefix: Path, k: int, splits: list[int]) -> dict[str, np.ndarray]:
    """The federated computation on ``prefix``'s rows cut into sites at ``splits``."""
    with open_site(prefix) as site:
        g = np.concatenate([c for _, c in site.iter_chunks(None, 2000)], axis=1)
        founder = np.asarray(site.samples.founder, dtype=bool)
        iid = np.asarray(site.samples.iid).astype(str)
        chrom = np.asarray(site.variants.chrom).astype(str)
        snp = np.asarray(site.variants.snp).astype(str)
    parts = np.split(np.arange(len(g)), splits)
    counts = np.zeros((g.shape[1], 3, 2, 4))
    for code in range(3):  # founders' genotype counts, A1A1 / het / A2A2 (what sites share)
        counts[:, 0, 1, code] = ((g == 2 - code) & founder[:, None]).sum(axis=0)
    p = pca.founder_frequency(counts)
    use = (np.minimum(p, 1 - p) >= 0.01) & (chrom != "X")
    g, p = g[:, use], p[use]
    it = pca.SubspaceIteration(int(use.sum()), k, seed=1)
    while True:
        z = sum(pca.site_product(g[rows], p, it.basis) for rows in parts)
        if it.update(z) or it.rounds >= pca.MAX_ROUNDS:
            break
    theta, v = it.result()
    scores = np.concatenate([pca.site_scores(g[rows], p, v, theta) for rows in parts])
    return {
        "eigenval": pca.eigenvalues(theta, len(p)),
        "scores": scores,
        "iid": iid,
        "ids": snp[use],
        "weights": pca.variant_weights(v, p),
        "rounds": np.array(it.rounds),
    }


def test_structured_cohort_equals_plink2_meanimpute(structured, tmp_path):
    """With missing calls: PLINK 2's mean-imputing --pca (what --pca approx always does)."""
    plink = plink2_pca(structured.pooled, tmp_path / "plink", K, "meanimpute")
    sizes = list(structured.site_samples.values())
    ours = federated_pca(structured.pooled, K, list(np.cumsum(sizes)[:-1]))
    assert list(plink["iid"]) == list(ours["iid"])
    assert_same_pca(ours["eigenval"], ours["scores"], plink["eigenval"], plink["scores"])
    assert 2 <= ours["rounds"] < 100
    # the variant weights: the same variants, sqrt(M)·v per non-major allele, sign per PC
    assert list(plink["var_ids"]) == list(ours["ids"])
    for k in separated(plink["eigenval"]):
        sign = np.sign(ours["weights"][:, k] @ plink["weights"][:, k])
        np.testing.assert_allclose(sign * ours["weights"][:, k], plink["weights"][:, k],
                                   rtol=1e-3, atol=2e-3)  # fmt: skip


def test_complete_cohort_equals_plain_plink2_pca(complete, tmp_path):
    """Without missing calls PLINK 2's default (exact) --pca is the same computation."""
    plink = plink2_pca(complete.pooled, tmp_path / "plink", K)
    sizes = list(complete.site_samples.values())
    ours = federated_pca(complete.pooled, K, list(np.cumsum(sizes)[:-1]))
    assert_same_pca(ours["eigenval"], ours["scores"], plink["eigenval"], plink["scores"])


# --- through `smpc local`: the sites' .eigenvec files, the analyst's files ------------------


def _run(cohort, tmp_path: Path, spec: str) -> Path:
    from smpc.local import run_local

    (tmp_path / "spec.yaml").write_text(spec)
    sites = {s: cohort.prefixes[s] for s in cohort.sites}
    run_local(tmp_path / "spec.yaml", sites, tmp_path / "out", parties=3, threshold=1)
    return tmp_path / "out"


def _site_scores(cohort, out: Path, name: str) -> tuple[list[str], np.ndarray]:
    """The sites' .eigenvec files together, in site order (POOLED's sample order)."""
    iids, rows = [], []
    for site in cohort.sites:
        table = np.loadtxt(out / "sites" / site / f"{name}.eigenvec", dtype=str, comments=None)
        assert list(table[0][:2]) == ["#FID", "IID"]
        iids += list(table[1:, 1])
        rows.append(table[1:, 2:].astype(float))
    return iids, np.concatenate(rows)


@pytest.mark.slow
def test_pca_through_smpc_local_equals_plink2(structured, tmp_path):
    """``tests: [pca]`` alone: the analyst's .eigenval and .eigenvec.var, each site's
    .eigenvec of its own samples, against plink2 --pca 4 meanimpute on POOLED."""
    out = _run(
        structured, tmp_path, f"name: pc\nprotocol: gwas\ntests: [pca]\npca: {{components: {K}}}\n"
    )
    plink = plink2_pca(structured.pooled, tmp_path / "plink", K, "meanimpute")
    ours_vals = np.loadtxt(out / "pc.eigenval")
    iids, scores = _site_scores(structured, out, "pc")
    assert iids == list(plink["iid"])
    assert_same_pca(ours_vals, scores, plink["eigenval"], plink["scores"])
    var = np.loadtxt(out / "pc.eigenvec.var", dtype=str, comments=None)
    assert list(var[0]) == list(plink["var_header"])
    assert list(var[1:, 1]) == list(plink["var_ids"])
    result = json.loads((out / "result.json").read_text())
    assert result["pca"]["converged"] and result["pca"]["rounds"] >= 2
    for site in structured.sites:
        assert (out / "sites" / site / "pc.pca.png").stat().st_size > 0
    assert (out / "pc.scree.png").stat().st_size > 0
