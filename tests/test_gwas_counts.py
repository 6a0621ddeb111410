"""smpc.protocols.gwas.plink.counts/formats against real PLINK 1.9 on a simulated cohort.

A small pooled cohort (founders and a few non-founders whose parents are in the
.fam, missing calls and phenotypes, monomorphic, very rare, strongly associated
and nearly empty variants) is written as .bed/.bim/.fam; ``plink1.9 --assoc``,
``--model`` and quantitative ``--assoc`` run on it; our writers get only the
genotype counts (or QT sums) and must reproduce the files: same strings, numbers
within one unit of the last printed digit, same NA cells, and byte-identical files.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from bed_reader import open_bed, to_bed

from smpc.protocols.gwas.plink import counts as gc
from smpc.protocols.gwas.plink.formats import (
    fmt_g,
    fmt_int,
    plink_maxsnp,
    render_table,
    write_table,
)

pytestmark = pytest.mark.timeout(120)

N_SAMPLES = 900
N_SNPS = 320
N_TRIOS = 20


def plink_exe() -> str:
    """The PLINK 1.9 binary; a clear failure (not a skip) when it is missing."""
    exe = shutil.which("plink1.9") or (
        "/usr/bin/plink1.9" if Path("/usr/bin/plink1.9").exists() else None
    )
    if exe is None:
        pytest.fail("plink1.9 is not installed (CI installs it: apt-get install plink1.9)")
    return exe


def run_plink(bfile: Path, out: Path, *flags: str) -> None:
    cmd = [plink_exe(), "--bfile", str(bfile), "--allow-no-sex", *flags, "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"


@dataclass
class Cohort:
    """A simulated cohort on disk and PLINK's reports on it."""

    dir: Path
    bfile: Path
    qt_file: Path
    assoc: Path
    model: Path
    qassoc: Path


def _simulate(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(20240611)
    n, v = N_SAMPLES, N_SNPS
    status = rng.integers(1, 3, n)  # 1 control, 2 case
    freq = rng.beta(0.4, 0.4, v)
    freq[:8] = 0.0  # monomorphic
    freq[8:12] = 1.0
    freq[12:40] = rng.uniform(0.0003, 0.01, 28)  # very rare
    freq[70:72] = [0.4, 0.3]  # QTLs
    geno = rng.binomial(2, freq, size=(n, v)).astype(np.float64)
    for j in range(40, 46):  # strong associations, P ~ 1e-120
        geno[:, j] = np.where(status == 2, rng.binomial(2, 0.9, n), rng.binomial(2, 0.1, n))
    for j in range(46, 52):  # moderate associations
        geno[:, j] = np.where(status == 2, rng.binomial(2, 0.45, n), rng.binomial(2, 0.3, n))
    # near-perfect association: chi-square > 1417, where PLINK's dcdflib returns P = 0
    geno[:, 52] = np.where(status == 2, 2.0, 0.0)
    geno[:20, 52] = 1.0
    geno[rng.random((n, v)) < 0.03] = np.nan
    geno[:, 60] = np.nan  # no calls at all
    geno[:, 61] = np.where(status == 1, geno[:, 61], np.nan)  # controls only
    geno[:, 62] = np.where(status == 2, geno[:, 62], np.nan)  # cases only
    geno[:, 63] = np.nan
    geno[:6, 63] = 1.0  # a handful of heterozygotes
    geno[:, 64] = np.nan
    geno[:2, 64] = [0.0, 2.0]  # two calls
    geno[:, 65] = np.nan
    geno[:3, 65] = [0.0, 1.0, 2.0]  # three calls
    geno[:, 66] = np.nan
    geno[:1, 66] = 1.0  # one call
    pheno = status.astype(str)
    pheno[rng.random(n) < 0.08] = "-9"
    pheno[:3] = "-9"  # samples of SNPs 64-66 are not all case/control
    fid = np.array([f"FAM{i}" for i in range(n)], dtype=object)
    iid = np.array([f"ID{i}" for i in range(n)], dtype=object)
    father = np.full(n, "0", dtype=object)
    mother = np.full(n, "0", dtype=object)
    for k in range(N_TRIOS):  # the last samples are children of earlier founders
        child = n - 1 - k
        fid[2 * k + 1] = fid[2 * k]
        fid[child] = fid[2 * k]
        father[child], mother[child] = iid[2 * k], iid[2 * k + 1]
    # SNP IDs of varied lengths: PLINK's SNP column width depends on their order
    sid = [f"rs{'1' * int(rng.integers(1, 12))}_{j}" for j in range(v)]
    props = {
        "fid": fid,
        "iid": iid,
        "father": father,
        "mother": mother,
        "sex": rng.integers(0, 3, n),
        "pheno": pheno,
        "chromosome": np.repeat(["1", "7", "22"], [v // 2, v // 4, v - v // 2 - v // 4]),
        "sid": sid,
        "cm_position": np.zeros(v),
        "bp_position": np.sort(rng.choice(10**8, v, replace=False)) + 1,
        "allele_1": rng.choice(["A", "C"], v),
        "allele_2": rng.choice(["G", "T"], v),
    }
    bfile = root / "pooled"
    to_bed(bfile.with_suffix(".bed"), geno, properties=props)
    # quantitative trait with a strong and a weak QTL, some missing
    g0 = np.nan_to_num(geno)
    qt = rng.normal(size=n) + 1.5 * g0[:, 70] + 0.2 * g0[:, 71] + 10.0
    qt_str = np.array([f"{x:.6f}" for x in qt], dtype=object)
    qt_str[rng.random(n) < 0.06] = "-9"
    qt_file = root / "qt.txt"
    qt_file.write_text("".join(f"{a} {b} {c}\n" for a, b, c in zip(fid, iid, qt_str, strict=True)))
    return bfile, qt_file


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    root = tmp_path_factory.mktemp("gwas_counts")
    bfile, qt_file = _simulate(root)
    run_plink(bfile, root / "cc", "--assoc")
    run_plink(bfile, root / "cc", "--model")
    run_plink(bfile, root / "qt", "--assoc", "--pheno", str(qt_file))
    return Cohort(root, bfile, qt_file, root / "cc.assoc", root / "cc.model", root / "qt.qassoc")


@dataclass
class Pooled:
    """What the protocol would see: counts/QT sums in PLINK's final orientation."""

    variants: gc.Variants
    counts: np.ndarray
    qt_stats: dict[str, np.ndarray]


def _read_fam(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def pooled(cohort: Cohort) -> Pooled:
    bed = open_bed(cohort.bfile.with_suffix(".bed"))
    g = bed.read(dtype="float64")  # copies of .bim allele 1 per sample; NaN missing
    fam = _read_fam(cohort.bfile.with_suffix(".fam"))
    iids = {r[1] for r in fam}
    founder = np.array([r[2] not in iids and r[3] not in iids for r in fam])
    # PLINK 1.9's orientation: A1 is the minor allele among founders (ties keep .bim order)
    fg = g[founder]
    called = (~np.isnan(fg)).sum(axis=0)
    a1_copies = np.nansum(fg, axis=0)
    swap = 2 * a1_copies > 2 * called
    a1 = np.where(swap, bed.allele_2, bed.allele_1)
    a2 = np.where(swap, bed.allele_1, bed.allele_2)
    g[:, swap] = 2 - g[:, swap]

    pheno = np.array([r[5] for r in fam])
    pclass = np.select(
        [pheno == "1", pheno == "2"], [gc.PHENO_CONTROL, gc.PHENO_CASE], gc.PHENO_MISSING
    )
    gcode = np.where(np.isnan(g), gc.GENO_MISSING, 2 - np.nan_to_num(g)).astype(np.int64)
    counts = np.zeros((g.shape[1], 3, 2, 4), dtype=np.int64)
    for pc in range(3):
        for fl in range(2):
            rows = (pclass == pc) & (founder == bool(fl))
            for k in range(4):
                counts[:, pc, fl, k] = (gcode[rows] == k).sum(axis=0)

    trait = {}
    for line in cohort.qt_file.read_text().splitlines():
        f, i, y = line.split()
        trait[(f, i)] = float(y)
    y = np.array([trait.get((r[0], r[1]), -9.0) for r in fam])
    use = ~np.isnan(g) & (y != -9.0)[:, None]
    gg = np.where(use, g, 0.0)
    yy = np.where(use, y[:, None], 0.0)
    qt_stats = {
        "n": use.sum(axis=0).astype(np.float64),
        "sum_g": gg.sum(axis=0),
        "sum_gg": (gg * gg).sum(axis=0),
        "sum_y": yy.sum(axis=0),
        "sum_yy": (yy * yy).sum(axis=0),
        "sum_gy": (gg * yy).sum(axis=0),
    }
    variants = gc.Variants(chrom=bed.chromosome, snp=bed.sid, bp=bed.bp_position, a1=a1, a2=a2)
    return Pooled(variants, counts, qt_stats)


# ---------------------------------------------------------------------------------------
# comparison helpers


def _ulp_tol(text: str) -> float:
    """One unit of the last printed digit of a PLINK number."""
    mant, _, exp = text.lower().partition("e")
    mant = mant.lstrip("+-")
    decimals = len(mant.partition(".")[2])
    return 10.0 ** (-decimals + (int(exp) if exp else 0))


def _cells_match(mine: str, theirs: str) -> bool:
    if mine == theirs:
        return True
    try:
        a, b = float(mine), float(theirs)
    except ValueError:
        return False
    if math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        return False
    return abs(a - b) <= 1.0001 * max(_ulp_tol(mine), _ulp_tol(theirs))


def assert_same_report(mine: Path, theirs: Path, loose_lines: frozenset[int] = frozenset()) -> None:
    """Same header, same strings/NA cells, numbers within 1 unit of the last digit; bytes.

    ``loose_lines`` (1-based, header = 1) are lines whose SE PLINK decides by rounding
    noise (``NMISS == 2``: 0/0 prints ``nan`` or ``inf``); they are compared except for
    that cell.
    """
    a = mine.read_text().splitlines()
    b = theirs.read_text().splitlines()
    assert a[0].split() == b[0].split(), f"header differs:\n{a[0]}\n{b[0]}"
    assert len(a) == len(b), f"{len(a)} lines vs PLINK's {len(b)}"
    bad = []
    for lineno, (la, lb) in enumerate(zip(a, b, strict=True), start=1):
        ca, cb = la.split(), lb.split()
        if len(ca) != len(cb):
            bad.append(f"line {lineno}: {la!r} vs {lb!r}")
            continue
        for col, x, y in zip(b[0].split(), ca, cb, strict=True):
            if lineno in loose_lines and col == "SE" and {x, y} <= {"nan", "inf"}:
                continue
            if not _cells_match(x, y):
                bad.append(f"line {lineno} {col}: ours {x!r}, plink {y!r}")
        if not bad and lineno not in loose_lines:
            assert la == lb, f"line {lineno}: values agree but layout differs:\n{la!r}\n{lb!r}"
    assert not bad, f"{len(bad)} cells differ from PLINK:\n" + "\n".join(bad[:30])
    if not loose_lines:
        assert mine.read_bytes() == theirs.read_bytes(), "values agree but bytes differ"


# ---------------------------------------------------------------------------------------
# formatting


def test_fmt_g_renders_like_plink() -> None:
    # expected strings printed by PLINK's own dtoa_g_wxp4
    xs = [
        0.0,
        1.0,
        0.5,
        1.2345e-05,
        1e-300,
        12345.6,
        0.00012345,
        0.125,
        2.5,
        math.inf,
        -0.012345,
        99999.0,
        9999.5,
        9999.4,
        1.5e20,
        0.99996,
        123.45,
        0.00099995,
        5e-324,
    ]
    want = [
        "0",
        "1",
        "0.5",
        "1.234e-05",
        "1e-300",
        "1.235e+04",
        "0.0001234",
        "0.125",
        "2.5",
        "inf",
        "-0.01234",
        "1e+05",
        "1e+04",
        "9999",
        "1.5e+20",
        "1",
        "123.4",
        "0.001",
        "4.941e-324",
    ]
    assert fmt_g(np.array(xs)).tolist() == want
    assert fmt_g([math.nan, -math.inf]).tolist() == ["NA", "-inf"]
    assert fmt_g([math.nan], nan="nan").tolist() == ["nan"]
    assert fmt_g(123456.7, digits=6).tolist() == ["123457"]
    assert fmt_g(np.zeros((2, 0))).shape == (0,)
    assert fmt_int([3, 10]).tolist() == ["3", "10"]


def test_table_layout(tmp_path: Path) -> None:
    cols = [("CHR", 4), ("SNP", 6), ("P", 12)]
    rows = {
        "CHR": np.array(["1", "22"]),
        "SNP": np.array(["rs1", "rs1234567"]),
        "P": fmt_g([0.5, math.nan]),
    }
    text = render_table(cols, rows)
    assert text == (
        " CHR    SNP            P \n   1    rs1          0.5 \n  22 rs1234567           NA \n"
    )
    write_table(tmp_path / "t.txt", cols, list(rows.values()), trailing_space=False)
    assert (tmp_path / "t.txt").read_text().splitlines()[0] == " CHR    SNP            P"


def test_snp_column_width_rule() -> None:
    assert plink_maxsnp(["rs1", "rs2"]) == 4
    assert plink_maxsnp(["rs123", "rs1234", "rs12345"]) == 7  # 5 -> 7; 6, 7 don't exceed
    assert plink_maxsnp(["rs12345", "rs123"]) == 9  # order matters: 7 -> 9
    assert plink_maxsnp(["rs123", "rs12345678"]) == 12


# ---------------------------------------------------------------------------------------
# reports against PLINK


def test_orientation_matches_plink(cohort: Cohort, pooled: Pooled) -> None:
    rows = [line.split() for line in cohort.assoc.read_text().splitlines()[1:]]
    assert [r[1] for r in rows] == pooled.variants.snp.tolist()
    assert [r[3] for r in rows] == pooled.variants.a1.tolist()
    assert [r[6] for r in rows] == pooled.variants.a2.tolist()


def test_assoc_matches_plink(cohort: Cohort, pooled: Pooled, tmp_path: Path) -> None:
    out = tmp_path / "ours.assoc"
    table = gc.write_assoc(out, pooled.variants, pooled.counts)
    assert_same_report(out, cohort.assoc)
    # the NA rules are exercised: empty SNPs, one-sided SNPs, zero odds ratios
    assert np.isnan(table["F_A"]).any() and np.isnan(table["F_U"]).any()
    assert np.isnan(table["CHISQ"]).sum() >= 12
    assert (table["OR"] == 0).any() and np.isnan(table["OR"]).any()
    assert np.nanmin(table["P"]) == 0.0


def test_model_matches_plink(cohort: Cohort, pooled: Pooled, tmp_path: Path) -> None:
    out = tmp_path / "ours.model"
    table = gc.write_model(out, pooled.variants, pooled.counts)
    assert_same_report(out, cohort.model)
    geno_na = np.isnan(table["GENO_CHISQ"])
    assert geno_na.any() and (~geno_na).any()
    assert np.isnan(table["TREND_CHISQ"]).any()


def test_qassoc_matches_plink(cohort: Cohort, pooled: Pooled, tmp_path: Path) -> None:
    out = tmp_path / "ours.qassoc"
    table = gc.write_qassoc(out, pooled.variants, pooled.qt_stats)
    two_calls = frozenset((np.flatnonzero(table["NMISS"] == 2) + 2).tolist())
    assert_same_report(out, cohort.qassoc, loose_lines=two_calls)
    assert np.nanmin(table["P"]) < 1e-50
    assert (table["NMISS"] <= 2).any()


def test_model_cell_option(cohort: Cohort, pooled: Pooled, tmp_path: Path) -> None:
    """``--cell 0`` keeps GENO/DOM/REC on sparse tables, including 1-df GENO tests."""
    run_plink(cohort.bfile, tmp_path / "cell0", "--model", "--cell", "0")
    out = tmp_path / "ours.model"
    table = gc.write_model(out, pooled.variants, pooled.counts, cell=0)
    assert_same_report(out, tmp_path / "cell0.model")
    assert (table["GENO_DF"] == 1).any()


def test_chiprob_tail_like_dcdflib() -> None:
    """Subnormal tails as PLINK's dcdflib gives them (values from PLINK's own code)."""
    assert gc.chiprob_p(1416.77, 1.0) > 0.0
    assert gc.chiprob_p(1416.78, 1.0) == 0.0
    assert fmt_g(gc.chiprob_p(1440.003738723802, 2.0)).tolist() == ["2.028e-313"]
    assert fmt_g(gc.chiprob_p(30.0, 1.0)).tolist() == ["4.32e-08"]
    assert np.isnan(gc.tprob(np.inf, 10.0)) and np.isnan(gc.tprob(1.0, 0.0))


def test_counts_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="shape"):
        gc.assoc_table(np.zeros((3, 2, 2, 4), dtype=np.int64))
