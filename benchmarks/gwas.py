"""GWAS of 100,000 SNPs x 10,000 samples from 5 sites, N=3, t=1, end to end vs PLINK 1.9.

Each measurement is one ``smpc local`` run (:func:`smpc.local.run_local` in a child
process): keys, the broker (``smpc local``'s default: Mosquitto when installed, else
the embedded one; the JSON field ``broker`` says which), three ``smpc party serve``
daemons, one ``smpc upload`` per site (reading its own .bed, computing and sharing its statistics)
and the analyst, from the start to the PLINK result files on disk:

* ``assoc_seconds`` — ``tests: [assoc]`` on the .fam case/control status;
* ``linear_seconds`` — ``tests: [linear]``, ``pheno: QT``, ``covar: [AGE, SEX2]``;
* ``linear_aggregates_seconds`` — the same with ``reveal: aggregates``.

``assoc`` and ``linear`` each use ``reveal: statistics`` (computed and opened inside
MPyC) when the spec layer accepts it for that test, else ``reveal: aggregates``; the JSON
field ``reveal`` says which, per test (when linear falls back, its run is also the
aggregates one). When assoc runs with ``statistics``, ``assoc_aggregates_seconds`` times
it with ``reveal: aggregates`` too.

Baselines in the same run, on the pooled fileset: ``plink1.9 --bfile POOLED --allow-no-sex
--assoc`` and ``--linear hide-covar --pheno POOLED.pheno --pheno-name QT --covar POOLED.cov
--covar-name AGE,SEX2``. Every column of our .assoc and .assoc.linear is compared with
PLINK's (identical strings, numbers within one unit of PLINK's last printed digit) and
the number of equal rows printed.

``peak_rss_mb`` is the largest process of the runs (a party daemon, a party's MPyC
session, an uploader, the broker or the analyst): the ``smpc local`` process's (the
analyst's) VmHWM and ``getrusage`` of its waited-for descendants, with a per-role split
from polling ``/proc/PID/status`` VmHWM.
The progress lines split each run's seconds into phases from the parties' logs.

The cohort (NumPy: Beta allele frequencies, Hardy-Weinberg genotypes, 1% missing calls,
case/control status, QT, AGE, SEX2) is written with bed-reader and split into the sites
with ``plink1.9 --keep --make-bed`` (each site's own A1); POOLED is their
``plink1.9 --merge-list`` in site order, as PLINK's reference is defined (an allele
frequency of exactly 0.5 keeps the merged .bim's order). It is cached in
``--data DIR`` (default: one folder per size under the system temp dir) and its
generation time is printed but is not a figure.

Prints progress, then one JSON line. Run: ``python benchmarks/gwas.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fedavg import _vm_hwm_mb

from smpc.broker.mosquitto import MOSQUITTO

PLINK = "plink1.9"
SITE_NAMES = ("oslo", "bergen", "tromso", "stavanger", "trondheim", "bodo", "alta", "molde")
ALLELES = np.array([("A", "C"), ("A", "G"), ("C", "T"), ("G", "T"), ("A", "T"), ("C", "G")])
CHUNK = 2000
"""SNPs generated at a time."""


# --- the cohort ----------------------------------------------------------------------


def _write_rows(path: Path, rows: np.ndarray, header: str | None = None) -> None:
    lines = ([header] if header else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _plink(*args: str) -> float:
    """Run plink1.9; its wall-clock seconds."""
    start = time.perf_counter()
    run = subprocess.run([PLINK, *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{PLINK} {' '.join(args)} failed:\n{run.stdout[-3000:]}")
    return time.perf_counter() - start


def generate(data: Path, snps: int, samples: int, sites: int, seed: int = 1) -> dict[str, Any]:
    """Write POOLED and the sites' filesets into ``data`` unless they are there already."""
    meta_path = data / "cohort.json"
    wanted = {"snps": snps, "samples": samples, "sites": sites, "seed": seed, "pooled": "merge"}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in wanted} == wanted:
            return meta
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()

    p = np.clip(rng.beta(0.5, 0.5, snps), 0.005, 0.995)
    q0, q1 = (1 - p) ** 2, 1 - p**2  # P(g = 0), P(g <= 1): copies of A1 (frequency p)
    g = np.empty((samples, snps), dtype=np.int8, order="F")
    for lo in range(0, snps, CHUNK):
        hi = min(lo + CHUNK, snps)
        u = rng.random((samples, hi - lo), dtype=np.float32)
        block = (u >= q0[lo:hi]).astype(np.int8) + (u >= q1[lo:hi])
        block[rng.random((samples, hi - lo), dtype=np.float32) < 0.01] = -127
        g[:, lo:hi] = block

    sex2 = rng.integers(0, 2, samples)
    age = np.round(rng.normal(55.0, 10.0, samples), 1)
    common = np.flatnonzero((p > 0.2) & (p < 0.8))
    causal = np.sort(rng.choice(common, 10, replace=False))
    gc = g[:, causal].astype(np.float64)
    gc[gc < 0] = np.nan
    gc = np.where(np.isnan(gc), np.nanmean(gc, axis=0), gc) - np.nanmean(gc, axis=0)
    risk = gc @ rng.choice([-0.5, -0.3, 0.3, 0.5], len(causal))
    case = rng.random(samples) < 1.0 / (1.0 + np.exp(-(risk - 0.2)))
    status = np.where(case, 2, 1)
    status[rng.choice(samples, samples // 200, replace=False)] = -9
    qt = 0.5 * risk + 0.03 * (age - 55.0) + 0.4 * sex2 + rng.normal(0.0, 1.0, samples)
    qt_text = np.char.mod("%.4f", qt).astype(object)
    qt_text[rng.choice(samples, samples // 150, replace=False)] = "NA"
    age_text = np.char.mod("%.1f", age).astype(object)
    age_text[rng.choice(samples, samples // 200, replace=False)] = "-9"

    fid = np.char.add("F", np.arange(1, samples + 1).astype(str))
    iid = np.char.add("I", np.arange(1, samples + 1).astype(str))
    fam = np.column_stack(
        [fid, iid, np.zeros(samples, int), np.zeros(samples, int), 2 - sex2, status]
    )
    chrom = np.sort(rng.integers(1, 23, snps))
    bp = np.empty(snps, dtype=np.int64)
    for c in range(1, 23):
        at = np.flatnonzero(chrom == c)
        bp[at] = np.sort(rng.choice(np.arange(10_000, 10_000 + 200 * snps), len(at), False))
    pair = ALLELES[rng.integers(0, len(ALLELES), snps)]
    swap = rng.random(snps) < 0.5
    a1, a2 = np.where(swap, pair[:, 1], pair[:, 0]), np.where(swap, pair[:, 0], pair[:, 1])
    snp = np.char.add("rs", np.arange(1, snps + 1).astype(str))

    from bed_reader import to_bed

    generated = data / "GENERATED"
    to_bed(generated.with_suffix(".bed"), g, count_A1=True, properties={"sid": snp})
    del g
    _write_rows(generated.with_suffix(".fam"), fam)
    _write_rows(
        generated.with_suffix(".bim"),
        np.column_stack([chrom, snp, np.zeros(snps, int), bp, a1, a2]),
    )
    _write_rows(data / "POOLED.pheno", np.column_stack([fid, iid, qt_text]), "FID IID QT")
    _write_rows(
        data / "POOLED.cov", np.column_stack([fid, iid, age_text, sex2]), "FID IID AGE SEX2"
    )

    weights = np.linspace(2.0, 1.0, sites)  # uneven: the first site twice the last
    bounds = np.round(np.concatenate([[0], np.cumsum(weights)]) / weights.sum() * samples)
    bounds = bounds.astype(int)
    site_samples = {}
    for k, name in enumerate(SITE_NAMES[:sites]):
        rows = np.arange(bounds[k], bounds[k + 1])
        keep = data / f"{name}.keep"
        _write_rows(keep, np.column_stack([fid[rows], iid[rows]]))
        prefix = data / name
        _plink(
            "--bfile", str(generated), "--allow-no-sex", "--keep", str(keep), "--make-bed",
            "--out", str(prefix),
        )  # fmt: skip
        for ext in (".log", ".nosex", ".keep"):
            (data / f"{name}{ext}").unlink(missing_ok=True)
        _write_rows(
            data / f"{name}.pheno", np.column_stack([fid, iid, qt_text])[rows], "FID IID QT"
        )
        _write_rows(
            data / f"{name}.cov",
            np.column_stack([fid, iid, age_text, sex2])[rows],
            "FID IID AGE SEX2",
        )
        site_samples[name] = len(rows)
    merge_list = data / "merge.txt"
    merge_list.write_text("\n".join(str(data / n) for n in site_samples) + "\n")
    _plink(
        "--merge-list", str(merge_list), "--allow-no-sex", "--indiv-sort", "none",
        "--make-bed", "--out", str(data / "POOLED"),
    )  # fmt: skip
    for path in [merge_list, *data.glob("GENERATED.*"), *data.glob("POOLED.log")]:
        path.unlink(missing_ok=True)
    meta = {
        **wanted,
        "site_samples": site_samples,
        "causal": [str(s) for s in snp[causal]],
        "generation_seconds": round(time.perf_counter() - start, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# --- one smpc local run, in a child process ----------------------------------------------


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _role(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    if b"party" in argv and b"serve" in argv:
        return "party"
    if b"upload" in argv:
        return "uploader"
    if b"smpc.mpc.session" in argv:
        return "mpyc_session"
    if b"smpc.broker" in argv or argv[0].endswith(b"mosquitto"):
        return "broker"
    return "other"


class _Poller(threading.Thread):
    """Largest VmHWM per role among this process's descendants, polled every 0.2 s."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[str, float] = {}
        self.stop = threading.Event()
        self.workdir = workdir

    def run(self) -> None:
        me, polls = os.getpid(), 0
        while not self.stop.wait(0.2):
            polls += 1
            if polls % 10 == 0:
                self._fail_on_crash()
            for pid in _descendants(me):
                try:
                    mb = _vm_hwm_mb(pid)
                except OSError:
                    continue
                if mb <= 0:  # a zombie has no memory figures
                    continue
                role = _role(pid)
                self.peaks[role] = max(self.peaks.get(role, 0.0), mb)

    def _fail_on_crash(self) -> None:
        """A party that crashed leaves the analyst waiting for its timeout: stop now."""
        for log in self.workdir.glob("party*.log"):
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                print(f"{log}:\n{text[-3000:]}", file=sys.stderr, flush=True)
                os._exit(1)


def _local_child(spec: str, out: str, workdir: str, sites: list[str]) -> None:
    """``--role local``: one run_local; prints a JSON line, exit code 3 = statistics refused."""
    from smpc.errors import UserError
    from smpc.local import run_local

    poller = _Poller(Path(workdir))
    poller.start()
    start = time.perf_counter()
    try:
        run_local(
            Path(spec),
            {s.split("=", 1)[0]: Path(s.split("=", 1)[1]) for s in sites},
            Path(out),
            parties=3,
            threshold=1,
            workdir=Path(workdir),
            timeout=3600.0,
        )
    except UserError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        sys.exit(3 if "reveal: statistics" in str(exc) else 1)
    seconds = time.perf_counter() - start
    poller.stop.set()
    poller.join()
    mb = 1024.0  # ru_maxrss is in KiB on Linux
    peaks = dict(poller.peaks)
    # VmHWM, not getrusage: a process's ru_maxrss survives exec, so it would include the
    # benchmark's own peak (the cohort it generated) at the time it started this child.
    peaks["analyst"] = _vm_hwm_mb(os.getpid())
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mb
    report = {
        "seconds": seconds,
        "started": time.time() - seconds,
        "peak_rss_mb": max(peaks["analyst"], children),
        "rss": peaks,
    }
    print(json.dumps(report), flush=True)


class StatisticsRefused(Exception):
    pass


def smpc_local(name: str, spec: str, sites: dict[str, Path], root: Path) -> dict[str, Any]:
    """Run ``spec`` through smpc local in a child process; its report (plus ``out``)."""
    spec_file = root / f"{name}.yaml"
    spec_file.write_text(spec)
    out, workdir = root / f"out-{name}", root / f"work-{name}"
    shutil.rmtree(workdir, ignore_errors=True)
    run = subprocess.run(
        [
            sys.executable, __file__, "--role", "local", str(spec_file), str(out), str(workdir),
            *[f"{s}={p}" for s, p in sites.items()],
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    lines = run.stdout.strip().splitlines()
    if run.returncode == 3:
        raise StatisticsRefused(json.loads(lines[-1])["error"])
    if run.returncode != 0:
        raise SystemExit(f"smpc local ({name}) failed:\n{run.stdout[-2000:]}{run.stderr[-3000:]}")
    report = json.loads(lines[-1])
    report["out"] = out
    report["phases"] = _phases(workdir, report["started"], report["seconds"])
    return report


def _phases(workdir: Path, started: float, seconds: float) -> dict[str, float]:
    """Seconds of each phase, from the parties' logged events.

    ``setup`` keys, broker and party daemons up, job accepted; ``upload`` until the last
    share is stored (the sites read their .bed, compute, share and send); ``combine``
    until the last party has computed (with ``reveal: statistics`` split into aligning
    and adding on shares until the first MPyC session starts, and ``mpyc`` the session);
    ``analyst`` the rest (receive, open or reconstruct, write the files).
    """
    accepted, stored, computed, session = [], [], [], []
    for log in workdir.glob("party*.log"):
        for line in log.read_text(errors="replace").splitlines():
            try:
                at = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                at += int(line[20:23]) / 1000
            except ValueError:
                continue
            if "event=job-accepted" in line:
                accepted.append(at)
            elif "event=share-stored" in line:
                stored.append(at)
            elif "event=job-computed" in line:
                computed.append(at)
            elif "event=session-start" in line:
                session.append(at)
    if not (accepted and stored and computed):
        return {}
    marks = [started, min(accepted), max(stored), max(computed), started + seconds]
    names = ["setup", "upload", "combine", "analyst"]
    if session:
        marks.insert(3, min(session))
        names.insert(3, "mpyc")
    return {n: round(b - a, 2) for n, a, b in zip(names, marks[:-1], marks[1:], strict=True)}


# --- comparing with PLINK ------------------------------------------------------------------


def _unit(token: str) -> Decimal:
    """One unit of the last printed digit of a number as PLINK printed it."""
    mantissa, _, exponent = token.lower().partition("e")
    digits = mantissa.split(".")[1] if "." in mantissa else ""
    return Decimal(1).scaleb(-len(digits) + int(exponent or 0))


def compare_rows(ours: Path, plink: Path) -> tuple[int, int, list[str]]:
    """(variants whose row agrees in every column, variants in PLINK's table, a few
    disagreements): identical strings, numbers within one unit of PLINK's last digit."""

    def rows(path: Path) -> dict[str, list[str]]:
        lines = path.read_text().splitlines()
        i_snp = lines[0].split().index("SNP")
        return {(r := line.split())[i_snp]: r for line in lines}

    def same_token(q: str, p: str) -> bool:
        if q == p:
            return True
        try:
            return abs(Decimal(q) - Decimal(p)) <= _unit(p)
        except ArithmeticError:  # a string (an allele, NA) that differs
            return False

    mine, theirs = rows(ours), rows(plink)
    same, bad = 0, []
    for snp, row in theirs.items():
        got = mine.get(snp)
        ok = got is not None and len(got) == len(row) and all(map(same_token, got, row))
        same += ok
        if not ok and len(bad) < 5:
            bad.append(f"{snp}: {got} vs PLINK {row}")
    return same, len(theirs), bad


# --- the benchmark ------------------------------------------------------------------------


def run(snps: int, samples: int, sites: int, data: Path) -> dict[str, Any]:
    if shutil.which(PLINK) is None:
        raise SystemExit(f"{PLINK} is not installed (tests/run.sh installs the Debian package)")
    print(f"{snps:,} SNPs x {samples:,} samples, {sites} sites, 3 parties, t=1", flush=True)
    cached = (data / "cohort.json").exists()
    start = time.perf_counter()
    meta = generate(data, snps, samples, sites)
    if cached and time.perf_counter() - start < 1.0:
        print(f"  cohort: cached in {data}", flush=True)
    else:
        print(f"  cohort: generated in {time.perf_counter() - start:.1f} s into {data}", flush=True)
    print(f"  site samples: {meta['site_samples']}", flush=True)
    site_paths = {name: data / name for name in meta["site_samples"]}
    pooled = data / "POOLED"

    with tempfile.TemporaryDirectory(prefix="smpc-gwas-bench-") as tmp:
        root = Path(tmp)
        plink_assoc = _plink(
            "--bfile", str(pooled), "--allow-no-sex", "--assoc", "--out", str(root / "plink")
        )
        print(f"  plink1.9 --assoc: {plink_assoc:.2f} s", flush=True)
        plink_linear = _plink(
            "--bfile", str(pooled), "--allow-no-sex", "--linear", "hide-covar",
            "--pheno", f"{pooled}.pheno", "--pheno-name", "QT",
            "--covar", f"{pooled}.cov", "--covar-name", "AGE,SEX2", "--out", str(root / "plink"),
        )  # fmt: skip
        print(
            f"  plink1.9 --linear hide-covar (QT ~ g + AGE + SEX2): {plink_linear:.2f} s",
            flush=True,
        )

        assoc_spec = "name: assoc\nprotocol: gwas\ntests: [assoc]\nreveal: {}\n"
        linear_spec = (
            "name: linear\nprotocol: gwas\ntests: [linear]\npheno: QT\ncovar: [AGE, SEX2]\n"
            "reveal: {}\n"
        )
        reveal = {}
        assoc, reveal["assoc"] = _preferring_statistics("assoc", assoc_spec, site_paths, root)
        equal = {}
        same, total, bad = compare_rows(assoc["out"] / "assoc.assoc", root / "plink.assoc")
        print(f"  .assoc equals PLINK's in {same:,} of {total:,} rows {bad}", flush=True)
        equal["assoc"] = [same, total]

        linear, reveal["linear"] = _preferring_statistics("linear", linear_spec, site_paths, root)
        same, total, bad = compare_rows(
            linear["out"] / "linear.assoc.linear", root / "plink.assoc.linear"
        )
        print(f"  .assoc.linear equals PLINK's in {same:,} of {total:,} rows {bad}", flush=True)
        equal["linear"] = [same, total]
        if reveal["linear"] == "aggregates":
            aggregates = linear
            print("  linear (reveal: aggregates): the run above", flush=True)
        else:
            aggregates = smpc_local(
                "linear-aggregates", linear_spec.format("aggregates"), site_paths, root
            )
            print(f"  smpc linear (reveal: aggregates): {aggregates['seconds']:.2f} s", flush=True)
            _print_run(aggregates)
        runs = {"assoc": assoc, "linear": linear, "linear_aggregates": aggregates}
        if reveal["assoc"] == "statistics":  # for comparison: the same test, aggregates
            runs["assoc_aggregates"] = smpc_local(
                "assoc-aggregates", assoc_spec.format("aggregates"), site_paths, root
            )
            seconds = runs["assoc_aggregates"]["seconds"]
            print(f"  smpc assoc (reveal: aggregates): {seconds:.2f} s", flush=True)
            _print_run(runs["assoc_aggregates"])

    peak = max(r["peak_rss_mb"] for r in runs.values())
    extra = {}
    if "assoc_aggregates" in runs:
        seconds = runs["assoc_aggregates"]["seconds"]
        extra = {
            "assoc_aggregates_seconds": round(seconds, 2),
            "assoc_aggregates_ratio_vs_plink": round(seconds / plink_assoc, 2),
        }
    return {
        "benchmark": "gwas",
        "snps": snps,
        "samples": samples,
        "sites": sites,
        "site_samples": list(meta["site_samples"].values()),
        "parties": 3,
        "threshold": 1,
        "broker": "mosquitto" if Path(MOSQUITTO).is_file() else "embedded",
        "reveal": reveal,
        "assoc_seconds": round(assoc["seconds"], 2),
        "assoc_ratio_vs_plink": round(assoc["seconds"] / plink_assoc, 2),
        "linear_seconds": round(linear["seconds"], 2),
        "linear_ratio_vs_plink": round(linear["seconds"] / plink_linear, 2),
        "linear_aggregates_seconds": round(aggregates["seconds"], 2),
        "linear_aggregates_ratio_vs_plink": round(aggregates["seconds"] / plink_linear, 2),
        **extra,
        "peak_rss_mb": round(peak, 1),
        "peak_rss_mb_by_role": {
            role: round(max(r["rss"].get(role, 0.0) for r in runs.values()), 1)
            for role in ("party", "mpyc_session", "uploader", "broker", "analyst")
        },
        "phases_seconds": {name: r["phases"] for name, r in runs.items()},
        "rows_equal_plink": equal,  # [rows equal in every column, PLINK's rows]
        "plink_assoc_seconds": round(plink_assoc, 3),
        "plink_linear_seconds": round(plink_linear, 3),
        "generation_seconds": meta["generation_seconds"],
    }


def _preferring_statistics(
    name: str, spec: str, sites: dict[str, Path], root: Path
) -> tuple[dict[str, Any], str]:
    """Run ``spec`` with ``reveal: statistics``, or ``aggregates`` if that is refused."""
    reveal = "statistics"
    try:
        report = smpc_local(name, spec.format(reveal), sites, root)
    except StatisticsRefused as exc:
        print(f"  {name}: reveal: statistics refused ({exc})", flush=True)
        reveal = "aggregates"
        report = smpc_local(name, spec.format(reveal), sites, root)
    print(f"  smpc {name} (reveal: {reveal}): {report['seconds']:.2f} s", flush=True)
    _print_run(report)
    return report, reveal


def _print_run(report: dict[str, Any]) -> None:
    rss = ", ".join(f"{role} {mb:.0f}" for role, mb in sorted(report["rss"].items()))
    phases = ", ".join(f"{p} {s:.2f}" for p, s in report["phases"].items())
    print(f"    seconds: {phases}; peak RSS MB: {rss}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snps", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2,000 SNPs x 1,000 samples x 3")
    parser.add_argument("--data", type=Path, help="cohort cache folder (created if absent)")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        _local_child(*args.role[1:4], args.role[4:])
        return
    if args.quick:
        args.snps, args.samples, args.sites = 2_000, 1_000, 3
    if not 2 <= args.sites <= len(SITE_NAMES):
        parser.error(f"--sites: 2 to {len(SITE_NAMES)}")
    data = args.data or Path(tempfile.gettempdir()) / (
        f"smpc-gwas-{args.snps}x{args.samples}x{args.sites}"
    )
    print(json.dumps(run(args.snps, args.samples, args.sites, data)))


if __name__ == "__main__":
    main()
