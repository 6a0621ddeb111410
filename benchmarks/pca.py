"""Federated PCA of 10,000 samples x 50,000 variants from 5 sites, K=10, vs plink2 --pca.

One ``smpc local`` run (``tests: [pca]``, ``pca: {components: 10}``; the machinery of
``benchmarks/gwas.py``: keys, broker, three party daemons, one ``smpc site serve`` per
site, the analyst) from start to the written ``.eigenval``/``.eigenvec.var`` and every
site's ``.eigenvec``. Baselines in the same run on the pooled fileset:
``plink2 --maf 0.01 --pca 10 meanimpute biallelic-var-wts`` (the exact computation this
one equals) and ``plink2 --maf 0.01 --pca approx 10``.

The cohort is a Balding–Nichols model (cheap, with real structure): K + 1 = 11
populations drawn from ancestral frequencies U(0.05, 0.95) with F_ST = 0.01, samples
assigned to populations with an uneven mix per site, 1 % missing calls; written with
bed-reader as POOLED and split into the sites with ``plink1.9 --keep --make-bed``. It is
cached in ``--data DIR``.

Figures (last line, JSON): ``seconds`` (smpc local), ``plink2_seconds``,
``plink2_approx_seconds``, ``ratio_vs_plink2`` (and ``ratio_vs_plink2_approx``),
``peak_rss_mb`` (the largest process of the run), ``iterations`` (subspace-iteration
rounds), ``worst_eigenvalue_rel`` (against plink2 --pca meanimpute) and
``worst_correlation_deficit``: max over the PCs separated by more than 2 % from their
neighbours of 1 − |r| between the sites' pooled scores and plink2's.

``--no-exact`` skips plink2's exact run (tens of minutes at the full size on a loaded
2-core machine) and compares with ``--pca approx`` instead (close, not equal).

Run: ``python benchmarks/pca.py [--quick] [--no-exact]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gwas import SITE_NAMES, _plink, _write_rows, smpc_local

PLINK2 = "plink2"
CHUNK = 2000


def generate(
    data: Path, snps: int, samples: int, sites: int, k: int, seed: int = 1
) -> dict[str, Any]:
    """Write POOLED and the sites' filesets into ``data`` unless they are there already."""
    meta_path = data / "cohort.json"
    wanted = {"snps": snps, "samples": samples, "sites": sites, "k": k, "seed": seed}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {key: meta.get(key) for key in wanted} == wanted:
            return meta
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    populations, fst = k + 1, 0.01
    # uneven mixes: site s draws population j with weight proportional to (1 + s·j) % 5 + 1
    weights = np.linspace(2.0, 1.0, sites)
    bounds = np.round(np.concatenate([[0], np.cumsum(weights)]) / weights.sum() * samples)
    bounds = bounds.astype(int)
    pop = np.empty(samples, dtype=np.int64)
    for s in range(sites):
        mix = (1 + s * np.arange(populations)) % 5 + 1.0
        pop[bounds[s] : bounds[s + 1]] = rng.choice(
            populations, bounds[s + 1] - bounds[s], p=mix / mix.sum()
        )
    ancestral = rng.uniform(0.05, 0.95, snps)
    g = np.empty((samples, snps), dtype=np.int8, order="F")
    for lo in range(0, snps, CHUNK):
        hi = min(lo + CHUNK, snps)
        a = ancestral[lo:hi]
        freq = rng.beta(a * (1 - fst) / fst, (1 - a) * (1 - fst) / fst, (populations, hi - lo))
        block = rng.binomial(2, freq[pop]).astype(np.int8)
        block[rng.random((samples, hi - lo), dtype=np.float32) < 0.01] = -127
        g[:, lo:hi] = block
    fid = np.char.add("F", np.arange(1, samples + 1).astype(str))
    iid = np.char.add("I", np.arange(1, samples + 1).astype(str))
    sex = rng.integers(1, 3, samples)
    fam = np.column_stack([fid, iid, np.zeros(samples, int), np.zeros(samples, int), sex,
                           rng.integers(1, 3, samples)])  # fmt: skip
    chrom = np.sort(rng.integers(1, 23, snps))
    bp = np.empty(snps, dtype=np.int64)
    for c in range(1, 23):
        at = np.flatnonzero(chrom == c)
        bp[at] = np.sort(rng.choice(np.arange(10_000, 10_000 + 200 * snps), len(at), False))
    snp = np.char.add("rs", np.arange(1, snps + 1).astype(str))
    from bed_reader import to_bed

    pooled = data / "POOLED"
    to_bed(pooled.with_suffix(".bed"), g, count_A1=True, properties={"sid": snp})
    del g
    _write_rows(pooled.with_suffix(".fam"), fam)
    _write_rows(
        pooled.with_suffix(".bim"),
        np.column_stack([chrom, snp, np.zeros(snps, int), bp, np.full(snps, "A"),
                         np.full(snps, "G")]),
    )  # fmt: skip
    site_samples = {}
    for s, name in enumerate(SITE_NAMES[:sites]):
        rows = np.arange(bounds[s], bounds[s + 1])
        keep = data / f"{name}.keep"
        _write_rows(keep, np.column_stack([fid[rows], iid[rows]]))
        _plink("--bfile", str(pooled), "--allow-no-sex", "--keep", str(keep), "--make-bed",
               "--out", str(data / name))  # fmt: skip
        for ext in (".log", ".nosex", ".keep"):
            (data / f"{name}{ext}").unlink(missing_ok=True)
        site_samples[name] = len(rows)
    meta = {**wanted, "site_samples": site_samples,
            "generation_seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def plink2(pooled: Path, out: Path, k: int, *modifiers: str) -> float:
    """One plink2 --pca run on POOLED; its wall-clock seconds."""
    start = time.perf_counter()
    run = subprocess.run(
        [PLINK2, "--bfile", str(pooled), "--maf", "0.01", "--pca", str(k), *modifiers,
         "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(f"plink2 --pca failed:\n{run.stdout[-3000:]}")
    return time.perf_counter() - start


def _scores(path: Path) -> tuple[list[str], np.ndarray]:
    table = np.loadtxt(path, dtype=str, comments=None, ndmin=2)
    return list(table[1:, 1]), table[1:, 2:].astype(float)


def compare(out: Path, sites: list[str], name: str, reference: Path) -> dict[str, float]:
    """Eigenvalues and the separated PCs' score correlations against plink2's files."""
    theirs_vals = np.loadtxt(f"{reference}.eigenval")
    ours_vals = np.loadtxt(out / f"{name}.eigenval")
    iids, rows = [], []
    for site in sites:
        i, r = _scores(out / "sites" / site / f"{name}.eigenvec")
        iids += i
        rows.append(r)
    ours = dict(zip(iids, np.concatenate(rows), strict=True))
    plink_iid, plink_scores = _scores(Path(f"{reference}.eigenvec"))
    mine = np.array([ours[i] for i in plink_iid])
    deficits = []
    for j, v in enumerate(theirs_vals):
        left = j == 0 or (theirs_vals[j - 1] - v) / v > 0.02
        right = j == len(theirs_vals) - 1 or (v - theirs_vals[j + 1]) / v > 0.02
        if left and right:
            deficits.append(1.0 - abs(np.corrcoef(mine[:, j], plink_scores[:, j])[0, 1]))
    return {
        "worst_eigenvalue_rel": float(np.max(np.abs(ours_vals / theirs_vals - 1.0))),
        "worst_correlation_deficit": float(max(deficits)) if deficits else float("nan"),
        "separated_pcs": len(deficits),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 x 3,000 over 3 sites, K=4")
    parser.add_argument("--data", type=Path, help="cohort cache folder")
    parser.add_argument("--variants", type=int, help="override the number of variants")
    parser.add_argument(
        "--no-exact", action="store_true",
        help="skip plink2's exact --pca (minutes at the full size); compare with approx",
    )  # fmt: skip
    args = parser.parse_args(argv)
    samples, snps, sites, k = (1000, 3000, 3, 4) if args.quick else (10_000, 50_000, 5, 10)
    snps = args.variants or snps
    for tool in (PLINK2, "plink1.9"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (tests/run.sh installs the Debian package)")
    data = args.data or Path(tempfile.gettempdir()) / f"smpc-pca-bench-{samples}x{snps}"
    print(f"{snps:,} variants x {samples:,} samples, {sites} sites, K={k}", flush=True)
    meta = generate(data, snps, samples, sites, k)
    print(f"cohort in {data} (generated in {meta['generation_seconds']} s)", flush=True)
    root = Path(tempfile.mkdtemp(prefix="smpc-pca-bench-"))
    try:
        reference = root / "plink2"
        plink_seconds = float("nan")
        if not args.no_exact:
            plink_seconds = plink2(data / "POOLED", reference, k, "meanimpute")
            print(f"plink2 --pca {k} meanimpute: {plink_seconds:.1f} s", flush=True)
        approx_seconds = plink2(data / "POOLED", root / "approx", k, "approx")
        print(f"plink2 --pca approx {k}: {approx_seconds:.1f} s", flush=True)
        if args.no_exact:
            reference = root / "approx"
        names = list(meta["site_samples"])
        spec = f"name: pcs\nprotocol: gwas\ntests: [pca]\npca: {{components: {k}}}\n"
        report = smpc_local("pca", spec, {s: data / s for s in names}, root)
        out = Path(report["out"])
        result = json.loads((out / "result.json").read_text())
        print(f"smpc local: {report['seconds']:.1f} s, {result['pca']['rounds']} rounds, "
              f"phases {report['phases']}", flush=True)  # fmt: skip
        figures = compare(out, names, "pcs", reference)
        figures["reference"] = "approx" if args.no_exact else "meanimpute"
        print(f"against plink2: {figures}", flush=True)
        print(json.dumps({
            "seconds": round(report["seconds"], 2),
            "plink2_seconds": round(plink_seconds, 2),
            "plink2_approx_seconds": round(approx_seconds, 2),
            "ratio_vs_plink2": round(report["seconds"] / plink_seconds, 3),
            "ratio_vs_plink2_approx": round(report["seconds"] / approx_seconds, 3),
            "peak_rss_mb": round(report["peak_rss_mb"], 1),
            "rss": report["rss"],
            "iterations": result["pca"]["rounds"],
            "converged": result["pca"]["converged"],
            **figures,
            "samples": samples, "variants": snps, "sites": sites, "components": k,
        }))  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
