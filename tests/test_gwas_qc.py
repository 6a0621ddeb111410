"""``smpc.protocols.gwas.plink.qc`` against real PLINK 1.9 on a simulated pooled cohort.

The cohort (520 samples, 80 of them non-founders, controls, cases and missing
phenotypes, 3 chromosomes) has random variants of every frequency and call rate plus
hand-made corner cases: all-missing and monomorphic variants in both .bim orientations,
founder frequencies of exactly 0.5 (that non-founders or phenotype-less founders would
move), a minor allele that differs between founders and all samples, call rates and
MAFs exactly at the ``--geno``/``--maf`` thresholds, extreme HWE violations, long
variant IDs and alleles. ``--freq``, ``--hardy`` and ``--missing`` must be
byte-identical to plink1.9's files; the filters must keep the same variants.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from smpc.protocols.gwas.plink import qc
from smpc.protocols.gwas.plink.formats import plink_maxsnp

pytestmark = pytest.mark.timeout(120)

N_FOUNDERS, N_NONFOUNDERS = 440, 80
N = N_FOUNDERS + N_NONFOUNDERS


def plink_bin() -> str:
    """plink1.9, or a clear failure: these tests are the point of the module."""
    path = shutil.which("plink1.9") or (
        "/usr/bin/plink1.9" if Path("/usr/bin/plink1.9").exists() else None
    )
    if path is None:
        pytest.fail("plink1.9 is not installed (expected on PATH or at /usr/bin/plink1.9)")
    return path


def run_plink(bfile: Path, out: Path, *flags: str) -> None:
    cmd = [plink_bin(), "--bfile", str(bfile), "--allow-no-sex", *flags, "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"


# ------------------------------------------------------------------------------------
# The simulated cohort
# ------------------------------------------------------------------------------------


def simulate(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Genotypes as counts of the .bim A1 allele (NaN = missing), samples x variants."""
    founder = np.arange(N) < N_FOUNDERS
    cols: list[np.ndarray] = []

    def add(g: np.ndarray) -> None:
        cols.append(np.asarray(g, dtype=np.float32))

    def hwe_draw(p: float, f: float = 0.0, n: int = N) -> np.ndarray:
        """Genotypes with A1 frequency p and inbreeding coefficient f (negative: het excess)."""
        q = 1 - p
        probs = np.array([q * q + f * p * q, 2 * p * q * (1 - f), p * p + f * p * q])
        probs = np.clip(probs, 0, None)
        return rng.choice(3, size=n, p=probs / probs.sum()).astype(np.float32)

    # random variants: monomorphic to common, both orientations, some HWE deviation
    for _ in range(300):
        kind = rng.random()
        if kind < 0.08:
            p = 0.0
        elif kind < 0.25:
            p = rng.uniform(0.001, 0.02)
        else:
            p = rng.uniform(0.02, 0.5)
        if rng.random() < 0.5:
            p = 1 - p
        f = rng.choice([0.0, 0.0, 0.0, 0.3, -0.3, 0.8])
        g = hwe_draw(p, f)
        rate = rng.choice([0.0, 0.0, 0.01, 0.05, 0.1, 0.2, 0.3])
        g[rng.random(N) < rate] = np.nan
        add(g)

    # corner cases
    add(np.full(N, np.nan))  # no calls at all
    add(np.full(N, 2.0))  # monomorphic A1/A1: PLINK swaps
    add(np.zeros(N))  # monomorphic A2/A2: kept
    g = np.full(N, 2.0)
    g[rng.random(N) < 0.2] = np.nan
    add(g)  # monomorphic A1/A1 with missing calls
    g = np.full(N, np.nan)
    g[~founder] = 1.0
    add(g)  # only non-founders called
    g = np.where(founder, 1.0, 2.0)
    g[rng.choice(N_FOUNDERS, 30, replace=False)] = np.nan
    add(g)  # founders all het: exactly 0.5, all samples not; extreme het excess
    g = np.where(founder, np.tile([0.0, 2.0], N // 2), 0.0)
    add(g)  # founders half A1/A1, half A2/A2: 0.5, no hets
    g = np.where(founder, np.tile([2.0, 0.0], N // 2), 2.0)
    add(g)
    g = np.where(founder, hwe_draw(0.45), 2.0)
    add(g)  # A1 minor in founders, major in all samples
    for n_missing in (52, 53, 0, 26, 27):  # --geno 0.1 and 0.05 boundaries (520 samples)
        g = hwe_draw(0.3)
        g[rng.choice(N, n_missing, replace=False)] = np.nan
        add(g)
    for minor in (44, 43, 45, 9, 8):  # founder MAF 44/880 = 0.05 exactly, 9/880 > 0.01
        g = np.zeros(N)
        g[rng.choice(N_FOUNDERS, minor, replace=False)] = 1.0
        g[~founder] = rng.choice(3, N_NONFOUNDERS)
        add(g)
    g = np.zeros(N)
    g[rng.choice(N_FOUNDERS, 1)] = 1.0
    add(g)  # founder singleton
    g = np.zeros(N)
    g[N_FOUNDERS + 3] = 1.0
    add(g)  # non-founder singleton, founders monomorphic
    add(np.ones(N))  # everybody het
    for f in (0.05, 0.1, 0.15, -0.1, -0.2):  # moderate deviations around --hwe thresholds
        add(hwe_draw(0.3, f))

    geno = np.stack(cols, axis=1)
    geno[rng.random(N) < 0.4, 40] = np.nan  # the longest ID fails --geno 0.1
    v = geno.shape[1]
    chrom = np.repeat(["1", "2", "3"], [v // 3, v // 3, v - 2 * (v // 3)]).tolist()
    snp = [f"rs{1000 + i}" for i in range(v)]
    snp[5] = "rs12345"  # widens the SNP column to 9 ...
    snp[40] = "1:123456:ACGT:A"  # ... and then to 17: PLINK's order-dependent width
    snp[41] = "1:99:A:C_long"
    bases = np.array(list("ACGT"))
    a1, a2 = [], []
    for _ in range(v):
        x, y = rng.choice(bases, 2, replace=False)
        a1.append(str(x))
        a2.append(str(y))
    a1[7], a2[7] = "AT", "A"
    a1[8], a2[8] = "C", "CTTGAC"  # longer than the 4-character allele columns
    props = {
        "chromosome": chrom,
        "sid": snp,
        "bp_position": list(range(1000, 1000 + 10 * v, 10)),
        "allele_1": a1,
        "allele_2": a2,
    }
    return geno, props


def fam_columns(rng: np.random.Generator) -> dict[str, list[str]]:
    iid = [f"s{i}" for i in range(N)]
    father = ["0"] * N_FOUNDERS + [iid[2 * i] for i in range(N_NONFOUNDERS)]
    mother = ["0"] * N_FOUNDERS + [iid[2 * i + 1] for i in range(N_NONFOUNDERS)]
    mother[N_FOUNDERS + 1] = "0"  # one known parent is enough to be a non-founder
    pheno = rng.choice(["1", "2", "-9"], size=N, p=[0.45, 0.4, 0.15]).tolist()
    return {
        "fid": [f"f{i}" for i in range(N)],
        "iid": iid,
        "father": father,
        "mother": mother,
        "sex": rng.choice([0, 1, 2], size=N).tolist(),
        "pheno": pheno,
    }


def write_fileset(prefix: Path, geno: np.ndarray, props: dict, fam: dict) -> None:
    from bed_reader import to_bed

    to_bed(str(prefix) + ".bed", geno, properties={**props, **fam}, count_A1=True)


def count_tensor(geno: np.ndarray, fam: dict, quantitative: bool = False) -> np.ndarray:
    """``(V, 3, 2, 4)`` counts in .bim orientation from the genotype matrix and .fam."""
    pheno = np.asarray(fam["pheno"])
    if quantitative:
        cls = np.where(pheno == "-9", 2, 0)
    else:
        cls = np.select([pheno == "1", pheno == "2"], [0, 1], 2)
    founder = (np.asarray(fam["father"]) == "0") & (np.asarray(fam["mother"]) == "0")
    g = np.where(np.isnan(geno), 3, 2 - np.nan_to_num(geno)).astype(np.int64)  # 0 = A1/A1
    code = (cls * 2 + founder)[:, None] * 4 + g  # samples x variants
    v = geno.shape[1]
    flat = np.bincount((np.arange(v)[None, :] * 24 + code).ravel(), minlength=v * 24)
    return flat.reshape(v, 3, 2, 4)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rng = np.random.default_rng(20240611)
    geno, props = simulate(rng)
    fam = fam_columns(rng)
    root = tmp_path_factory.mktemp("gwas_qc")
    write_fileset(root / "pooled", geno, props, fam)
    return {"root": root, "geno": geno, "props": props, "fam": fam}


def oriented(cohort: dict, quantitative: bool = False) -> tuple[dict, np.ndarray, np.ndarray]:
    """Variant table and counts in PLINK's final orientation, plus the swap mask."""
    ref = count_tensor(cohort["geno"], cohort["fam"], quantitative)
    swap = qc.minor_allele_swap(ref)
    p = cohort["props"]
    a1 = np.where(swap, p["allele_2"], p["allele_1"])
    a2 = np.where(swap, p["allele_1"], p["allele_2"])
    variants = {
        "chrom": p["chromosome"],
        "snp": p["sid"],
        "bp": p["bp_position"],
        "a1": a1,
        "a2": a2,
    }
    return variants, qc.swap_alleles(ref, swap), swap


# ------------------------------------------------------------------------------------
# Comparison
# ------------------------------------------------------------------------------------


def last_digit_unit(token: str) -> float:
    """One unit of the last digit PLINK printed in ``token`` (``0.0123`` -> 1e-4)."""
    mant, _, exp = token.lower().partition("e")
    decimals = len(mant.partition(".")[2])
    return 10.0 ** (-decimals + (int(exp) if exp else 0))


def assert_same_table(ours: Path, theirs: Path) -> None:
    """Every cell equal (numbers within one unit of PLINK's last digit), then bytes."""
    a = ours.read_text().splitlines()
    b = theirs.read_text().splitlines()
    assert len(a) == len(b), f"{ours.name}: {len(a)} lines, PLINK has {len(b)}"
    for i, (la, lb) in enumerate(zip(a, b, strict=True)):
        ta, tb = la.split(), lb.split()
        assert len(ta) == len(tb), f"{ours.name} line {i + 1}: {la!r} vs PLINK {lb!r}"
        for x, y in zip(ta, tb, strict=True):
            if x == y:
                continue
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                pytest.fail(f"{ours.name} line {i + 1}: {x!r} vs PLINK {y!r}\n{la}\n{lb}")
            assert not (np.isnan(fx) or np.isnan(fy)), f"{ours.name} line {i + 1}: NA cells"
            assert abs(fx - fy) <= last_digit_unit(y) * 1.0000001, (
                f"{ours.name} line {i + 1}: {x} vs PLINK {y}\n{la}\n{lb}"
            )
    assert ours.read_bytes() == theirs.read_bytes(), f"{ours.name}: not byte-identical"


# ------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------


def test_reports_equal_plink(cohort: dict, tmp_path: Path) -> None:
    run_plink(cohort["root"] / "pooled", tmp_path / "plink", "--freq", "--hardy", "--missing")
    variants, counts, swap = oriented(cohort)
    qc.write_frq(tmp_path / "ours.frq", variants, counts, swapped=swap)
    qc.write_hwe(tmp_path / "ours.hwe", variants, counts, swapped=swap)
    qc.write_lmiss(tmp_path / "ours.lmiss", variants, counts)
    for ext in ("frq", "hwe", "lmiss"):
        assert_same_table(tmp_path / f"ours.{ext}", tmp_path / f"plink.{ext}")
    # without the .bim orientation the values may differ in the last bit only
    qc.write_frq(tmp_path / "plain.frq", variants, counts)
    qc.write_hwe(tmp_path / "plain.hwe", variants, counts)
    for ext in ("frq", "hwe"):
        assert_same_table(tmp_path / f"plain.{ext}", tmp_path / f"plink.{ext}")


def test_reports_between_filters_equal_plink(cohort: dict, tmp_path: Path) -> None:
    """--freq/--missing precede all filters, --hardy follows --geno; the SNP column is
    sized over every variant PLINK loaded."""
    flags = ("--geno", "0.1", "--hwe", "0.001", "--maf", "0.05")
    run_plink(
        cohort["root"] / "pooled",
        tmp_path / "plink",
        *flags,
        "--freq",
        "--hardy",
        "--missing",
        "--write-snplist",
    )
    variants, counts, swap = oriented(cohort)
    masks = qc.qc_filters(counts, maf=0.05, geno=0.1, hwe=0.001)
    assert not masks["geno"][40]  # the ID that sets the SNP column width is filtered out
    width = plink_maxsnp(variants["snp"])
    g = masks["geno"]
    after_geno = {k: np.asarray(col)[g] for k, col in variants.items()}
    qc.write_hwe(tmp_path / "ours.hwe", after_geno, counts[g], swapped=swap[g], snp_width=width)
    qc.write_frq(tmp_path / "ours.frq", variants, counts, swapped=swap)
    qc.write_lmiss(tmp_path / "ours.lmiss", variants, counts)
    for ext in ("frq", "hwe", "lmiss"):
        assert_same_table(tmp_path / f"ours.{ext}", tmp_path / f"plink.{ext}")
    kept = (tmp_path / "plink.snplist").read_text().split()
    keep = masks["geno"] & masks["hwe"] & masks["maf"]
    assert list(np.asarray(variants["snp"])[keep]) == kept


def test_minor_allele_choice_equals_plink(cohort: dict, tmp_path: Path) -> None:
    """A1 after swapping is PLINK's A1 (ties, monomorphic and empty variants included)."""
    run_plink(cohort["root"] / "pooled", tmp_path / "plink", "--make-just-bim")
    variants, counts, swap = oriented(cohort)
    bim = [line.split() for line in (tmp_path / "plink.bim").read_text().splitlines()]
    assert [r[4] for r in bim] == list(variants["a1"])
    assert [r[5] for r in bim] == list(variants["a2"])
    idx = {s: i for i, s in enumerate(variants["snp"])}
    # the hand-made cases: all-A1/A1 swapped; A2/A2, no calls and exact 0.5 kept
    assert swap[idx["rs1301"]] and not swap[idx["rs1302"]] and not swap[idx["rs1300"]]
    assert swap[idx["rs1303"]] and not swap[idx["rs1304"]]
    assert not swap[idx["rs1305"]] and not swap[idx["rs1306"]] and not swap[idx["rs1307"]]
    assert not swap[idx["rs1308"]]  # founders only: A1 is major among all samples
    # and the data tell PLINK's rule apart from "phenotyped founders" or "all samples"
    ref = count_tensor(cohort["geno"], cohort["fam"])
    phenotyped = ref.copy()
    phenotyped[:, qc.PHENO_MISSING] = 0
    everyone = ref.copy()
    everyone[:, :, 1] += everyone[:, :, 0]
    assert (qc.minor_allele_swap(phenotyped) != swap).any()
    assert (qc.minor_allele_swap(everyone) != swap).any()
    # swapping is an involution on the counts
    np.testing.assert_array_equal(
        qc.swap_alleles(counts, swap), count_tensor(cohort["geno"], cohort["fam"])
    )


FILTERS = [
    ("--maf", "0.05"),
    ("--maf", "0.01"),
    ("--max-maf", "0.2"),
    ("--geno", "0.1"),
    ("--geno", "0.05"),
    ("--geno", "0"),
    ("--hwe", "0.001"),
    ("--hwe", "0.05"),
    ("--hwe", "1e-10"),
    ("--hwe", "0.01", "midp"),
    ("--hwe", "0.01", "include-nonctrl"),
    ("--maf", "0.01", "--geno", "0.05", "--hwe", "1e-4"),
]


def qc_keep(counts: np.ndarray, **kw) -> np.ndarray:
    """The variants the pooled analysis keeps: the intersection of :func:`qc.qc_filters`."""
    masks = qc.qc_filters(counts, **kw)
    return masks["geno"] & masks["hwe"] & masks["maf"]


def qc_args(flags: tuple[str, ...]) -> dict:
    """Keyword arguments of :func:`qc.qc_filters` for a PLINK flag list."""
    names = {"--maf": "maf", "--max-maf": "max_maf", "--geno": "geno", "--hwe": "hwe"}
    modifiers = {"midp": "hwe_midp", "include-nonctrl": "hwe_include_nonctrl"}
    kw: dict = {}
    for i, flag in enumerate(flags):
        if flag in names:
            kw[names[flag]] = float(flags[i + 1])
        elif flag in modifiers:
            kw[modifiers[flag]] = True
    return kw


def plink_kept(bfile: Path, out: Path, flags: tuple[str, ...], snps: list[str]) -> np.ndarray:
    run_plink(bfile, out, *flags, "--write-snplist")
    kept = set((out.parent / (out.name + ".snplist")).read_text().split())
    return np.array([s in kept for s in snps])


@pytest.mark.parametrize("flags", FILTERS, ids=[" ".join(f) for f in FILTERS])
def test_filters_equal_plink(cohort: dict, tmp_path: Path, flags: tuple[str, ...]) -> None:
    variants, counts, _ = oriented(cohort)
    expected = plink_kept(cohort["root"] / "pooled", tmp_path / "plink", flags, variants["snp"])
    got = qc_keep(counts, **qc_args(flags))
    diff = [variants["snp"][i] for i in np.flatnonzero(got != expected)]
    assert not diff, f"{' '.join(flags)}: differs from PLINK on {diff}"
    assert 0 < expected.sum() < expected.size  # the filter did something
    # the reference orientation gives the same answer
    np.testing.assert_array_equal(
        qc_keep(count_tensor(cohort["geno"], cohort["fam"]), **qc_args(flags)), got
    )


# ------------------------------------------------------------------------------------
# Other phenotype layouts: quantitative, none, cases only
# ------------------------------------------------------------------------------------


def relabelled(cohort: dict, root: Path, pheno: list[str]) -> dict:
    """The same genotypes under a different phenotype column."""
    fam = {**cohort["fam"], "pheno": pheno}
    for ext in ("bed", "bim"):
        shutil.copy(cohort["root"] / f"pooled.{ext}", root / f"pooled.{ext}")
    lines = (cohort["root"] / "pooled.fam").read_text().splitlines()
    text = "".join(
        " ".join([*line.split()[:5], p]) + "\n" for line, p in zip(lines, pheno, strict=True)
    )
    (root / "pooled.fam").write_text(text)
    return {**cohort, "root": root, "fam": fam}


@pytest.mark.parametrize("layout", ["quantitative", "none", "cases_only"])
def test_other_phenotypes_equal_plink(cohort: dict, tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(7)
    if layout == "quantitative":
        pheno = [f"{x:.3f}" for x in rng.normal(5, 1, N)]
        pheno[3] = pheno[10] = "-9"
    elif layout == "none":
        pheno = ["-9"] * N
    else:
        pheno = rng.choice(["2", "-9"], N).tolist()
    c = relabelled(cohort, tmp_path, pheno)
    quantitative = layout == "quantitative"
    run_plink(tmp_path / "pooled", tmp_path / "plink", "--hardy", "--freq")
    variants, counts, swap = oriented(c, quantitative)
    qc.write_hwe(tmp_path / "ours.hwe", variants, counts, quantitative=quantitative, swapped=swap)
    qc.write_frq(tmp_path / "ours.frq", variants, counts, swapped=swap)
    assert_same_table(tmp_path / "ours.hwe", tmp_path / "plink.hwe")
    assert_same_table(tmp_path / "ours.frq", tmp_path / "plink.frq")
    test = (tmp_path / "ours.hwe").read_text().splitlines()[1].split()[2]
    assert test == {"quantitative": "ALL(QT)", "none": "ALL(NP)", "cases_only": "ALL"}[layout]
    for hwe in ("0.001", "0.05"):
        flags = ("--hwe", hwe)
        expected = plink_kept(tmp_path / "pooled", tmp_path / f"f{hwe}", flags, variants["snp"])
        got = qc_keep(counts, hwe=float(hwe), quantitative=quantitative)
        assert (got == expected).all(), f"{layout} --hwe {hwe}"


def test_hardy_midp_equals_plink(cohort: dict, tmp_path: Path) -> None:
    run_plink(cohort["root"] / "pooled", tmp_path / "plink", "--hardy", "midp")
    variants, counts, swap = oriented(cohort)
    qc.write_hwe(tmp_path / "ours.hwe", variants, counts, midp=True, swapped=swap)
    assert_same_table(tmp_path / "ours.hwe", tmp_path / "plink.hwe")


def test_hardy_stress_equals_plink(tmp_path: Path) -> None:
    """Many distinct exact tests: 1 to 300 founders called, het deficit to het excess."""
    rng = np.random.default_rng(11)
    n, v = 300, 400
    cols = []
    for _ in range(v):
        p = rng.uniform(0.0, 1.0) ** rng.choice([1, 3])
        f = rng.choice([0.0, 0.0, 0.5, 1.0, -0.5, -1.0])
        q = 1 - p
        probs = np.clip([q * q + f * p * q, 2 * p * q * (1 - f), p * p + f * p * q], 0, None)
        g = rng.choice(3, size=n, p=probs / probs.sum()).astype(np.float32)
        g[rng.random(n) < rng.choice([0.0, 0.5, 0.9, 0.97, 0.995])] = np.nan
        cols.append(g)
    geno = np.stack(cols, axis=1)
    props = {
        "chromosome": ["22"] * v,
        "sid": [f"v{i}" for i in range(v)],
        "bp_position": list(range(1, v + 1)),
        "allele_1": ["A"] * v,
        "allele_2": ["G"] * v,
    }
    fam = {
        "fid": [f"f{i}" for i in range(n)],
        "iid": [f"s{i}" for i in range(n)],
        "father": ["0"] * n,
        "mother": ["0"] * n,
        "sex": [1] * n,
        "pheno": rng.choice(["1", "2"], size=n).tolist(),
    }
    write_fileset(tmp_path / "stress", geno, props, fam)
    run_plink(tmp_path / "stress", tmp_path / "plink", "--hardy")
    variants, counts, swap = oriented({"geno": geno, "props": props, "fam": fam})
    qc.write_hwe(tmp_path / "ours.hwe", variants, counts, swapped=swap)
    assert_same_table(tmp_path / "ours.hwe", tmp_path / "plink.hwe")


def test_unsorted_chromosomes_equal_plink(tmp_path: Path) -> None:
    """--freq lists chromosomes by code; --hardy and --missing keep the .bim order."""
    rng = np.random.default_rng(13)
    n = 60
    chrom = ["2", "2", "10", "1", "1", "1"]
    geno = rng.integers(0, 3, size=(n, len(chrom))).astype(np.float32)
    geno[rng.random(geno.shape) < 0.1] = np.nan
    props = {
        "chromosome": chrom,
        "sid": [f"c{c}_{i}" for i, c in enumerate(chrom)],
        "bp_position": [5, 9, 1, 3, 4, 8],
        "allele_1": ["A"] * 6,
        "allele_2": ["C"] * 6,
    }
    fam = {
        "fid": [f"f{i}" for i in range(n)],
        "iid": [f"s{i}" for i in range(n)],
        "father": ["0"] * n,
        "mother": ["0"] * n,
        "sex": [2] * n,
        "pheno": rng.choice(["1", "2", "-9"], size=n).tolist(),
    }
    write_fileset(tmp_path / "u", geno, props, fam)
    run_plink(tmp_path / "u", tmp_path / "plink", "--freq", "--hardy", "--missing")
    variants, counts, swap = oriented({"geno": geno, "props": props, "fam": fam})
    qc.write_frq(tmp_path / "ours.frq", variants, counts, swapped=swap)
    qc.write_hwe(tmp_path / "ours.hwe", variants, counts, swapped=swap)
    qc.write_lmiss(tmp_path / "ours.lmiss", variants, counts)
    for ext in ("frq", "hwe", "lmiss"):
        assert_same_table(tmp_path / f"ours.{ext}", tmp_path / f"plink.{ext}")


# ------------------------------------------------------------------------------------
# hwe_pvalues on its own
# ------------------------------------------------------------------------------------


def test_hwe_pvalues_shapes_and_symmetry() -> None:
    rng = np.random.default_rng(3)
    t = rng.integers(0, 400, size=(2, 50, 3))
    p = qc.hwe_pvalues(t[..., 0], t[..., 1], t[..., 2])
    assert p.shape == (2, 50)
    assert ((p >= 0) & (p <= 1)).all()
    np.testing.assert_array_equal(p, qc.hwe_pvalues(t[..., 2], t[..., 1], t[..., 0]))
    assert qc.hwe_pvalues(0, 0, 0) == 1.0
    assert qc.hwe_pvalues(0, 0, 0, midp=True) == 0.5
    assert qc.hwe_pvalues(25, 50, 25) == 1.0
    assert qc.hwe_pvalues(0, 20000, 0) == 0.0  # overflow of the centre sum: PLINK's 0
    assert qc.hwe_pvalues([], [], []).shape == (0,)


def test_hwe_pvalues_fast_for_100k_variants() -> None:
    """100,000 variants on 5,000 samples, most distinct tables: a few seconds at most."""
    import time

    rng = np.random.default_rng(5)
    p = rng.uniform(0.001, 0.5, 100_000)
    n = 5000
    hom1 = rng.binomial(n, p * p)
    het = rng.binomial(n - hom1, 2 * p * (1 - p) / (1 - p * p))
    hom2 = n - hom1 - het
    t0 = time.perf_counter()
    out = qc.hwe_pvalues(hom1, het, hom2)
    assert time.perf_counter() - t0 < 20
    assert out.shape == (100_000,)


@pytest.mark.parametrize(
    ("statistics", "median"),
    [([0.1, 2.0, 0.5, np.nan, 7.0], 1.25), ([0.1, 2.0, 0.5, 3.0, 7.0, np.nan], 2.0), ([4.0], 4.0)],
    ids=["even", "odd", "one"],
)
def test_inflation_is_the_median_chi_square_over_its_null_median(statistics, median):
    """λ = median of the 1-df statistics behind the P values / the χ²(1) median; NA ignored."""
    from scipy.stats import chi2

    from smpc.protocols.gwas.plots import inflation

    p = chi2.sf(np.array(statistics), 1)
    assert inflation(p) == pytest.approx(median / chi2.ppf(0.5, 1), rel=1e-9)
    assert np.isnan(inflation(np.array([np.nan])))
