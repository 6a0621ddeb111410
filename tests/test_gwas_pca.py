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

from smpc.protocols.gwas import pca, pcarounds
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
def small(tmp_path_factory):
    """A smaller structured cohort for the association tests with PC covariates: the
    secure regressions of ``reveal: statistics`` with six covariates take the longest."""
    _need_plink2()
    return simulate_cohort(tmp_path_factory.mktemp("pca-small"), 300, 300, 3, seed=6, populations=5)


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


def _covariate_file(cohort, out: Path, name: str, path: Path) -> Path:
    """POOLED.cov's AGE and SEX2 with the PCs the sites wrote, as PLINK reads covariates
    (-9, missing, for a sample ``mind`` dropped: no site wrote a score for it)."""
    iids, scores = _site_scores(cohort, out, name)
    rows = [line.split() for line in Path(f"{cohort.pooled}.cov").read_text().splitlines()]
    by_iid = dict(zip(iids, scores, strict=True))
    pcs = [f"PC{k + 1}" for k in range(scores.shape[1])]
    lines = [" ".join(rows[0] + pcs)]
    for row in rows[1:]:
        values = by_iid.get(row[1])
        printed = ["-9"] * len(pcs) if values is None else [f"{x:.6g}" for x in values]
        lines.append(" ".join(row + printed))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.timeout(900)  # reveal: statistics: secure regressions with 8 columns in MPyC
@pytest.mark.parametrize(  # every pair of (test, reveal, mind) values: a covering array
    ("test", "reveal", "mind"),
    [
        ("linear", "aggregates", "0.02"),
        ("linear", "statistics", None),
        ("logistic", "aggregates", None),
        ("logistic", "statistics", "0.02"),
    ],
)
def test_pcs_as_covariates_equal_plink_with_the_sites_pcs(small, tmp_path, test, reveal, mind):
    """``covar: [AGE, SEX2, PC1..PC4]``: PLINK 1.9 on POOLED with a covariate file holding
    AGE, SEX2 and the PCs the sites wrote (the downstream is exact given the PCs); with
    ``filters: {mind}`` the PCA and the test both leave out the samples it drops."""
    from tests.test_gwas_local import PLINK, assert_same_table

    pheno = "pheno: QT\n" if test == "linear" else ""
    covar = "[AGE, SEX2, PC1, PC2, PC3, PC4]"
    filters = "" if mind is None else f"filters: {{mind: {mind}}}\n"
    structured = small
    out = _run(
        structured, tmp_path,
        f"name: cv\nprotocol: gwas\ntests: [{test}]\n{pheno}covar: {covar}\n"
        f"pca: {{components: {K}}}\nreveal: {reveal}\n{filters}",
    )  # fmt: skip
    mind_flags = [] if mind is None else ["--mind", mind]
    if test == "linear" and reveal == "aggregates":  # the PCA itself, as plink2 computes it
        plink = plink2_pca(structured.pooled, tmp_path / "plink2", K, "meanimpute", *mind_flags)
        iids, scores = _site_scores(structured, out, "cv")
        assert iids == list(plink["iid"])
        assert_same_pca(np.loadtxt(out / "cv.eigenval"), scores, plink["eigenval"], plink["scores"])
    if mind is not None:  # the filter dropped some samples, not all
        assert 0 < len(_site_scores(structured, out, "cv")[0]) < sum(small.site_samples.values())
    cov = _covariate_file(structured, out, "cv", tmp_path / "pooled.cov")
    pooled = structured.pooled
    flags = ["--covar", str(cov), "--covar-name", "AGE,SEX2,PC1,PC2,PC3,PC4", *mind_flags]
    if test == "linear":
        flags += ["--pheno", f"{pooled}.pheno", "--pheno-name", "QT"]
    subprocess.run(
        [PLINK, "--bfile", str(pooled), "--allow-no-sex", *flags, f"--{test}", "hide-covar",
         "--out", str(tmp_path / "plink")],
        check=True, capture_output=True,
    )  # fmt: skip
    ext = f"assoc.{test}"
    assert_same_table(
        out / f"cv.{ext}", tmp_path / f"plink.{ext}", single_precision=test == "logistic"
    )
    assert json.loads((out / "result.json").read_text())["reveal"] == reveal


def _numbers(value) -> np.ndarray:
    """Every number of a JSON-like value or array, flattened to float64."""
    if isinstance(value, dict):
        parts = [_numbers(v) for v in value.values()]
        return np.concatenate(parts) if parts else np.zeros(0)
    if isinstance(value, list | tuple):
        parts = [_numbers(v) for v in value]
        return np.concatenate(parts) if parts else np.zeros(0)
    array = np.asarray(value)
    if array.dtype.kind in "iuf":
        return array.astype(np.float64).reshape(-1)
    if array.dtype == object:
        try:
            return array.astype(np.float64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            return np.zeros(0)
    return np.zeros(0)


class BrokerTap:
    """Every body that crosses the broker during a run, recorded by a subscriber to the
    whole federation's tree (the test grants the analyst's certificate ``topic read
    smpc/#`` in Mosquitto's ACL): what an observer at the broker sees."""

    def __init__(self, kit, federation) -> None:
        import threading

        self.kit, self.federation = kit, federation
        self.bodies: list[tuple[str, bytes]] = []
        self._stop, self._ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        import asyncio

        asyncio.run(self._run())

    async def _run(self) -> None:
        import asyncio

        from smpc.net.connection import Connection

        async with Connection.from_kit(self.kit, self.federation, suffix="tap") as conn:
            await conn.subscribe(f"smpc/{self.federation.name}/#")
            self._ready.set()
            messages, reading = aiter(conn.messages()), None
            while not self._stop.is_set():
                reading = reading or asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({reading}, timeout=0.2)
                if done:
                    message, reading = reading.result(), None
                    self.bodies.append((message.topic, bytes(message.body)))
            if reading is not None:
                reading.cancel()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(15), "the broker tap did not connect"

    def stop(self) -> None:
        import time

        time.sleep(1.0)  # what is in flight arrives
        self._stop.set()
        self._thread.join(10)


def _holds_many(where: str, data: bytes, targets: np.ndarray, dtype: str) -> None:
    """Fewer than 10 % of ``targets`` (as ``dtype``) appear in ``data`` at any offset: a
    leak holds (nearly) every value, ciphertext a chance few."""
    wanted = np.unique(targets.astype(dtype))
    size = np.dtype(dtype).itemsize
    found = np.zeros(wanted.size, dtype=bool)
    for offset in range(size):
        count = (len(data) - offset) // size
        if count <= 0:
            continue
        words = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        found |= np.isin(wanted.view(f"u{size}"), words.view(f"u{size}"))
    assert found.mean() < 0.1, f"{where}: holds {found.sum()} of {wanted.size} scores ({dtype})"


@pytest.mark.slow
def test_pca_through_smpc_local_equals_plink2_and_scores_stay_at_the_sites(
    structured, tmp_path, monkeypatch
):
    """``tests: [pca]`` alone through ``smpc local``: the analyst's .eigenval and
    .eigenvec.var and each site's .eigenvec of its own samples against plink2 --pca 4
    meanimpute on POOLED. Meanwhile record what the analyst receives (every job's opened
    outcome), every body that crossed the broker (a tap subscribed to the federation's
    whole tree) and what the parties stored: no array is per sample, no score is in any
    of it as float32, float64 or the digits the sites print."""
    import re
    import sqlite3

    import smpc.broker.mosquitto
    import smpc.local
    from smpc.pki.directory import load_directory
    from smpc.protocols.gwas.spec import GwasPayload
    from smpc.wire.messages import MessageError, verify_job

    runs, taps = [], []
    real = smpc.local.run_spec
    acl = smpc.broker.mosquitto.mosquitto_acl

    def acl_with_tap(federation):
        return acl(federation) + "\n# the test's broker tap\nuser analyst\ntopic read smpc/#\n"

    async def recording(analyst, federation, *args, **kwargs):
        taps.append(BrokerTap(analyst, federation))
        taps[-1].start()
        try:
            run = await real(analyst, federation, *args, **kwargs)
        finally:
            taps[-1].stop()
        runs.append(run)
        return run

    monkeypatch.setattr(smpc.broker.mosquitto, "mosquitto_acl", acl_with_tap)
    monkeypatch.setattr(smpc.local, "run_spec", recording)
    (tmp_path / "spec.yaml").write_text(
        f"name: pc\nprotocol: gwas\ntests: [pca]\npca: {{components: {K}}}\n"
    )
    sites = {s: structured.prefixes[s] for s in structured.sites}
    work = tmp_path / "work"
    smpc.local.run_local(
        tmp_path / "spec.yaml", sites, tmp_path / "out", parties=3, threshold=1, workdir=work
    )
    out = tmp_path / "out"
    plink = plink2_pca(structured.pooled, tmp_path / "plink", K, "meanimpute")
    iids, site_scores = _site_scores(structured, out, "pc")
    assert iids == list(plink["iid"])
    vals = np.loadtxt(out / "pc.eigenval")
    assert_same_pca(vals, site_scores, plink["eigenval"], plink["scores"])
    var = np.loadtxt(out / "pc.eigenvec.var", dtype=str, comments=None)
    assert list(var[0]) == list(plink["var_header"])
    assert list(var[1:, 1]) == list(plink["var_ids"])
    for k in separated(plink["eigenval"]):  # sqrt(M)·v per non-major allele, sign per PC
        ours = var[1:, 4 + k].astype(float)
        sign = np.sign(ours @ plink["weights"][:, k])
        np.testing.assert_allclose(sign * ours, plink["weights"][:, k], rtol=1e-3, atol=2e-3)
    result = json.loads((out / "result.json").read_text())
    assert result["pca"]["converged"] and result["pca"]["rounds"] >= 2
    assert result["sites"] == structured.sites
    for site in structured.sites:
        assert (out / "sites" / site / "pc.pca.png").stat().st_size > 0
    assert (out / "pc.scree.png").stat().st_size > 0

    (run,) = runs
    # the exact scores of every sample, from the final model the last job carried
    final = GwasPayload.model_validate(run.outcomes[-1].job.payload).arrays()
    assert final is not None
    exact = []
    for prefix in sites.values():
        with open_site(prefix) as fileset:
            exact.append(pcarounds.scores(fileset, prefix, final))
    scores = np.concatenate(exact).reshape(-1)
    sizes = set(structured.site_samples.values()) | {sum(structured.site_samples.values())}

    def assert_not_per_sample(where: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        assert not sizes & set(array.shape), f"{where}: shape {array.shape} is per sample"
        values = _numbers(array)
        values = values[np.isfinite(values) & (np.abs(values) > 1e-3)]
        if values.size:
            # float32 precision; a leak holds (nearly) every score, chance a few of them
            found = np.zeros(scores.size, dtype=bool)
            for part in np.array_split(values, max(1, values.size // 20000)):
                gap = np.abs(part[:, None] - scores[None, :])
                found |= (gap <= 1e-7 * np.abs(scores)[None, :]).any(axis=0)
            assert found.mean() < 0.1, f"{where}: holds {found.sum()} of the samples' scores"

    def assert_job_not_per_sample(where: str, job) -> None:
        payload = GwasPayload.model_validate(job.payload)
        for model in (payload.arrays(), payload.pca_model()):
            for name, value in (model or {}).items():
                if value.dtype.kind != "S":
                    assert_not_per_sample(f"{where} {name}", value)

    for outcome in run.outcomes:  # the analyst's inputs
        for name, value in outcome.opened.items():
            assert_not_per_sample(f"{outcome.job.id} {name}", value)
    directory = load_directory(work / "keys" / "public")
    messages = 0
    for store in (work / "store").glob("party*/store.sqlite"):
        with sqlite3.connect(store) as db:
            for (message,) in db.execute("SELECT message FROM jobs"):
                _, job = verify_job(message, directory)
                assert_job_not_per_sample(f"job {job.id}", job)
                messages += 1
            for (header,) in db.execute("SELECT header FROM shares"):
                assert not sizes & set(json.loads(header).get("shape", [])), header
    assert messages >= 3 * 4  # every party, every job: frequencies, rounds, scores

    # what crossed the broker: job messages read as any observer can, every body raw
    (tap,) = taps
    topics = {topic.split("/")[2] for topic, _ in tap.bodies}
    assert {"jobs", "up", "ack", "status", "result"} <= topics, topics
    printed = set()
    for site in structured.sites:
        table = np.loadtxt(out / "sites" / site / "pc.eigenvec", dtype=str, comments=None)
        printed |= {t for t in table[1:, 2:].reshape(-1) if len(t.lstrip("-")) >= 6}
    token = re.compile(rb"-?[0-9]+\.[0-9]+(?:e[-+][0-9]+)?")
    jobs = 0
    for topic, body in tap.bodies:
        _holds_many(topic, body, scores, "<f8")
        _holds_many(topic, body, scores, "<f4")
        seen = {t.decode() for t in token.findall(body)} & printed
        assert len(seen) < 0.1 * len(printed), f"{topic}: prints {len(seen)} scores"
        if "/jobs/" in topic and body:
            try:
                _, job = verify_job(body, directory)
            except MessageError:
                continue
            assert_job_not_per_sample(f"broker {topic}", job)
            jobs += 1
    assert jobs >= result["pca"]["rounds"] + 2, jobs


@pytest.mark.slow
def test_pca_after_mind_equals_plink2_mind_pca(structured, tmp_path):
    """``filters: {mind}`` with ``tests: [pca]``: every site leaves out the samples the
    filter drops (over the variants every site has) before the frequencies, the rounds and
    the scores, as ``plink2 --mind 0.016 --pca`` drops them before computing anything."""
    out = _run(
        structured, tmp_path,
        f"name: pm\nprotocol: gwas\ntests: [pca]\nfilters: {{mind: 0.016}}\n"
        f"pca: {{components: {K}}}\n",
    )  # fmt: skip
    plink = plink2_pca(structured.pooled, tmp_path / "plink2", K, "meanimpute", "--mind", "0.016")
    iids, scores = _site_scores(structured, out, "pm")
    assert iids == list(plink["iid"])
    assert 0 < len(iids) < 0.9 * sum(structured.site_samples.values())
    assert_same_pca(np.loadtxt(out / "pm.eigenval"), scores, plink["eigenval"], plink["scores"])
    var = np.loadtxt(out / "pm.eigenvec.var", dtype=str, comments=None)
    assert list(var[1:, 1]) == list(plink["var_ids"])  # the maf bound over the kept founders


def test_pca_spec_defaults_and_refusals():
    from smpc.errors import UserError
    from smpc.protocols.registry import parse_spec

    only = parse_spec({"name": "p", "protocol": "gwas", "tests": ["pca"]})
    assert only.pca is not None and only.pca.components == 10 and only.pca.maf == 0.01
    given = parse_spec(
        {"name": "p", "protocol": "gwas", "tests": ["linear"], "pheno": "QT",
         "covar": ["AGE", "PC1", "PC2"], "pca": {"components": 2}}
    )  # fmt: skip
    assert "pca" in given.tests and given.principal_components() == ["PC1", "PC2"]
    assert parse_spec(given.to_dict()) == given  # what a job carries parses back
    assert parse_spec({"name": "p", "protocol": "gwas"}).pca is None
    with pytest.raises(UserError, match="PC3: pca computes PC1 to PC2"):
        parse_spec(
            {"name": "p", "protocol": "gwas", "tests": ["linear"], "covar": ["PC3"],
             "pca": {"components": 2}}
        )  # fmt: skip
    with_mind = parse_spec({"name": "p", "protocol": "gwas", "pca": {}, "filters": {"mind": 0.1}})
    assert with_mind.filters.mind == 0.1 and with_mind.pca is not None
    # a PCA job must carry mind's variants exactly when its spec filters on mind
    listed = {"mind": np.array([b"rs1"])}
    with pytest.raises(UserError, match="disagree"):
        pcarounds._kept(with_mind, None, {"snp": np.array([b"rs1"])})
    with pytest.raises(UserError, match="disagree"):
        pcarounds._kept(only, None, listed)
    with pytest.raises(UserError, match="components"):
        parse_spec({"name": "p", "protocol": "gwas", "pca": {"components": 0}})
