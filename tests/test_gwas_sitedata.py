"""Site datasets (.bed/.pgen/.vcf, .pheno/.cov) and cross-site alignment against real PLINK.

The oracle is PLINK itself: a simulated cohort's sites are merged by ``plink1.9
--merge-list`` (POOLED), and the alignment plus the summed per-site counts must give
POOLED's variants, alleles and genotype counts exactly.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from smpc.errors import UserError
from smpc.protocols.gwas.a1 import a1_is_minor, a1_sides, side_signs
from smpc.protocols.gwas.align import (
    align,
    chrom_codes,
    merge_excess,
    pooled_bim_swap,
    site_counts,
    write_excluded,
)
from smpc.protocols.gwas.genotypes import iter_chunks, open_site
from smpc.protocols.gwas.phenofiles import read_covar, read_pheno
from smpc.protocols.gwas.plink.fileset import VariantTable
from tests.simulate import simulate_cohort

PLINK = shutil.which("plink1.9")
PLINK2 = shutil.which("plink2")
needs_plink = pytest.mark.skipif(PLINK is None or PLINK2 is None, reason="plink1.9/plink2")
pytestmark = pytest.mark.timeout(120)
SWAP = [2, 1, 0, 3]  # genotype classes after exchanging A1 and A2


def run(*args: str) -> None:
    done = subprocess.run(list(args), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    if PLINK is None:
        pytest.skip("plink1.9 is not installed")
    return simulate_cohort(tmp_path_factory.mktemp("cohort"), 500, 600, 3, seed=3)


def pheno_class(site) -> np.ndarray:
    """0 control / 1 case / 2 missing from the .fam phenotype."""
    p = site.samples.phenotype
    return np.select([p == 1, p == 2], [0, 1], 2)


def pooled_counts(prefixes: list[Path], names: list[str]):
    sites = [open_site(p) for p in prefixes]
    al = align([s.variants for s in sites], names)
    total = np.zeros((len(al), 3, 2, 4), dtype=np.int64)
    for k, s in enumerate(sites):
        start = 0  # chunks of the site's rows, in reference order
        for rows, chunk in iter_chunks(s, al.index[k], 97):
            part = slice(start, start + len(rows))
            start += len(rows)
            total[part] += site_counts(chunk, al.flip[k][part], pheno_class(s), s.samples.founder)
    return al, total


def direct_counts(prefix: Path) -> tuple[VariantTable, np.ndarray]:
    p = open_site(prefix)
    n = p.n_variants
    return p.variants, site_counts(
        p.read_chunk(np.arange(n)), np.zeros(n, bool), pheno_class(p), p.samples.founder
    )


# --- formats ----------------------------------------------------------------------------


@needs_plink
def test_bed_pgen_vcf_read_identically(cohort, tmp_path: Path) -> None:
    src = cohort.prefixes["oslo"]
    run(PLINK2, "--bfile", str(src), "--make-pgen", "--out", str(tmp_path / "p"))
    run(PLINK2, "--bfile", str(src), "--export", "vcf", "--out", str(tmp_path / "v"))
    run(PLINK2, "--bfile", str(src), "--export", "vcf", "bgz", "--out", str(tmp_path / "z"))
    bed = open_site(src)
    assert bed.format == "bed"
    auto = chrom_codes(bed.variants.chrom) <= 22
    want = bed.read_chunk(np.arange(bed.n_variants))
    assert want.dtype == np.int8 and set(np.unique(want)) <= {-1, 0, 1, 2}
    assert (want == -1).any()  # the simulation leaves missing calls
    assert (bed.variants.a1 == "0").any()  # and variants monomorphic at the site
    for prefix, fmt in ((tmp_path / "p", "pgen"), (tmp_path / "v", "vcf"), (tmp_path / "z", "vcf")):
        other = open_site(prefix)
        assert other.format == fmt
        for col in ("snp", "bp", "a1", "a2"):
            np.testing.assert_array_equal(getattr(other.variants, col), getattr(bed.variants, col))
        np.testing.assert_array_equal(
            chrom_codes(other.variants.chrom), chrom_codes(bed.variants.chrom)
        )
        np.testing.assert_array_equal(other.samples.fid, bed.samples.fid)
        np.testing.assert_array_equal(other.samples.iid, bed.samples.iid)
        got = other.read_chunk(np.arange(other.n_variants))
        np.testing.assert_array_equal(got[:, auto], want[:, auto])
        if fmt == "pgen":
            np.testing.assert_array_equal(other.samples.sex, bed.samples.sex)
            np.testing.assert_array_equal(other.samples.phenotype, bed.samples.phenotype)
            np.testing.assert_array_equal(other.samples.founder, bed.samples.founder)
            np.testing.assert_array_equal(got, want)
        # arbitrary order and repeats, also for the record-streaming VCF reader
        pick = np.array([7, 3, 3, 150, 0])
        np.testing.assert_array_equal(other.read_chunk(pick), want[:, pick])
        parts = [(idx, g) for idx, g in other.iter_chunks(size=64)]
        assert max(g.shape[1] for _, g in parts) == 64
        np.testing.assert_array_equal(np.concatenate([g for _, g in parts], axis=1), got)


def test_open_site_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no genotype fileset"):
        open_site(tmp_path / "nothing")
    (tmp_path / "half.bed").write_bytes(b"l\x1b\x01")
    with pytest.raises(UserError, match=r"incomplete.*half\.bim"):
        open_site(tmp_path / "half")
    (tmp_path / "half.bim").write_text("1 rs1 0 100 A G\n1 rs2 0\n")
    (tmp_path / "half.fam").write_text("F I 0 0 1 2\n")
    with pytest.raises(UserError, match="line 2 has 3 fields"):
        open_site(tmp_path / "half")
    (tmp_path / "half.bim").write_text("1 rs1 0 100 A G\n")
    (tmp_path / "half.bed").write_bytes(b"not a bed")
    with pytest.raises(UserError, match=r"half\.bed: not a PLINK 1 \.bed file"):
        open_site(tmp_path / "half")


def test_founders_follow_plink(tmp_path: Path) -> None:
    """PLINK 1.9 load_fam: a founder has both parent fields 0, present in the data or not."""
    from bed_reader import to_bed

    to_bed(tmp_path / "f.bed", np.zeros((3, 1), dtype=np.int8))
    (tmp_path / "f.bim").write_text("1\trs1\t0\t1\tA\tG\n")
    (tmp_path / "f.fam").write_text("A a 0 0 1 2\nA b nobody 0 2 1\nA c a b 0 -9\n")
    s = open_site(tmp_path / "f").samples
    np.testing.assert_array_equal(s.founder, [True, False, False])
    np.testing.assert_array_equal(s.sex, [1, 2, 0])
    np.testing.assert_array_equal(s.phenotype, [2, 1, -9])


# --- alignment against PLINK's merge ----------------------------------------------------


@needs_plink
def test_alignment_matches_plink_merge(cohort) -> None:
    names = cohort.sites
    al, total = pooled_counts([cohort.prefixes[s] for s in names], names)
    pooled, direct = direct_counts(cohort.pooled)
    np.testing.assert_array_equal(al.variants.snp, pooled.snp)  # PLINK's merge order
    np.testing.assert_array_equal(al.variants.bp, pooled.bp)
    swap = pooled_bim_swap(total)
    np.testing.assert_array_equal(np.where(swap, al.variants.a2, al.variants.a1), pooled.a1)
    np.testing.assert_array_equal(np.where(swap, al.variants.a1, al.variants.a2), pooled.a2)
    assert_plink_freq_a1(cohort.pooled, al.variants, total)
    total[swap] = total[swap][..., SWAP]
    np.testing.assert_array_equal(total, direct)
    # the cases the simulation plants are all exercised
    assert (open_site(cohort.prefixes["oslo"]).variants.a1 == "0").any()
    assert any(f.any() for f in al.flip) and not all(f.all() for f in al.flip)
    bergen = open_site(cohort.prefixes["bergen"]).variants
    assert not (np.diff(bergen.bp[chrom_codes(bergen.chrom) == 1]) > 0).all()  # shuffled


@needs_plink
def test_alignment_mixed_formats(cohort, tmp_path: Path) -> None:
    """Sites holding .pgen, a shuffled .bed and a VCF align to the same pooled counts."""
    names = cohort.sites
    run(
        PLINK2,
        "--bfile",
        str(cohort.prefixes[names[0]]),
        "--make-pgen",
        "--out",
        str(tmp_path / names[0]),
    )
    run(
        PLINK2,
        "--bfile",
        str(cohort.prefixes[names[2]]),
        "--export",
        "vcf",
        "bgz",
        "--out",
        str(tmp_path / names[2]),
    )
    prefixes = [tmp_path / names[0], cohort.prefixes[names[1]], tmp_path / names[2]]
    al, total = pooled_counts(prefixes, names)
    pooled, direct = direct_counts(cohort.pooled)
    np.testing.assert_array_equal(al.variants.snp, pooled.snp)
    # a VCF has no phenotype: compare counts over all phenotype classes
    swap = pooled_bim_swap(total)
    total[swap] = total[swap][..., SWAP]
    np.testing.assert_array_equal(total.sum(axis=1), direct.sum(axis=1))


@needs_plink
def test_planted_exclusions(cohort, tmp_path: Path) -> None:
    names = cohort.sites
    al = align([open_site(cohort.prefixes[s]).variants for s in names], names)
    kinds = {
        "non-autosomal": "non-autosomal chromosome 23 (X)",
        "absent": "absent at site",
        "allele mismatch": "allele mismatch at site bergen",
        "strand flip": "strand flip at site tromso",
        "duplicate": "duplicate ID at site tromso",
    }
    got = {snp: reason for snp, _, reason in al.excluded}
    assert set(got) == set(cohort.excluded)
    for snp, kind in cohort.excluded.items():
        assert got[snp].startswith(kinds[kind]), (snp, got[snp])
    write_excluded(tmp_path / "x.excluded", al.excluded)
    lines = (tmp_path / "x.excluded").read_text().splitlines()
    assert lines[0] == "SNP\tCHR\tREASON" and len(lines) == len(al.excluded) + 1
    assert all(len(line.split("\t")) == 3 for line in lines)


def _ped_site(path: Path, genotypes: dict[str, list[str]], tag: str, children: int = 0) -> None:
    """A text fileset converted by ``plink1.9 --make-bed`` (A1 = local minor, 0 if absent).

    The last ``children`` samples are non-founders (children of samples 0 and 1).
    """
    n = max(len(v) for v in genotypes.values())
    (path.with_suffix(".map")).write_text(
        "".join(f"1 {snp} 0 {100 * (i + 1)}\n" for i, snp in enumerate(genotypes))
    )
    rows = []
    for j in range(n):
        alleles = " ".join(" ".join(v[j]) if j < len(v) else "0 0" for v in genotypes.values())
        parents = f"{tag}0 {tag}1" if j >= n - children else "0 0"
        rows.append(f"{tag}{j} {tag}{j} {parents} 1 1 {alleles}\n")
    path.with_suffix(".ped").write_text("".join(rows))
    run(PLINK, "--file", str(path), "--make-bed", "--out", str(path))


@needs_plink
def test_merge_allele_slots_match_plink(tmp_path: Path) -> None:
    """Allele 0 filled from later sites, ties and minor-allele swaps, as --merge-list writes."""
    # "kid": founders tie 5:5 (A:C) but the non-founder s1_7 (CC) makes C the all-sample
    # major, so the merge writes A first and PLINK's founder-based A1 keeps that order.
    sites = [
        {"big": ["GG", "GG", "AG"], "fill": ["TT", "TT"], "both0": ["AA", "AA"],
         "tie": ["AC", "AC"], "nocall": ["00", "00"], "at": ["AT", "AA"],
         "kid": ["CA", "AA"]},
        {"big": ["AA"] * 7 + ["AG"], "fill": ["CC", "CC", "CC"], "both0": ["CC", "CC"],
         "tie": ["CC", "AA", "CC"], "nocall": ["AG", "AG", "GG"], "at": ["TT", "TA"],
         "kid": ["CC", "CA", "00", "00", "00", "00", "00", "CC"]},
        {"big": ["GG"], "fill": ["CT"], "both0": ["CC"], "tie": ["AA"], "nocall": ["GG"],
         "at": ["AA"], "kid": ["AC"]},
    ]  # fmt: skip
    prefixes = []
    for k, genotypes in enumerate(sites):
        prefixes.append(tmp_path / f"s{k}")
        _ped_site(prefixes[-1], genotypes, f"s{k}_", children=int(k == 1))
    (tmp_path / "list").write_text("".join(f"{p}\n" for p in prefixes))
    run(PLINK, "--merge-list", str(tmp_path / "list"), "--make-bed", "--out", str(tmp_path / "m"))
    al, total = pooled_counts(prefixes, ["a", "b", "c"])
    assert not al.excluded
    merged, direct = direct_counts(tmp_path / "m")
    swap = pooled_bim_swap(total)
    np.testing.assert_array_equal(al.variants.snp, merged.snp)
    np.testing.assert_array_equal(np.where(swap, al.variants.a2, al.variants.a1), merged.a1)
    np.testing.assert_array_equal(np.where(swap, al.variants.a1, al.variants.a2), merged.a2)
    total[swap] = total[swap][..., SWAP]
    np.testing.assert_array_equal(total, direct)
    first = open_site(prefixes[0]).variants
    assert dict(zip(first.snp, first.a1, strict=True))["fill"] == "0"
    ref = dict(zip(al.variants.snp, zip(al.variants.a1, al.variants.a2, strict=True), strict=True))
    assert ref["fill"] == ("C", "T")  # 0 T, then 0 C: C fills the empty A1 slot
    assert ref["kid"] == ("C", "A") and merged.a1[list(merged.snp).index("kid")] == "A"
    total[swap] = total[swap][..., SWAP]  # back to the reference orientation
    assert_plink_freq_a1(tmp_path / "m", al.variants, total)


@needs_plink
def test_same_position_order_matches_plink(tmp_path: Path) -> None:
    """Variants sharing a position: the merge orders them by ID bytes, not by .bim row."""
    genotypes = {"zz": ["AG", "AA"], "ab": ["AG", "GG"], "Ab": ["CT", "CC"]}
    for k in range(2):
        _ped_site(tmp_path / f"s{k}", genotypes, f"s{k}_")
        bim = (tmp_path / f"s{k}.map").read_text().replace(" 200\n", " 100\n")
        (tmp_path / f"s{k}.map").write_text(bim.replace(" 300\n", " 100\n"))
        run(
            PLINK, "--file", str(tmp_path / f"s{k}"), "--make-bed", "--out", str(tmp_path / f"s{k}")
        )
    (tmp_path / "list").write_text(f"{tmp_path / 's0'}\n{tmp_path / 's1'}\n")
    run(PLINK, "--merge-list", str(tmp_path / "list"), "--make-bed", "--out", str(tmp_path / "m"))
    sites = [open_site(tmp_path / f"s{k}").variants for k in range(2)]
    assert list(sites[0].snp) == ["zz", "ab", "Ab"]
    al = align(sites, ["a", "b"])
    np.testing.assert_array_equal(al.variants.snp, open_site(tmp_path / "m").variants.snp)
    assert list(al.variants.snp) == ["Ab", "ab", "zz"]


def founder_minor_swap(counts: np.ndarray) -> np.ndarray:
    """PLINK 1.9 at load: swap where the founders' A2 frequency is below 0.5 (ties keep)."""
    f = counts[:, :, 1].sum(axis=1)
    called = 2 * f[:, :3].sum(axis=1)
    a2 = np.divide(f[:, 1] + 2 * f[:, 2], called, out=np.full(len(f), 0.5), where=called > 0)
    return a2 < 0.5


def assert_plink_freq_a1(prefix: Path, reference: VariantTable, counts: np.ndarray) -> None:
    """Slots, then the merge's swap, then founders' minor: PLINK's A1 on the merged data."""
    swap = pooled_bim_swap(counts)
    a1 = np.where(swap, reference.a2, reference.a1)
    a2 = np.where(swap, reference.a1, reference.a2)
    counts = counts.copy()
    counts[swap] = counts[swap][..., SWAP]
    minor = founder_minor_swap(counts)
    a1, a2 = np.where(minor, a2, a1), np.where(minor, a1, a2)
    run(PLINK, "--bfile", str(prefix), "--allow-no-sex", "--freq", "--out", str(prefix))
    frq = np.array([ln.split() for ln in prefix.with_suffix(".frq").read_text().splitlines()[1:]])
    np.testing.assert_array_equal(frq[:, 1], reference.snp)
    np.testing.assert_array_equal(frq[:, 2], a1)
    np.testing.assert_array_equal(frq[:, 3], a2)


# --- alignment rules on hand-made tables -----------------------------------------------


def table(rows: list[tuple]) -> VariantTable:
    cols = list(zip(*rows, strict=True))
    return VariantTable(cols[0], cols[1], np.zeros(len(rows)), cols[2], cols[3], cols[4])


def test_alignment_rules() -> None:
    s1 = table(
        [
            ("1", "ok", 10, "A", "G"),
            ("1", "swapped", 20, "C", "T"),
            ("1", "zero", 30, "0", "T"),
            ("1", "mis", 40, "A", "C"),
            ("1", "strand", 50, "A", "C"),
            ("1", "at", 60, "A", "T"),
            ("1", "gone", 70, "A", "G"),
            ("X", "x", 80, "A", "G"),
            ("23", "x23", 90, "A", "G"),
            ("MT", "mt", 95, "A", "G"),
            ("0", "unplaced", 5, "A", "G"),
            ("1", "dup", 99, "A", "G"),
            ("chr2", "c2", 10, "A", "G"),
            ("1", "moved", 100, "A", "G"),
            ("1", "chr", 110, "A", "G"),
            ("1", "multi", 120, "A", "G"),
            ("1", "nocall", 130, "0", "0"),
            ("1", "lastfill", 140, "0", "G"),
        ]
    )
    s2 = table(
        [
            ("chr2", "c2", 10, "G", "A"),
            ("1", "swapped", 20, "T", "C"),
            ("1", "zero", 30, "T", "C"),
            ("1", "mis", 40, "A", "G"),
            ("1", "strand", 50, "T", "G"),
            ("1", "at", 60, "T", "A"),
            ("1", "ok", 10, "A", "G"),
            ("X", "x", 80, "A", "G"),
            ("23", "x23", 90, "A", "G"),
            ("MT", "mt", 95, "A", "G"),
            ("0", "unplaced", 5, "A", "G"),
            ("1", "dup", 99, "A", "G"),
            ("1", "dup", 99, "A", "G"),
            ("1", "moved", 101, "A", "G"),
            ("2", "chr", 110, "A", "G"),
            ("1", "multi", 120, "A,C", "G"),
            ("1", "nocall", 130, "C", "A"),
            ("1", "lastfill", 140, "0", "G"),
            ("1", "only2", 150, "A", "G"),
        ]
    )
    s3 = table(
        [
            (c, snp, bp, a1, a2)
            for c, snp, bp, a1, a2 in zip(s1.chrom, s1.snp, s1.bp, s1.a1, s1.a2, strict=True)
        ]
    )
    s3 = VariantTable(
        s3.chrom, s3.snp, s3.cm, s3.bp, np.where(s3.snp == "lastfill", "A", s3.a1), s3.a2
    )
    al = align([s1, s2, s3], ["a", "b", "c"])
    reasons = {snp: reason for snp, _, reason in al.excluded}
    assert reasons == {
        "mis": "allele mismatch at site b (A/C at a, A/G at b, A/C at c)",
        "strand": "strand flip at site b (A/C at a, T/G at b, A/C at c)",
        "gone": "absent at site b",
        "only2": "absent at site a, c",
        "x": "non-autosomal chromosome X",
        "x23": "non-autosomal chromosome 23 (X)",
        "mt": "non-autosomal chromosome MT",
        "unplaced": "non-autosomal chromosome 0",
        "dup": "duplicate ID at site b",
        "moved": "position mismatch (100 at a, 101 at b, 100 at c)",
        "chr": "chromosome mismatch (1 at a, 2 at b, 1 at c)",
        "multi": "multiallelic at site b",
    }
    # chromosome code, bp, then ID: PLINK's merge order
    assert list(al.variants.snp) == ["ok", "swapped", "zero", "at", "nocall", "lastfill", "c2"]
    assert list(al.variants.chrom) == ["1", "1", "1", "1", "1", "1", "2"]
    ref = {
        s: (a, b) for s, a, b in zip(al.variants.snp, al.variants.a1, al.variants.a2, strict=True)
    }
    assert ref == {
        "ok": ("A", "G"),
        "swapped": ("C", "T"),
        "zero": ("C", "T"),
        "at": ("A", "T"),
        "nocall": ("C", "A"),
        "lastfill": ("A", "G"),
        "c2": ("A", "G"),
    }
    order = list(al.variants.snp)
    flips = {name: dict(zip(order, f, strict=True)) for name, f in zip("abc", al.flip, strict=True)}
    assert flips["b"] == {
        "ok": False,
        "swapped": True,
        "zero": True,
        "at": True,
        "nocall": False,
        "lastfill": False,
        "c2": True,
    }
    assert flips["a"]["zero"] is np.False_ and flips["c"]["lastfill"] is np.False_
    for k, t in enumerate((s1, s2, s3)):  # index points at the same IDs
        np.testing.assert_array_equal(t.snp[al.index[k]], al.variants.snp)


def test_chrom_codes() -> None:
    got = chrom_codes(
        np.array(["1", "chr22", "X", "chrX", "23", "Y", "XY", "MT", "M", "0", "GL000", "26"])
    )
    np.testing.assert_array_equal(got, [1, 22, 23, 23, 23, 24, 25, 26, 26, 0, -1, 26])


def test_site_counts_against_a_loop() -> None:
    rng = np.random.default_rng(5)
    n, s = 57, 13
    g = rng.choice(np.array([-1, 0, 1, 2], dtype=np.int8), (n, s), p=[0.1, 0.3, 0.3, 0.3])
    flip = rng.random(s) < 0.5
    pc = rng.integers(0, 3, n)
    founder = rng.random(n) < 0.7
    got = site_counts(g, flip, pc, founder)
    want = np.zeros((s, 3, 2, 4), dtype=np.int64)
    for i in range(n):
        for v in range(s):
            x = g[i, v]
            cls = 3 if x < 0 else (x if flip[v] else 2 - x)
            want[v, pc[i], int(founder[i]), cls] += 1
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64 and got.sum() == n * s
    with pytest.raises(ValueError, match="shapes disagree"):
        site_counts(g, flip[:-1], pc, founder)


def test_pooled_bim_swap() -> None:
    c = np.zeros((3, 3, 2, 4), dtype=np.int64)
    c[0, 0, 1] = [5, 1, 2, 9]  # more A1 homozygotes: the merge writes A2 first
    c[1, 2, 0] = [2, 7, 2, 0]  # tie: slot order kept
    c[2, 1, 1] = [0, 3, 4, 0]
    np.testing.assert_array_equal(pooled_bim_swap(c), [True, False, False])


def test_pooled_bim_swap_with_mind_follows_the_fileset_as_written() -> None:
    """With ``mind`` the counts leave samples out; the pooled .bim was written over every
    sample: the merge's order (all samples), then ``--make-bed``'s founders' minor allele
    (all founders; a tie keeps the merge's order)."""
    g = np.array([[2, 2, 0], [2, 0, 2], [0, 0, 2], [0, 1, -1]], dtype=np.int8)  # (4 samples, 3)
    founder = np.array([True, True, False, True])
    np.testing.assert_array_equal(merge_excess(g, founder), [[0, -1], [1, 0], [-1, 0]])
    excess = np.array([[0, 2], [0, -2], [-1, 2], [-1, -2], [2, 0], [-3, 0]])
    # tie, A1 minor: kept; tie, A2 minor: make-bed swaps; the merge swaps, then make-bed
    # swaps back (ref A1 is minor); both agree; the founders tie: the merge's order
    expected = [False, True, False, True, False, True]
    np.testing.assert_array_equal(pooled_bim_swap(np.zeros((6, 3, 2, 4)), excess), expected)


def test_a1_claims_of_plink_written_sites_bound_the_pooled_founders(cohort) -> None:
    """Every site written by plink --make-bed claims its A1 minor among its founders; where
    all sites' A1 are one reference allele, the pooled founders' A2A2 − A1A1 has the
    side a1_sides gives it, and only the other variants are left to a secure comparison."""
    names = cohort.sites
    claims = [a1_is_minor(direct_counts(cohort.prefixes[s])[1]) for s in names]
    assert claims == [True] * len(names)
    al, total = pooled_counts([cohort.prefixes[s] for s in names], names)
    side = np.array(list(a1_sides(claims, al.flip, len(al))))
    founders = total[:, :, 1, :].sum(axis=1)
    excess = founders[:, 2] - founders[:, 0]
    assert (excess[side == "+"] >= 0).all() and (excess[side == "-"] <= 0).all()
    assert {"+", "?"} <= set(side.tolist())  # local minor alleles differ at some
    assert a1_sides([True, False, True], al.flip, len(al)) == "?" * len(al)


def test_a1_is_minor_counts_founders_only() -> None:
    c = np.zeros((2, 3, 2, 4), dtype=np.int64)
    c[0, 0, 1] = [3, 5, 3, 1]  # founders tie: still minor
    c[0, 1, 0] = [9, 0, 0, 0]  # non-founders do not count
    c[1, 2, 1] = [1, 0, 4, 0]
    assert a1_is_minor(c)
    c[1, 1, 1, 0] = 4  # founders' A1A1 (1 + 4) now exceed A2A2 (4)
    assert not a1_is_minor(c)
    sides = a1_sides(
        [True, True], [np.array([False, True, True]), np.array([False, True, False])], 3
    )
    assert sides == "+-?"
    assert side_signs(sides, 3).tolist() == [1, -1, 0]
    assert side_signs("", 2).tolist() == [0, 0]
    with pytest.raises(ValueError, match="2 variants"):
        side_signs("+-?", 2)


# --- phenotypes and covariates -----------------------------------------------------------


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    from bed_reader import to_bed

    to_bed(tmp_path / "t.bed", np.zeros((4, 1), dtype=np.int8))
    (tmp_path / "t.bim").write_text("1\trs1\t0\t1\tA\tG\n")
    (tmp_path / "t.fam").write_text("F1 I1 0 0 1 1\nF2 I2 0 0 2 2\nF3 I3 0 0 1 -9\nF4 I4 0 0 1 0\n")
    return tmp_path / "t"


def test_pheno_and_covar_parsing(tiny: Path) -> None:
    tiny.with_suffix(".pheno").write_text(
        "FID IID QT CC\nF9 I9 5 1\nF3 I3 NA 2\nF1 I1 1.5 0\nF2 I2 -9 1\n"
    )
    tiny.with_suffix(".cov").write_text(
        "FID\tIID\tAGE\tSEX2\nF2\tI2\t40.5\t1\nF1 I1 -9 0\nF4 I4 NA 1\nF3 I3 33 0\n"
    )
    np.testing.assert_array_equal(read_pheno(tiny, "QT"), [1.5, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(read_pheno(tiny, "CC"), [np.nan, 1, 2, np.nan])  # 0 missing
    samples = open_site(tiny).samples
    np.testing.assert_array_equal(
        read_covar(tiny, ["SEX2", "AGE"], samples),
        [[0, np.nan], [1, 40.5], [0, 33], [1, np.nan]],
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("IID FID QT\nF1 I1 1\n", r"t\.pheno: line 1: the header must start with 'FID IID'"),
        ("FID IID AGE\nF1 I1 1\n", r"no column 'QT'; columns are AGE"),
        ("FID IID QT\nF1 I1 1\nF2 I2\n", r"t\.pheno: line 3 has 2 fields, the header has 3"),
        ("FID IID QT\nF1 I1 1\n\nF2 I2 abc\n", r"line 4, column QT: 'abc' is not a number"),
        ("FID IID QT\nF1 I1 1\nF1 I1 2\n", r"line 3: sample F1 I1 appears more than once"),
        ("", r"empty file"),
    ],
)
def test_pheno_errors(tiny: Path, text: str, message: str) -> None:
    tiny.with_suffix(".pheno").write_text(text)
    with pytest.raises(UserError, match=message):
        read_pheno(tiny, "QT")


def test_covar_missing_file(tiny: Path) -> None:
    with pytest.raises(UserError, match=r"t\.cov: file not found"):
        read_covar(tiny, ["AGE"])


@needs_plink
def test_simulated_pheno_and_covar(cohort) -> None:
    prefix = cohort.prefixes["bergen"]
    site = open_site(prefix)
    qt = read_pheno(prefix, "QT", site.samples)
    cov = read_covar(prefix, ["AGE", "SEX2"], site.samples)
    assert qt.shape == (site.n_samples,) and cov.shape == (site.n_samples, 2)
    assert 0 < np.isnan(qt).sum() < 10 and np.isin(cov[:, 1], [0, 1]).all()
    assert sorted(cohort.site_samples.values(), reverse=True) == list(
        cohort.site_samples.values()
    )  # uneven, first site largest
