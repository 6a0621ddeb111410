"""The hostile-input corpus (``tests/hostile/``): every case gets one clear error line.

Each case file (or fileset) under ``tests/hostile/<family>/`` is read by the reader a user
or daemon runs on it, and must give one :class:`smpc.errors.UserError` line that names the
file and the field (or row and column), with the fix where there is one; nothing is
written; no traceback. :data:`CASES` says what each line must contain, and every file of
the corpus must have its entry. Through the real ``smpc`` command a selection of cases
prints that line alone on stderr and exits 2. The daemons (``smpc site serve`` reading a
bad input for a job, ``smpc party serve`` reading a bad job) log the error, store nothing
for it and answer the next good job: :func:`test_daemons_refuse_hostile_inputs_and_serve_on`.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from smpc.config.federation import load_federation
from smpc.core.field import FAST
from smpc.errors import UserError
from smpc.io.inputs import read_input
from smpc.party.config import load_party_config
from smpc.protocols.base import SiteSource
from smpc.protocols.gwas.genotypes import open_site
from smpc.protocols.gwas.site import site_statistics
from smpc.protocols.registry import load_spec, parse_spec, protocol
from smpc.site.config import load_site_config
from smpc.wire.messages import Job
from tests.brokers import federation_of, kit, requires_mosquitto

HOSTILE = Path(__file__).parent / "hostile"
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "parties" / "federation.yaml"  # 3 parties, 3 sites


def _csv(path: Path) -> Any:
    """The way the sum protocol reads a column: missing cells allowed, the default bound."""
    return read_input(f"{path}:bmi", "bmi", missing_ok=True, bound=2.0**30)


def _gwas(prefix: Path) -> Any:
    """What a site computes for a GWAS job on the fileset ``prefix`` (a ``.pheno`` beside
    it: ``linear`` on its column bmi, else ``assoc`` on the .fam phenotype)."""
    pheno = Path(f"{prefix}.pheno").exists()
    spec = parse_spec(
        {"name": "g", "protocol": "gwas", "tests": ["linear" if pheno else "assoc"]}
        | ({"pheno": "bmi"} if pheno else {}),
        "test",
        load_federation(EXAMPLE),
    )
    return site_statistics(spec, prefix)


def _model(path: Path) -> Any:
    """What a fedavg site shares from its model file (.npz, .safetensors) for a job
    averaging ``w``; an .npy as a named input."""
    if path.suffix == ".npy":
        return read_input(str(path), "w")
    fedavg = protocol("fedavg")
    spec = parse_spec({"name": "fit", "protocol": "fedavg", "inputs": ["w"]}, "test")
    job = Job(
        id="fit", protocol="fedavg", inputs=fedavg.job_inputs(spec), t=1, n=3,
        modulus=FAST.modulus, analyst="analyst", spec=spec.to_dict(),
    )  # fmt: skip
    return fedavg.site_data(spec, job, SiteSource(site="oslo", data=path))


READERS: dict[str, Callable[[Path], Any]] = {
    "spec": lambda path: load_spec(path, load_federation(EXAMPLE)),
    "federation": load_federation,
    "party": load_party_config,
    "site": load_site_config,
    "csv": _csv,
    "genotypes": _gwas,
    "model": _model,
}
FILESETS = ("genotypes",)  # families whose case is a prefix: PREFIX.bed, .bim, .fam, ...

BOMB = "its aliases expand to more than 100000 values (an alias bomb?)"
DUPLICATE = "invalid YAML: duplicate key"
LATIN1 = "not UTF-8 text (byte 0x"
EMPTY = "the top level must be a mapping of keys to values, got an empty file"

CASES: dict[str, tuple[str, ...]] = {
    # spec files (smpc/config/spec.py through smpc.protocols.registry.load_spec)
    "spec/wrong-type.yaml": ("rounds: input should be a valid integer (got '3')",),
    "spec/unknown-key.yaml": ("treshold: unknown key (did you mean 'threshold'?",),
    "spec/huge-number.yaml": ("min_sites: 1000000", "is more than the 3 sites", "lower min_sites"),
    "spec/huge-float.yaml": ("timeout: input should be a finite number (got inf)",),
    "spec/huge-digits.yaml": ("invalid YAML: a number of more than 4300 digits",),
    "spec/negative-threshold.yaml": ("threshold: input should be greater than or equal to 0",),
    "spec/duplicate-key.yaml": ("line 5, column 1", f"{DUPLICATE} 'threshold' (give each"),
    "spec/alias-bomb.yaml": (BOMB, "write the values out"),
    "spec/recursive-alias.yaml": ("line 3, column 9", "alias refers to the value that contains"),
    "spec/deep-nesting.yaml": ("invalid YAML: values nested too deeply",),
    "spec/latin1.yaml": ("line 3", LATIN1, "save the file as UTF-8"),
    "spec/empty.yaml": (EMPTY,),
    # federation files (smpc/config/federation.py)
    "federation/wrong-type.yaml": ("threshold: input should be a valid integer (got '1')",),
    "federation/unknown-key.yaml": ("parties.1.prot: unknown key (allowed here: name, host",),
    "federation/huge-number.yaml": ("broker.port: input should be less than or equal to 65535",),
    "federation/huge-ports.yaml": ("parties.1.mpyc_ports: port range", "outside 1024-65535"),
    "federation/negative-threshold.yaml": ("threshold: input should be greater than or equal",),
    "federation/duplicate-key.yaml": ("line 3, column 1", f"{DUPLICATE} 'threshold'"),
    "federation/alias-bomb.yaml": (BOMB,),
    "federation/latin1.yaml": ("line 1", LATIN1),
    "federation/empty.yaml": (EMPTY,),
    "federation/not-a-mapping.yaml": ("the top level must be a mapping", "got a list"),
    # party configs (smpc/party/config.py)
    "party/wrong-type.yaml": ("policy.min_sites: input should be a valid integer (got '2')",),
    "party/unknown-key.yaml": ("polcy: unknown key (allowed here: kit, store",),
    "party/huge-number.yaml": ("policy.job_window: input should be a finite number (got inf)",),
    "party/negative-threshold.yaml": ("policy.min_threshold: input should be greater than or",),
    "party/duplicate-key.yaml": ("line 3, column 1", f"{DUPLICATE} 'store'"),
    "party/alias-bomb.yaml": (BOMB,),
    "party/latin1.yaml": ("line 1", LATIN1),
    "party/empty.yaml": (EMPTY,),
    # site configs (smpc/site/config.py)
    "site/wrong-type.yaml": ("inputs.age: input should be a valid string (got 42)", "quote it"),
    "site/unknown-key.yaml": ("dta: unknown key (allowed here: kit, federation, inputs, data",),
    "site/huge-number.yaml": ("policy.min_threshold: input should be a valid integer (got inf)",),
    "site/negative-threshold.yaml": ("policy.min_threshold: input should be greater than or",),
    "site/duplicate-key.yaml": ("line 4, column 3", f"{DUPLICATE} 'age'"),
    "site/alias-bomb.yaml": (BOMB,),
    "site/latin1.yaml": ("line 1", LATIN1),
    "site/empty.yaml": (EMPTY,),
    # CSV inputs (smpc/io/inputs.py), column bmi as the sum protocol reads it
    "csv/nan.csv": ("row 3, column 'bmi': 'NaN' is not a finite number",),
    "csv/inf.csv": ("row 3, column 'bmi': 'inf' is not a finite number",),
    "csv/huge.csv": ("row 3, column 'bmi': 1e+308 exceeds the bound |x| < 2^30", "int_bits"),
    "csv/empty.csv": ("empty file, expected a header row",),
    "csv/latin1.csv": ("not UTF-8 text: byte 0xf8 at offset 26 (row 2)", "iconv -f latin1"),
    "csv/ragged-long.csv": ("row 3 has 3 fields, the header has 2", "decimal comma"),
    "csv/ragged-short.csv": ("row 3 has 1 fields, the header has 2",),
    "csv/text.csv": ("row 3, column 'bmi': 'obese' is not a finite number",),
    "csv/long-text.csv": ("row 2, column 'bmi': 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...' is",),
    "csv/huge-cell.csv": ("line 2: not CSV: field larger than field limit (131072)",),
    "csv/duplicate-column.csv": ("row 1: the header names column 'bmi' twice (fields 2 and 3)",),
    # genotype filesets (smpc/protocols/gwas/genotypes.py, plink/fileset.py, phenofiles.py)
    "genotypes/truncated": ("truncated.bed: 8 bytes, expected 9 for the .fam's 6 samples",),
    "genotypes/magic": ("magic.bed: not a PLINK 1 .bed file: it starts with bytes 42 45 44",),
    "genotypes/sample-major": ("sample-major.bed: a sample-major .bed", "--make-bed"),
    "genotypes/bim-rows": ("bim-rows.bim: 4 variants, but", "holds 3 variants of the .fam's 6"),
    "genotypes/fam-rows": ("fam-rows.fam: 9 samples, but", "(5 to 8 samples)", "does not belong"),
    "genotypes/duplicate-ids": ("duplicate-ids.fam: lines 2 and 4: sample FID 'fam1' IID 's1'",),
    "genotypes/pheno-text": ("pheno-text.pheno: line 5, column bmi: 'obese' is not a number",),
    "genotypes/bim-text": ("bim-text.bim: variant 2 (rs2): column 4 (BP) '2kb' is not an",),
    "genotypes/fam-fields": ("fam-fields.fam: line 3 has 5 fields, a .fam line has 6",),
    "genotypes/latin1": ("latin1.fam: line 5: not UTF-8 text (byte 0xf8 at offset 74)",),
    # model files (smpc/io/modelfile.py, smpc/io/npyfile.py)
    "model/object-array.npz": ("object-array.npz:w.npy: an array of Python objects", "never"),
    "model/pickle.npz": ("pickle.npz: holds pickled Python data, which is never loaded",),
    "model/huge-shape.npz": ("w.npy: declares shape (1000000000000,) of float64", "holds 64"),
    "model/huge-shape.npy": ("huge-shape.npy: declares shape (1000000000000,) of float64",),
    "model/huge-header.npy": ("huge-header.npy: an .npy header of 100000 bytes",),
    "model/zip-lie.npz": ("zip-lie.npz:w.npy: declares 4294967168 bytes from 192 stored",),
    "model/huge-header.safetensors": ("not a readable safetensors file", "header too large"),
    "model/huge-tensor.safetensors": ("not a readable safetensors file", "not fully covered"),
    "model/huge-weight.npz": ("num_examples 1e+300 is not a number of examples (below 2^40)",),
    "model/nan-weights.npz": ("nan-weights.npz: parameter 'w' must be finite numbers",),
}
ARMED = ("model/object-array.npz", "model/pickle.npz")  # unpickled, they make unpickled.marker

ACCEPTED: dict[str, Callable[[Any], bool]] = {
    # A UTF-8 byte order mark, as Excel's "CSV UTF-8" writes it, is dropped, not refused.
    "csv/bom.csv": lambda column: column.tolist() == [23.1, 25.0, 27.4],
    # Allele codes are labels, as in PLINK 1.9 (multi-character, <DEL>, N, X, 1): kept
    # verbatim in the table every party aligns on (plink1.9 --freq accepts this fileset).
    "genotypes/alleles": lambda shared: shared[1] == 6,
    "genotypes/good": lambda shared: shared[1] == 6,
}
DAEMON_CASES = ("model/shapes-oslo.npz", "model/shapes-bergen.npz")  # two sites' models


def _case_files() -> set[str]:
    """Every case of the corpus: a file, or a fileset's prefix (``PREFIX.bed`` etc.)."""
    found = set()
    for path in HOSTILE.rglob("*"):
        if path.is_file() and path.name != "README.md":
            case = str(path.relative_to(HOSTILE))
            found.add(case.split(".")[0] if case.startswith(FILESETS) else case)
    return found


def test_every_case_in_the_corpus_has_its_expected_error():
    assert _case_files() == set(CASES) | set(ACCEPTED) | set(DAEMON_CASES)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def error_of(case: str, workdir: Path) -> str:
    """The UserError the case's reader gives on a copy of the case in ``workdir``; the
    copy's directory is unchanged by the read (nothing written or removed)."""
    family = case.split("/")[0]
    copy = workdir / case
    copy.parent.mkdir(parents=True, exist_ok=True)
    for path in (HOSTILE / case).parent.glob(f"{Path(case).name}*"):
        shutil.copyfile(path, copy.parent / path.name)
    before = _snapshot(workdir)
    with pytest.raises(UserError) as caught:
        READERS[family](copy)
    assert _snapshot(workdir) == before
    return str(caught.value)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_case_is_one_clear_line(case, tmp_path):
    message = error_of(case, tmp_path)
    assert "\n" not in message, message
    assert message.startswith(f"{tmp_path / case}"), message  # names the file first
    for fragment in CASES[case]:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_accepted_case_reads(case):
    family = case.split("/")[0]
    assert ACCEPTED[case](READERS[family](HOSTILE / case))


def test_non_acgt_alleles_are_kept_as_plink_reads_them():
    with (
        open_site(HOSTILE / "genotypes" / "alleles") as site,
        open_site(HOSTILE / "genotypes" / "good") as good,
    ):
        assert site.variants.a1.tolist() == ["AT", "<DEL>", "X"]
        assert site.variants.a2.tolist() == ["A", "N", "1"]
        assert (site.read_chunk([0, 1, 2]) == good.read_chunk([0, 1, 2])).all()


@pytest.mark.parametrize("case", ARMED)
def test_pickles_are_never_unpickled(case, tmp_path, monkeypatch):
    """The armed files make ``unpickled.marker`` in the current directory when unpickled
    (shown on a copy with allow_pickle=True); reading them refuses, and makes none."""
    monkeypatch.chdir(tmp_path)
    error_of(case, tmp_path / "read")
    assert not (tmp_path / "unpickled.marker").exists()
    armed = HOSTILE / case
    if case.endswith("object-array.npz"):
        with np.load(armed, allow_pickle=True) as archive:
            archive["w"]
    else:
        with armed.open("rb") as f:
            pickle.load(f)
    assert (tmp_path / "unpickled.marker").exists()


def smpc(*args: str | Path, cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "smpc.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=60, env=env, **kwargs,
    )  # fmt: skip


def _command(family: str, path: Path, keys_dir: Path, workdir: Path) -> list[str | Path]:
    """The ``smpc`` command that reads a file of ``family`` first."""
    return {
        "spec": ["run", path, "--kit", keys_dir / "kits" / "analyst", "--wait", "1"],
        "federation": ["keys", "init", path, "--out", workdir / "keys"],
        "party": ["party", "serve", "--config", path],
        "site": ["site", "serve", "--config", path],
    }[family]


CLI_CASES = [
    f"{family}/{name}.yaml"
    for family in ("spec", "federation", "party", "site")
    for name in ("alias-bomb", "duplicate-key", "latin1", "negative-threshold")
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_smpc_command_prints_one_line_and_writes_nothing(case, keys_dir, tmp_path):
    family = case.split("/")[0]
    workdir = tmp_path / "work"
    workdir.mkdir()
    copy = tmp_path / case
    copy.parent.mkdir(parents=True)
    shutil.copyfile(HOSTILE / case, copy)
    out = smpc(*_command(family, copy, keys_dir, workdir), cwd=workdir)
    assert out.returncode == 2, out
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"smpc: error: {copy}: ")
    for fragment in CASES[case]:
        assert fragment in lines[0]
    assert not list(workdir.iterdir())  # no output, kit or store directory made


def test_an_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    """With 256 MB of address space to spare the bomb is still refused by its one line:
    the check counts the alias graph and expands nothing (expanded, it is 3.4e9 strings)."""
    script = (
        "import resource, sys\n"
        "from smpc.config.federation import read_yaml_mapping\n"
        "from smpc.errors import UserError\n"
        "with open('/proc/self/statm') as f: used = int(f.read().split()[0]) * 4096\n"
        "resource.setrlimit(resource.RLIMIT_AS, (used + 2**28, used + 2**28))\n"
        "try: read_yaml_mapping(sys.argv[1])\n"
        "except UserError as e: print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script, HOSTILE / "spec" / "alias-bomb.yaml"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 0 and BOMB in out.stdout, out


# --- the daemons ----------------------------------------------------------------------


def _shares(tmp_path: Path, job: str) -> dict[str, list[str]]:
    """The sites whose shares of ``job`` each party's store holds."""
    from smpc.party.store import PartyStore

    held = {}
    for party in ("alpha", "beta", "gamma"):
        with PartyStore(tmp_path / "store" / party) as store:
            held[party] = sorted({s.site for s in store.shares(job)})
    return held


def _install(case: str, target: Path) -> None:
    """Put a case's file (or fileset) at ``target`` (or ``target.bed``, ``.bim``, ...)."""
    source = HOSTILE / case
    if case.startswith(FILESETS):
        for suffix in (".bed", ".bim", ".fam"):
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
    else:
        shutil.copyfile(source, target)


def _failed_line(log: str, job: str) -> str:
    lines = [ln for ln in log.splitlines() if f"event=upload-failed job={job} " in ln]
    assert len(lines) == 1, log
    return lines[0]


@requires_mosquitto
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_daemons_refuse_hostile_inputs_and_serve_on(keys_dir, tmp_path):
    """Real Mosquitto, three ``smpc party serve`` and ``smpc site serve`` for oslo.

    - The parties refuse signed jobs whose specs are hostile (an unknown key, a negative
      threshold, a huge number), each with a status naming the field, and store no share.
    - oslo's daemon reads a hostile CSV (sum), model file (fedavg, an armed pickle) and
      fileset (gwas, a truncated .bed) for three jobs: one ``upload-failed`` line each
      naming the file and field, and no share at any party. The files fixed, it answers
      three new jobs of the same protocols, stored by every party.
    - ``smpc upload`` of a hostile CSV prints its one line and exits 2.
    - Two sites' models of different shapes: every party fails the job naming both.
    """
    from smpc.analyst.jobs import build_job
    from smpc.wire.messages import stamp_job
    from tests.test_party_daemon import Statuses, _closing, _log, _parties, _publish
    from tests.test_upload_integration import _broker, _start_site, _stop, _wait_for_log

    federation = federation_of(keys_dir)
    analyst = kit(keys_dir, "analyst")

    def job(job_id: str, spec: dict[str, Any], **changes: Any):
        built = build_job(parse_spec(spec, "test", federation), analyst, federation, job_id=job_id)
        return stamp_job(built.model_copy(update={"spec": {**built.spec, **changes}}), 600)

    sum_spec = {"name": "bmi", "protocol": "sum", "inputs": ["bmi"]}
    fedavg_spec = {"name": "fit", "protocol": "fedavg", "inputs": ["w"]}
    gwas_spec = {"name": "scan", "protocol": "gwas", "tests": ["assoc"]}
    hostile_jobs = {
        "spec-unknown-key": (job("spec-unknown-key", sum_spec, treshold=1), "treshold: unknown"),
        "spec-negative-threshold": (
            job("spec-negative-threshold", sum_spec, threshold=-1),
            "threshold: input should be greater than or equal to 0 (got -1)",
        ),
        "spec-huge-number": (
            job("spec-huge-number", sum_spec, min_sites=10**30),
            f"min_sites: {10**30} is more than the 3 sites",
        ),
    }
    bad_inputs = {  # job -> (its job, the site's data file, the hostile case, its error)
        "csv-bad": (job("csv-bad", sum_spec), "oslo.csv", "csv/nan.csv"),
        "model-bad": (job("model-bad", fedavg_spec), "oslo.npz", "model/pickle.npz"),
        "gwas-bad": (job("gwas-bad", gwas_spec), "oslo", "genotypes/truncated"),
    }
    fixed = {
        "oslo.csv": "csv/bom.csv",
        "oslo.npz": "model/shapes-oslo.npz",
        "oslo": "genotypes/good",
    }
    good = {
        "csv-good": job("csv-good", sum_spec),
        "model-good": job("model-good", fedavg_spec),
        "gwas-good": job("gwas-good", gwas_spec),
    }
    shapes = job("shapes", fedavg_spec)
    for _, target, case in bad_inputs.values():
        _install(case, tmp_path / target)
    config = tmp_path / "oslo.yaml"
    config.write_text(
        f"kit: {keys_dir / 'kits' / 'oslo'}\nstate: {tmp_path / 'oslo.answered'}\n"
        f"data: {{sum: {tmp_path / 'oslo.csv'}, fedavg: {tmp_path / 'oslo.npz'}, "
        f"gwas: {tmp_path / 'oslo'}}}\n"
    )
    ids = [*hostile_jobs, *bad_inputs, *good, "shapes"]
    parties, site = [], None
    with _broker(keys_dir, tmp_path), Statuses(keys_dir, ids) as seen:
        try:
            parties = _parties(keys_dir, tmp_path)
            site = _start_site(config, tmp_path / "oslo.log")

            for job_id, (hostile, reason) in hostile_jobs.items():
                _publish(keys_dir, hostile)
                for party in ("alpha", "beta", "gamma"):
                    status = seen.wait(party, job_id, "refused", 30)
                    assert reason in status.reason and "\n" not in status.reason, status.reason
            for bad, _, _ in bad_inputs.values():
                _publish(keys_dir, bad)
            for job_id in bad_inputs:
                _wait_for_log(site, f"event=upload-failed job={job_id} ")
            for job_id, (_, target, case) in bad_inputs.items():
                line = _failed_line(_log(site), job_id)
                assert f'reason="{tmp_path / target}' in line, line  # a UserError's line
                for fragment in CASES[case]:  # the case's, its file name being oslo's here
                    assert fragment.removeprefix(Path(case).stem) in line, line

            # smpc upload of a hostile CSV: one line on stderr, exit 2, nothing stored
            bad_csv = tmp_path / "nan.csv"
            _install("csv/nan.csv", bad_csv)
            out = smpc(
                "upload", "--kit", keys_dir / "kits" / "tromso", "--job", "csv-bad",
                "--input", f"bmi={bad_csv}", "--timeout", "30", cwd=tmp_path,
            )  # fmt: skip
            assert out.returncode == 2, out
            assert out.stderr.splitlines() == [
                f"smpc: error: {bad_csv}: row 3, column 'bmi': 'NaN' is not a finite number"
            ], out.stderr

            for target, case in fixed.items():  # the site fixes its files; the daemon reads
                _install(case, tmp_path / target)  # them again for the next jobs
            for good_job in good.values():
                _publish(keys_dir, good_job)
            for job_id in good:
                _wait_for_log(site, f"event=upload-complete job={job_id}", timeout=60)

            # models of two shapes: stored (each is well formed), the job fails by name
            _publish(keys_dir, shapes)
            for site_name, case in (("bergen", "shapes-bergen.npz"), ("tromso", "shapes-oslo.npz")):
                model = tmp_path / f"{site_name}.npz"
                _install(f"model/{case}", model)
                up = smpc(
                    "upload", "--kit", keys_dir / "kits" / site_name, "--job", "shapes",
                    "--data", model, "--timeout", "60", cwd=tmp_path,
                )  # fmt: skip
                assert up.returncode == 0, up.stderr
            _publish(keys_dir, _closing(seen, shapes, ("bergen", "tromso")))
            for party in ("alpha", "beta", "gamma"):
                status = seen.wait(party, "shapes", "failed", 30)
                assert (
                    "sites sent 'w.weighted' in different shapes: bergen (3,), tromso (2,)"
                    in status.reason
                ), status.reason
            assert all(proc.poll() is None for proc in [*parties, site])
        finally:
            _stop([*parties, *([site] if site else [])])
    for proc in [*parties, site]:
        assert "Traceback" not in _log(proc)
    for job_id in [*hostile_jobs, *bad_inputs]:
        assert _shares(tmp_path, job_id) == {"alpha": [], "beta": [], "gamma": []}
    for job_id in good:
        assert _shares(tmp_path, job_id) == {p: ["oslo"] for p in ("alpha", "beta", "gamma")}
    assert not (tmp_path / "unpickled.marker").exists()
