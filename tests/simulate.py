"""Simulated multi-site GWAS cohorts whose pooled PLINK 1.9 output is the test oracle.

:func:`simulate_cohort` draws genotypes from a coalescent (msprime: a few independent
chromosomes, Ne = 10,000, so allele frequencies and LD look like real data), adds a
case/control status driven by a few causal SNPs, a quantitative trait ``QT``, a
case/control column ``CC`` of the ``.pheno`` files (2 where QT > 0, else 1, ``-9`` where QT
is missing) and the covariates ``AGE`` and ``SEX2``, and splits the samples unevenly into
sites the way real sites would hold them:

- each site's fileset is written by its own ``plink1.9 --make-bed``, so A1 is the site's
  local minor allele, and a variant monomorphic at a site has the allele ``0`` (as PLINK
  writes after importing text/VCF data where the other allele never occurs);
- the second site's variants are stored in a shuffled order (rewritten after plink,
  which would sort them, keeping its alleles);
- the first site is monomorphic for two variants (its .bim has ``0 X``);
- exclusion cases: a few chrX variants, variants missing at some sites, alleles
  relabelled at one site (allele mismatch), alleles complemented at one site (strand
  flip) and a duplicated variant row (duplicate ID);
- ~1.5% missing calls, a few missing phenotypes (``-9``/``NA``) and covariates.

``POOLED`` is ``plink1.9 --merge-list`` of the sites in site order (``--indiv-sort none``)
restricted to the variants that should survive alignment; it is what tests run PLINK on.
``cohort.json`` records the seed, the sites and the expected exclusions.

Command line (the bundled ``smpc/data/gwas`` cohort)::

    python -m tests.simulate OUT_DIR --samples 600 --snps 1000 --sites 3 --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_SITES", "SimulatedCohort", "main", "simulate_cohort"]

DEFAULT_SITES = ("oslo", "bergen", "tromso", "stavanger", "trondheim")
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


@dataclass
class SimulatedCohort:
    """Where a simulated cohort was written and what the alignment must find."""

    out_dir: Path
    sites: list[str]
    prefixes: dict[str, Path]
    pooled: Path
    excluded: dict[str, str]
    """Expected exclusions: variant ID -> kind (``non-autosomal``, ``absent``,
    ``allele mismatch``, ``strand flip``, ``duplicate``)."""
    causal: list[str] = field(default_factory=list)
    site_samples: dict[str, int] = field(default_factory=dict)


def _coalescent_chromosome(
    n_samples: int, n_snps: int, seed: int, min_maf: float, populations: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(genotypes (n, s) derived-allele counts, positions, ancestral, derived)``.

    ``populations`` > 1: an island model (Ne 10,000 each, migration 2e-5 per generation),
    samples split as evenly as possible and listed population by population."""
    import msprime

    length = max(5e5, n_snps * 1500.0)
    if populations > 1:
        demography = msprime.Demography.island_model([10_000] * populations, 2e-5)
        sizes = np.diff(np.linspace(0, n_samples, populations + 1).round().astype(int))
        ancestry: dict = {
            "samples": {f"pop_{k}": int(c) for k, c in enumerate(sizes)},
            "demography": demography,
        }
    else:
        ancestry = {"samples": n_samples, "population_size": 10_000}
    while True:
        ts = msprime.sim_ancestry(
            **ancestry,
            ploidy=2,
            sequence_length=length,
            recombination_rate=1e-8,
            random_seed=seed,
        )
        mts = msprime.sim_mutations(ts, rate=2e-8, random_seed=seed + 1)
        sites, muts = mts.tables.sites, mts.tables.mutations
        single = np.bincount(muts.site, minlength=sites.num_rows) == 1
        hap = mts.genotype_matrix()  # (sites, 2n) allele index per haplotype
        g = (hap[:, 0::2] + hap[:, 1::2]).T.astype(np.int8)  # individuals' nodes are paired
        freq = g.mean(axis=0) / 2.0
        ok = single & (np.minimum(freq, 1.0 - freq) >= min_maf)
        if ok.sum() >= n_snps:
            break
        length *= 2.0
    chosen = np.sort(np.random.default_rng(seed).choice(np.flatnonzero(ok), n_snps, False))
    anc = np.array(list(sites.ancestral_state.tobytes().decode()))  # single-base states
    der_all = np.array(list(muts.derived_state.tobytes().decode()))
    der = np.empty(sites.num_rows, dtype="<U1")
    der[muts.site] = der_all
    pos = sites.position.astype(np.int64) + 1
    return g[:, chosen], pos[chosen], anc[chosen], der[chosen]


def _plink(plink: str, *args: str) -> None:
    run = subprocess.run([plink, *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{plink} {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}")


def _write_raw_bed(path: Path, g: np.ndarray, fam: np.ndarray, bim: dict[str, np.ndarray]) -> None:
    """A .bed/.bim/.fam with A1 = ``a1`` (``g`` its copies), ``0`` for an absent allele."""
    from bed_reader import to_bed

    a1, a2 = bim["a1"].astype(object), bim["a2"].astype(object)
    val = g.copy()
    called = val >= 0
    n1 = np.where(called, val, 0).sum(axis=0)  # copies of a1 seen
    n2 = np.where(called, 2 - val, 0).sum(axis=0)  # copies of a2 seen
    only1 = (n2 == 0) & (n1 > 0)  # only a1 seen: it becomes A2 and A1 is 0
    a2 = np.where(only1, a1, a2)
    a2[(n1 == 0) & (n2 == 0)] = "0"  # no calls at all: 0 0
    a1 = np.where(n2 == 0, "0", np.where(n1 == 0, "0", a1))
    val[:, only1] = 2 - val[:, only1]
    val = np.where(called, val, -127).astype(np.int8)
    to_bed(path.with_suffix(".bed"), val, count_A1=True, properties={"sid": bim["snp"]})
    _write_rows(path.with_suffix(".fam"), fam)
    _write_rows(
        path.with_suffix(".bim"),
        np.column_stack(
            [bim["chrom"], bim["snp"], np.zeros(len(a1), dtype=int), bim["bp"], a1, a2]
        ),
    )


def _write_rows(path: Path, rows: np.ndarray, header: Sequence[str] | None = None) -> None:
    lines = ([" ".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def simulate_cohort(
    out_dir: str | os.PathLike[str],
    n_samples: int = 1000,
    n_snps: int = 2000,
    n_sites: int = 3,
    seed: int = 1,
    *,
    site_names: Sequence[str] | None = None,
    n_chrom: int = 3,
    missing_rate: float = 0.015,
    min_maf: float = 0.005,
    plink: str = "plink1.9",
    populations: int = 1,
) -> SimulatedCohort:
    """Simulate a cohort, write one PLINK fileset per site plus ``POOLED``; see the module doc.

    ``n_snps`` autosomal SNPs over ``n_chrom`` chromosomes (plus 5 chrX variants), ids
    ``rs<chrom>_<bp>``; samples ``F<i>``/``I<i>``. A few seconds for 1,000 × 2,000.
    ``populations`` > 1 gives the cohort ancestry structure (an island model): samples
    come population by population, half of them then shuffled, so the sites (contiguous
    blocks of samples) hold uneven ancestry mixes.
    """
    if n_sites < 2:
        raise ValueError("a multi-site cohort needs at least 2 sites")
    names = list(site_names) if site_names else list(DEFAULT_SITES[:n_sites])
    if len(names) != n_sites:
        raise ValueError(f"{len(names)} site names for {n_sites} sites")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    # --- genotypes: autosomes from the coalescent, a few chrX variants -----------------
    per_chrom = np.diff(np.linspace(0, n_snps, n_chrom + 1).round().astype(int))
    parts = [
        _coalescent_chromosome(n_samples, int(k), seed * 1000 + 10 * c, min_maf, populations)
        for c, k in enumerate(per_chrom, start=1)
    ]
    g = np.concatenate([p[0] for p in parts], axis=1)
    if populations > 1:  # uneven ancestry mixes: shuffle half of the samples among themselves
        order = np.arange(n_samples)
        moved = rng.choice(n_samples, n_samples // 2, replace=False)
        order[np.sort(moved)] = moved
        g = g[order]
    chrom = np.concatenate([np.full(len(p[1]), str(c)) for c, p in enumerate(parts, start=1)])
    bp = np.concatenate([p[1] for p in parts])
    anc = np.concatenate([p[2] for p in parts])
    der = np.concatenate([p[3] for p in parts])
    sex2 = rng.integers(0, 2, n_samples)  # 1 = male
    n_x = 5
    x_freq = rng.uniform(0.1, 0.5, n_x)
    x_g = rng.binomial(2, x_freq, (n_samples, n_x)).astype(np.int8)
    male = sex2 == 1
    x_g[male] = 2 * rng.binomial(1, x_freq, (int(male.sum()), n_x))  # hemizygous males
    g = np.concatenate([g, x_g], axis=1)
    chrom = np.concatenate([chrom, np.full(n_x, "X")])
    bp = np.concatenate([bp, np.sort(rng.choice(np.arange(1_000_000, 2_000_000), n_x, False))])
    anc = np.concatenate([anc, np.array(["A", "C", "G", "A", "C"][:n_x])])
    der = np.concatenate([der, np.array(["G", "T", "A", "C", "A"][:n_x])])
    snp = np.char.add(np.char.add(np.char.add("rs", chrom), "_"), bp.astype(str))
    n_var = g.shape[1]
    auto = np.flatnonzero(chrom != "X")

    # --- phenotypes and covariates ----------------------------------------------------
    freq = g[:, auto].mean(axis=0) / 2.0
    common = auto[np.minimum(freq, 1 - freq) > 0.15]
    causal = np.sort(rng.choice(common, 5, replace=False))
    centred = g[:, causal] - g[:, causal].mean(axis=0)
    risk = centred @ np.array([0.8, -0.6, 0.5, 0.7, -0.5])
    age = np.round(rng.normal(55.0, 10.0, n_samples), 1)
    case = rng.random(n_samples) < 1.0 / (1.0 + np.exp(-(risk - 0.3)))
    status = np.where(case, 2, 1)
    status[rng.choice(n_samples, max(2, n_samples // 100), replace=False)] = -9
    qt = 0.6 * risk + 0.03 * (age - 55.0) + 0.4 * sex2 + rng.normal(0.0, 1.0, n_samples)
    qt_text = np.char.mod("%.4f", qt).astype(object)
    qt_text[rng.choice(n_samples, max(2, n_samples // 150), replace=False)] = "NA"
    cc_text = np.where(qt_text == "NA", "-9", np.where(qt > 0, "2", "1")).astype(object)
    age_text = np.char.mod("%.1f", age).astype(object)
    age_text[rng.choice(n_samples, max(2, n_samples // 200), replace=False)] = "-9"
    g = np.where(rng.random(g.shape) < missing_rate, -1, g).astype(np.int8)

    fid = np.char.add("F", np.arange(1, n_samples + 1).astype(str)).astype(object)
    iid = np.char.add("I", np.arange(1, n_samples + 1).astype(str))
    father = np.full(n_samples, "0", dtype=object)
    mother = np.full(n_samples, "0", dtype=object)
    # A few trios inside the first site: non-founders (PLINK: a parent ID that is not 0).
    for t in range(max(1, n_samples // 100)):
        dad, mum, kid = 3 * t, 3 * t + 1, 3 * t + 2
        father[kid], mother[kid] = iid[dad], iid[mum]
        fid[[mum, kid]] = fid[dad]
    fam = np.column_stack([fid, iid, father, mother, np.where(male, 1, 2), status])

    # --- uneven split, per-site variant tables with the exclusion cases ---------------
    weights = np.arange(n_sites + 1, 1, -1, dtype=float)
    bounds = np.concatenate([[0], np.round(np.cumsum(weights) / weights.sum() * n_samples)])
    bounds = bounds.astype(int)
    site_rows = [np.arange(bounds[k], bounds[k + 1]) for k in range(n_sites)]
    excluded: dict[str, str] = {str(s): "non-autosomal" for s in snp[chrom == "X"]}
    pool = rng.permutation(np.setdiff1d(auto, causal))
    unambiguous = [
        v
        for v in pool
        if {anc[v], der[v]} not in ({"A", "T"}, {"C", "G"}) and min(freq[v], 1 - freq[v]) > 0.1
    ]  # auto are the first columns
    take = iter(unambiguous)
    last, second = n_sites - 1, 1
    drop = {last: [next(take) for _ in range(4)], second: [next(take) for _ in range(2)]}
    for vs in drop.values():
        excluded.update({str(snp[v]): "absent" for v in vs})
    mismatch = [next(take) for _ in range(2)]
    excluded.update({str(snp[v]): "allele mismatch" for v in mismatch})
    strand = [next(take) for _ in range(2)]
    excluded.update({str(snp[v]): "strand flip" for v in strand})
    duplicate = next(take)
    excluded[str(snp[duplicate])] = "duplicate"
    monomorphic = [next(take) for _ in range(2)]  # kept: "0 X" at the first site

    prefixes: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="smpc-sim-") as tmp_name:
        tmp = Path(tmp_name)
        for k, name in enumerate(names):
            rows = site_rows[k]
            cols = np.setdiff1d(np.arange(n_var), drop.get(k, []))
            if k == last:
                cols = np.sort(np.concatenate([cols, [duplicate]]))
            a1, a2 = der[cols].copy(), anc[cols].copy()
            gk = g[np.ix_(rows, cols)]
            if k == second:
                for v in mismatch:  # relabel the derived allele: A/G here, A/C elsewhere
                    j = np.flatnonzero(cols == v)[0]
                    a1[j] = next(b for b in "ACGT" if b not in (anc[v], der[v]))
            if k == last:
                for v in strand:
                    j = np.flatnonzero(cols == v)[0]
                    a1[j], a2[j] = der[v].translate(_COMPLEMENT), anc[v].translate(_COMPLEMENT)
            if k == 0:
                for v in monomorphic:
                    j = np.flatnonzero(cols == v)[0]
                    gk[:, j] = np.where(gk[:, j] >= 0, 0, -1)  # all ancestral
            raw = tmp / f"raw_{name}"
            _write_raw_bed(
                raw,
                gk,
                fam[rows],
                {"chrom": chrom[cols], "snp": snp[cols], "bp": bp[cols], "a1": a1, "a2": a2},
            )
            prefix = out / name
            _plink(plink, "--bfile", str(raw), "--allow-no-sex", "--make-bed", "--out", str(prefix))
            if k == second:
                _shuffle_variants(prefix, np.random.default_rng(seed + 99))
            for ext in (".log", ".nosex", ".hh"):
                prefix.with_name(prefix.name + ext).unlink(missing_ok=True)
            _write_rows(
                prefix.with_name(name + ".pheno"),
                np.column_stack([fid[rows], iid[rows], qt_text[rows], cc_text[rows]]),
                ("FID", "IID", "QT", "CC"),
            )
            _write_rows(
                prefix.with_name(name + ".cov"),
                np.column_stack([fid[rows], iid[rows], age_text[rows], sex2[rows]]),
                ("FID", "IID", "AGE", "SEX2"),
            )
            prefixes[name] = prefix

        # POOLED: the sites' filesets without the expected exclusions, merged in site order.
        exclude_file = tmp / "exclude.txt"
        exclude_file.write_text("\n".join(sorted(excluded)) + "\n")
        kept = []
        for name in names:
            _plink(
                plink,
                "--bfile",
                str(prefixes[name]),
                "--allow-no-sex",
                "--exclude",
                str(exclude_file),
                "--make-bed",
                "--out",
                str(tmp / f"kept_{name}"),
            )
            kept.append(str(tmp / f"kept_{name}"))
        merge_list = tmp / "merge.txt"
        merge_list.write_text("\n".join(kept) + "\n")
        pooled = out / "POOLED"
        _plink(
            plink,
            "--merge-list",
            str(merge_list),
            "--allow-no-sex",
            "--indiv-sort",
            "none",
            "--make-bed",
            "--out",
            str(pooled),
        )
        for ext in (".log", ".nosex", ".hh"):
            pooled.with_name(pooled.name + ext).unlink(missing_ok=True)
    all_rows = np.arange(n_samples)
    _write_rows(
        out / "POOLED.pheno",
        np.column_stack([fid, iid, qt_text, cc_text])[all_rows],
        ("FID", "IID", "QT", "CC"),
    )
    _write_rows(
        out / "POOLED.cov",
        np.column_stack([fid, iid, age_text, sex2])[all_rows],
        ("FID", "IID", "AGE", "SEX2"),
    )
    cohort = SimulatedCohort(
        out_dir=out,
        sites=names,
        prefixes=prefixes,
        pooled=pooled,
        excluded=excluded,
        causal=[str(s) for s in snp[causal]],
        site_samples={n: len(r) for n, r in zip(names, site_rows, strict=True)},
    )
    (out / "cohort.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "n_samples": n_samples,
                "n_snps": n_snps,
                "sites": names,
                "site_samples": cohort.site_samples,
                "causal": cohort.causal,
                "excluded": dict(sorted(excluded.items())),
            },
            indent=2,
        )
        + "\n"
    )
    return cohort


def _shuffle_variants(prefix: Path, rng: np.random.Generator) -> None:
    """Rewrite a fileset with its variants in a random order, alleles and codes unchanged."""
    from bed_reader import open_bed, to_bed

    bim_path = prefix.with_name(prefix.name + ".bim")
    fam_path = prefix.with_name(prefix.name + ".fam")
    bim = [ln for ln in bim_path.read_text().splitlines() if ln.strip()]
    fam_text = fam_path.read_text()
    order = rng.permutation(len(bim))
    with open_bed(prefix.with_name(prefix.name + ".bed"), count_A1=True) as bed:
        val = bed.read(dtype="int8")
    to_bed(
        prefix.with_name(prefix.name + ".bed"),
        val[:, order],
        count_A1=True,
        properties={"sid": [bim[i].split()[1] for i in order]},
    )
    bim_path.write_text("\n".join(bim[i] for i in order) + "\n")
    fam_path.write_text(fam_text)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.simulate OUT_DIR [--samples --snps --sites --seed]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--snps", type=int, default=2000)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plink", default=shutil.which("plink1.9") or "plink1.9")
    args = parser.parse_args(argv)
    cohort = simulate_cohort(
        args.out_dir, args.samples, args.snps, args.sites, args.seed, plink=args.plink
    )
    print(f"wrote {', '.join(cohort.sites)} and POOLED to {cohort.out_dir}")


if __name__ == "__main__":
    main()
