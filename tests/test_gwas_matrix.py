"""GWAS across its options: a pairwise covering array, each row against PLINK 1.9.

Every pair of values of any two option dimensions (:data:`DIMENSIONS`) appears in at
least one row (``allpairspy``, so a new value extends the array). A row runs ``smpc
local`` (real broker, party daemons, site uploads and MPyC sessions) on a small simulated
cohort (:mod:`tests.simulate`) with its sites in the row's formats, and
every table it writes must equal PLINK 1.9's on the pooled data (the sites' data as
PLINK imports them, without the expected exclusions, merged in site order) with the
same options (:func:`tests.test_gwas_local.assert_same_table`). A combination smpc
refuses (:func:`refusal`, listed in the README's GWAS section) must fail at once with
its message, never run to the job's timeout.

Every simulated cohort has uneven sites, a variant monomorphic at the first site (allele
``0``), a strand flip, an allele mismatch and variants missing at the last site, missing
calls, phenotypes and covariates: each row covers those with its other values.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import namedtuple
from pathlib import Path

import pytest
from allpairspy import AllPairs

from smpc.errors import UserError
from smpc.local import run_local
from smpc.protocols.gwas.job import TEST_EXTENSION
from tests.simulate import simulate_cohort
from tests.test_gwas_local import PLINK, assert_same_table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

PLINK2 = "plink2"
SAMPLES, SNPS = 300, 120
JOB_TIMEOUT = 120.0  # seconds: a refusal must come long before, and a hang fails the row

DIMENSIONS = {
    "pheno": ["fam", "CC", "QT"],  # the .fam status, a case/control or quantitative column
    "tests": [
        ("assoc",), ("model",), ("hardy",), ("freq",), ("missing",), ("linear",),
        ("logistic",), ("assoc", "model", "hardy", "freq", "missing"),
        ("linear", "assoc", "freq"),
    ],
    "reveal": ["statistics", "aggregates"],
    "filters": ["none", "maf", "geno", "hwe", "mind", "all"],
    "covar": [(), ("AGE",), ("AGE", "SEX2")],
    "formats": ["bed", "pgen", "vcf", "mix"],
    "sites": [2, 3, 5],
    "parties": [(3, 1), (5, 2)],
}  # fmt: skip
FILTERS = {
    "none": {},
    "maf": {"maf": "0.05"},
    "geno": {"geno": "0.02"},
    "hwe": {"hwe": "1.0e-3"},
    "mind": {"mind": "0.02"},
    "all": {"maf": "0.05", "geno": "0.02", "hwe": "1.0e-3", "mind": "0.02"},
}
MIX = ("bed", "pgen", "vcf")  # a mix: site k in format k mod 3
PLINK_FLAGS = {
    "assoc": ["--assoc"], "model": ["--model"], "hardy": ["--hardy"], "freq": ["--freq"],
    "missing": ["--missing"], "linear": ["--linear", "hide-covar"],
    "logistic": ["--logistic", "hide-covar"],
}  # fmt: skip
Row = namedtuple("Row", list(DIMENSIONS))


def refusal(row: Row | dict) -> str | None:
    """The message smpc refuses a combination with (None: it runs); ``row`` may be
    partial (a dict of the dimensions chosen so far, as the array generator asks).

    smpc refuses what PLINK 1.9 refuses (``--model``/``--logistic`` on a quantitative,
    ``--linear`` on a case/control phenotype), a GWAS whose sites have no phenotype at
    all, covariates without a regression test (the spec is refused before any job) and
    with ``reveal: statistics`` the hwe filter without the hardy test.
    """
    r = row._asdict() if isinstance(row, Row) else row
    tests = set(r.get("tests", ()))
    if r.get("covar") and "tests" in r and not tests & {"linear", "logistic"}:
        return "covariates are used by the linear and logistic tests only"
    hwe = "hwe" in FILTERS.get(r.get("filters"), {})
    if r.get("reveal") == "statistics" and hwe and "tests" in r and "hardy" not in tests:
        return "the hwe filter without hardy"
    if r.get("pheno") == "fam" and r.get("formats") == "vcf":
        return "no sample of any site has a value of the .fam phenotype"
    if r.get("pheno") == "QT" and tests & {"model", "logistic"}:
        return "need a case/control phenotype"
    if r.get("pheno") in ("fam", "CC") and "linear" in tests:
        return "linear needs a quantitative phenotype"
    return None


def covering_rows() -> list[Row]:
    """Runs whose every pair of values smpc accepts, then one refused run for each pair
    of values no accepted run can hold (the rest of its values from the first run), in
    both reveal modes, and the one refusal of ``reveal: statistics`` alone."""
    names = list(DIMENSIONS)
    accepted = [
        Row(*values)
        for values in AllPairs(
            list(DIMENSIONS.values()),
            filter_func=lambda values: refusal(dict(zip(names, values, strict=False))) is None,
        )
    ]
    refused = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            seen = {(getattr(r, a), getattr(r, b)) for r in accepted + refused}
            for x in DIMENSIONS[a]:
                for y in DIMENSIONS[b]:
                    if (x, y) not in seen:
                        candidates = [r._replace(**{a: x, b: y}) for r in accepted]
                        runs = [r for r in candidates if refusal(r) is None]
                        (accepted if runs else refused).append((runs or candidates)[0])
                        seen.add((x, y))
    other = {"statistics": "aggregates", "aggregates": "statistics"}
    twins = [r._replace(reveal=other[r.reveal]) for r in refused]  # refused in both modes
    hwe = accepted[0]._replace(reveal="statistics", filters="hwe", tests=("assoc",))
    return accepted + refused + [r for r in twins if r not in refused] + [hwe]


ROWS = covering_rows()


def test_the_array_covers_every_pair():
    """The covering array's defining property, checked on the generated rows."""
    names = list(DIMENSIONS)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            seen = {(getattr(r, a), getattr(r, b)) for r in ROWS}
            assert len(seen) == len(DIMENSIONS[a]) * len(DIMENSIONS[b]), (a, b)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """One small simulated cohort per number of sites."""
    for exe in (PLINK, PLINK2):
        if shutil.which(exe) is None:
            pytest.fail(f"{exe} is not installed (tests/run.sh installs the Debian package)")
    root = tmp_path_factory.mktemp("cohorts")
    return {
        n: simulate_cohort(root / f"sites{n}", SAMPLES, SNPS, n, seed=20 + n)
        for n in DIMENSIONS["sites"]
    }


def _run(exe: str, *args: str) -> None:
    run = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"{exe} {' '.join(args)}:\n{run.stdout[-2000:]}"


def site_files(cohort, formats: str, root: Path) -> tuple[dict[str, Path], list[str]]:
    """Each site's fileset in its format (``.bed`` as the site's plink wrote it, ``.pgen``
    by plink2, ``.vcf.gz`` by plink2 with FID_IID sample IDs) and the filesets PLINK 1.9
    reads for the pooled data (a VCF imported by ``plink1.9 --vcf``)."""
    prefixes, reference = {}, []
    for k, site in enumerate(cohort.sites):
        fmt = MIX[k % len(MIX)] if formats == "mix" else formats
        source = cohort.prefixes[site]
        prefix = source
        if fmt in ("pgen", "vcf"):
            prefix = root / f"{site}-pgen"  # sorted: plink2 refuses a shuffled .bim otherwise
            _run(PLINK2, "--bfile", str(source), "--make-pgen", "--sort-vars", "--out", str(prefix))
        if fmt == "vcf":
            vcf = root / f"{site}-vcf"
            _run(PLINK2, "--pfile", str(prefix), "--export", "vcf", "bgz", "--out", str(vcf))
            prefix = vcf
            imported = root / f"{site}-imported"
            _run(PLINK, "--vcf", f"{vcf}.vcf.gz", "--make-bed", "--out", str(imported))
            reference.append(str(imported))
        else:
            reference.append(str(source))
        for ext in ("pheno", "cov"):
            if prefix != source:
                shutil.copy(f"{source}.{ext}", f"{prefix}.{ext}")
        prefixes[site] = prefix
    return prefixes, reference


def pooled(cohort, reference: list[str], root: Path) -> Path:
    """The sites' data merged in site order without the expected exclusions (as POOLED)."""
    exclude = root / "exclude.txt"
    exclude.write_text("\n".join(sorted(cohort.excluded)) + "\n")
    kept = []
    for k, fileset in enumerate(reference):
        out = root / f"kept{k}"
        _run(PLINK, "--bfile", fileset, "--allow-no-sex", "--exclude", str(exclude),
             "--make-bed", "--out", str(out))  # fmt: skip
        kept.append(str(out))
    (root / "merge.txt").write_text("\n".join(kept) + "\n")
    merged = root / "POOLED"
    _run(PLINK, "--merge-list", str(root / "merge.txt"), "--allow-no-sex", "--indiv-sort",
         "none", "--make-bed", "--out", str(merged))  # fmt: skip
    return merged


def spec_text(row: Row) -> str:
    lines = ["name: mx", "protocol: gwas", f"tests: [{', '.join(row.tests)}]"]
    lines.append(f"reveal: {row.reveal}")
    if row.pheno != "fam":
        lines.append(f"pheno: {row.pheno}")
    if row.covar:
        lines.append(f"covar: [{', '.join(row.covar)}]")
    filters = FILTERS[row.filters]
    if filters:
        lines.append("filters: {" + ", ".join(f"{k}: {v}" for k, v in filters.items()) + "}")
    return "\n".join(lines) + "\n"


def row_id(row: Row) -> str:
    parties, threshold = row.parties
    covar = "+".join(row.covar) or "nocov"
    tests = "+".join(row.tests)
    return (
        f"{row.pheno}-{tests}-{row.reveal}-{row.filters}-{covar}-{row.formats}-"
        f"{row.sites}sites-{parties}p{threshold}t"
    )


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_gwas_option_combination_equals_plink_or_is_refused(cohorts, tmp_path, row):
    cohort = cohorts[row.sites]
    prefixes, reference = site_files(cohort, row.formats, tmp_path)
    (tmp_path / "spec.yaml").write_text(spec_text(row))
    parties, threshold = row.parties
    out = tmp_path / "out"

    def run() -> dict:
        return run_local(
            tmp_path / "spec.yaml", prefixes, out,
            parties=parties, threshold=threshold, timeout=JOB_TIMEOUT,
        ).summary  # fmt: skip

    refused = refusal(row)
    if refused is not None:
        start = time.monotonic()
        with pytest.raises(UserError, match=refused):
            run()
        assert time.monotonic() - start < JOB_TIMEOUT / 2  # refused, not timed out
        return
    summary = run()
    base = pooled(cohort, reference, tmp_path)
    common = ["--bfile", str(base), "--allow-no-sex"]
    if row.pheno != "fam":
        common += ["--pheno", f"{cohort.pooled}.pheno", "--pheno-name", row.pheno]
    common += [x for k, v in FILTERS[row.filters].items() for x in (f"--{k}", v)]
    written = {f for f in summary["files"] if not f.endswith(".png")}
    expected = set()
    for test in row.tests:
        ext = "qassoc" if test == "assoc" and row.pheno == "QT" else TEST_EXTENSION[test]
        expected.add(f"mx.{ext}")
        flags = list(PLINK_FLAGS[test])
        if test in ("linear", "logistic") and row.covar:
            flags += ["--covar", f"{cohort.pooled}.cov", "--covar-name", ",".join(row.covar)]
        plink = tmp_path / f"plink-{test}"
        _run(PLINK, *common, *flags, "--out", str(plink))
        assert_same_table(
            out / f"mx.{ext}", plink.with_suffix(f".{ext}"), single_precision=test == "logistic"
        )
    assert written == expected
    excluded = (out / "mx.excluded").read_text().splitlines()[1:]
    assert {line.split("\t")[0] for line in excluded} == set(cohort.excluded)
    assert summary["reveal"] == row.reveal
    assert json.loads((out / "result.json").read_text())["sites"] == cohort.sites
