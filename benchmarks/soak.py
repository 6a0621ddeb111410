"""30 jobs back to back through one set of daemons: results, leaks and memory growth.

A federation run by hand on this machine, as docs/deployment.md describes it: Mosquitto
(TLS, the generated config and ACL), three ``smpc party serve`` daemons and three
``smpc site serve`` daemons on the bundled demo data (``smpc/data/demo``, the GWAS
cohort ``smpc/data/gwas``), all started once. The analyst (this process, through
:func:`smpc.analyst.driver.run_spec`, what ``smpc run`` calls) then runs 30 specs one
after the other, cycling through

    gwas-assoc    the allelic test, ``reveal: aggregates``
    sum           cohort columns, opened by the analyst
    fedavg        the sites' fits, weighted by num_examples
    gwas-linear   QT ~ g + AGE + SEX2, ``reveal: aggregates``
    sum-parties   the same sum, ``deliver: parties``: opened inside an MPyC session

Every result is checked: sums and counts against NumPy on the sites' CSVs, the model
against the weighted average of the sites' models, every GWAS output file against
``plink1.9`` on the pooled fileset, byte for byte.

After each job (once the daemons are idle again, waiting up to 10 s), each daemon's
open file descriptors (/proc/PID/fd), threads, child processes and listening TCP ports
(its own and its children's) are compared with its baseline: what it held after the
warm-up, the first job of each kind (jobs 1-5). The warm-up is needed because two
thread pools start lazily and then stay, idle: asyncio's default executor (a worker per
``asyncio.to_thread`` running at once, at most ``min(32, cores + 4)``) and OpenBLAS's
(started by a site's first matrix product); what the warm-up added is printed.
``leaked_*`` is the largest excess over the baseline after any later job, summed over
the daemons (0: every daemon came back to its baseline after every job); processes and
ports also count, wherever they are, this federation's MPyC sessions outside the
daemons' trees and listeners on its MPyC ports.
``rss_growth_pct``: the largest growth of a party daemon's RSS from after job 1 to
after the last job.

Prints progress, one line per job, then one JSON line with ``jobs``,
``wrong_results``, ``rss_growth_pct``, ``leaked_fds``, ``leaked_threads``,
``leaked_processes``, ``leaked_ports``.

Run: ``python benchmarks/soak.py [--quick] [--jobs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from smpc.analyst.driver import run_spec
from smpc.broker.mosquitto import MosquittoBroker
from smpc.config.federation import load_federation
from smpc.errors import UserError
from smpc.pki.kit import load_broker_kit, load_kit
from smpc.pki.provision import init_keys
from smpc.protocols.registry import load_spec

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "smpc" / "data" / "demo"
GWAS = REPO / "smpc" / "data" / "gwas"
PARTIES = ("alpha", "beta", "gamma")
SITES = ("oslo", "bergen", "tromso")
COLUMNS = ("age", "bmi", "systolic_bp")
PLINK = "plink1.9"

SPECS = {
    "gwas-assoc": "name: assoc\nprotocol: gwas\ntests: [assoc]\nreveal: aggregates\n",
    "sum": "name: cohort\nprotocol: sum\ninputs: [age, bmi, systolic_bp]\n",
    "fedavg": "name: fit\nprotocol: fedavg\ninputs: [coef]\n",
    "gwas-linear": (
        "name: linear\nprotocol: gwas\ntests: [linear]\npheno: QT\ncovar: [AGE, SEX2]\n"
        "reveal: aggregates\n"
    ),
    "sum-parties": (
        "name: cohort\nprotocol: sum\ninputs: [age, bmi, systolic_bp]\ndeliver: parties\n"
    ),
}
KINDS = tuple(SPECS)
GWAS_FILES = {"gwas-linear": "linear.assoc.linear", "gwas-assoc": "assoc.assoc"}
SETTLE = 10.0  # seconds a daemon may take to become idle after a job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MPYC_PORTS = [range(27000 + 100 * i, 27050 + 100 * i) for i in range(len(PARTIES))]


def _federation(root: Path) -> Path:
    doc = {
        "name": "soak",
        "threshold": 1,
        "broker": {"host": "127.0.0.1", "port": _free_port()},
        "parties": [
            {"name": p, "host": "127.0.0.1", "mpyc_ports": f"{r.start}-{r.stop - 1}"}
            for p, r in zip(PARTIES, MPYC_PORTS, strict=True)
        ],
        "sites": [{"name": s} for s in SITES],
        "analysts": [{"name": "analyst"}],
    }
    path = root / "federation.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# -- what every job must give -------------------------------------------------------------------


def _expected(root: Path) -> dict[str, Any]:
    """The plaintext answers: NumPy on the sites' files, PLINK 1.9 on the pooled fileset."""
    sums: dict[str, float] = dict.fromkeys(COLUMNS, 0.0)
    counts: dict[str, int] = dict.fromkeys(COLUMNS, 0)
    for site in SITES:
        with (DEMO / f"{site}.csv").open() as f:
            for row in csv.DictReader(f):
                for column in COLUMNS:
                    if row[column].strip():
                        sums[column] += float(row[column])
                        counts[column] += 1
    models = [np.load(DEMO / f"{s}.npz") for s in SITES]
    total = sum(int(m["num_examples"]) for m in models)
    model = sum(int(m["num_examples"]) * m["coef"] for m in models) / total
    pooled = str(GWAS / "POOLED")
    common = [PLINK, "--bfile", pooled, "--allow-no-sex", "--out", str(root / "plink")]
    subprocess.run([*common, "--assoc"], check=True, capture_output=True, timeout=120)
    subprocess.run(
        [*common, "--linear", "hide-covar", "--pheno", f"{pooled}.pheno", "--pheno-name", "QT",
         "--covar", f"{pooled}.cov", "--covar-name", "AGE,SEX2"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return {
        "sums": sums,
        "counts": counts,
        "model": model,
        "gwas-linear": (root / "plink.assoc.linear").read_text(),
        "gwas-assoc": (root / "plink.assoc").read_text(),
    }


def _wrong(kind: str, out: Path, expected: dict[str, Any]) -> str | None:
    """Why a job's output files are wrong (None: they are right)."""
    if kind.startswith("sum"):
        result = json.loads((out / "result.json").read_text())
        for column in COLUMNS:
            got = result[column]
            if got["count"] != expected["counts"][column]:
                return f"{column}: count {got['count']} != {expected['counts'][column]}"
            if abs(got["sum"] - expected["sums"][column]) > 1e-3:
                return f"{column}: sum {got['sum']} != {expected['sums'][column]}"
        return None
    if kind == "fedavg":
        with np.load(out / "model.npz") as model:
            error = float(np.abs(model["coef"] - expected["model"]).max())
        return None if error < 1e-6 else f"model off by {error:.2e}"
    name = GWAS_FILES[kind]
    ours = (out / name).read_text()
    return None if ours == expected[kind] else f"{name} differs from PLINK's"


# -- what a daemon holds --------------------------------------------------------------------------


def _holdings(pid: int) -> dict[str, Any]:
    """Open fds, threads, child processes and listening ports of a daemon and its children."""
    proc = psutil.Process(pid)
    children = proc.children(recursive=True)
    ports: set[int] = set()
    for p in (proc, *children):
        with contextlib.suppress(psutil.NoSuchProcess):  # a child that just exited
            listening = [c for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
            ports |= {c.laddr.port for c in listening}
    return {
        "fds": proc.num_fds(),
        "threads": proc.num_threads(),
        "processes": len(children),
        "ports": ports,
        "rss_mb": proc.memory_info().rss / 2**20,
    }


def _strays(root: Path, owned: set[int], owned_ports: set[int]) -> dict[str, Any]:
    """Outside the daemons' trees: MPyC sessions of this federation, and listeners on its
    MPyC ports (a session its party lost track of would be re-parented, not a child)."""
    sessions = 0
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["pid"] not in owned and "smpc.mpc.session" in cmdline:
            sessions += any(arg.startswith(str(root)) for arg in cmdline)
    ports = {
        c.laddr.port
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and any(c.laddr.port in r for r in MPYC_PORTS)
    }
    return {"fds": 0, "threads": 0, "processes": sessions, "ports": ports - owned_ports}


def _all_holdings(root: Path, daemons: dict[str, int]) -> dict[str, dict[str, Any]]:
    now = {name: _holdings(pid) for name, pid in daemons.items()}
    owned = set(daemons.values()) | {
        c.pid for pid in daemons.values() for c in psutil.Process(pid).children(recursive=True)
    }
    now["(elsewhere)"] = _strays(root, owned, set().union(*(h["ports"] for h in now.values())))
    return now


def _excess(now: dict[str, Any], base: dict[str, Any]) -> dict[str, int]:
    return {
        "fds": max(0, now["fds"] - base["fds"]),
        "threads": max(0, now["threads"] - base["threads"]),
        "processes": max(0, now["processes"] - base["processes"]),
        "ports": len(now["ports"] - base["ports"]),
    }


def _settled(
    root: Path, daemons: dict[str, int], base: dict[str, dict], keys: tuple[str, ...]
) -> tuple[dict, dict[str, dict]]:
    """Each daemon's holdings once back at its baseline in ``keys``, or after SETTLE s."""
    deadline = time.monotonic() + SETTLE
    while True:
        now = _all_holdings(root, daemons)
        excess = {name: _excess(now[name], base[name]) for name in now}
        back = not any(e[key] for e in excess.values() for key in keys)
        if back or time.monotonic() > deadline:
            return now, excess
        time.sleep(0.2)


# -- the run --------------------------------------------------------------------------------------


def _start(root: Path, kits: Path) -> dict[str, subprocess.Popen]:
    procs = {}
    for p in PARTIES:
        config = root / f"{p}.yaml"
        config.write_text(f"kit: {kits / p}\nstore: {root / 'store' / p}\nlog_level: info\n")
        with (root / f"{p}.log").open("w") as err:
            procs[p] = subprocess.Popen(
                [sys.executable, "-m", "smpc.cli", "party", "serve", "--config", str(config)],
                stderr=err,
            )
    for s in SITES:
        config = root / f"{s}.yaml"
        inputs = {c: f"{DEMO / s}.csv:{c}" for c in COLUMNS}
        inputs |= {"coef": f"{DEMO / s}.npz:coef", "num_examples": f"{DEMO / s}.npz:num_examples"}
        doc = {"kit": str(kits / s), "inputs": inputs, "data": {"gwas": str(GWAS / s)}}
        config.write_text(yaml.safe_dump(doc))
        with (root / f"{s}.log").open("w") as err:
            procs[s] = subprocess.Popen(
                [sys.executable, "-m", "smpc.cli", "site", "serve", "--config", str(config)],
                stderr=err,
            )
    deadline = time.monotonic() + 60
    for name in procs:
        event = "party-connected" if name in PARTIES else "site-serving"
        while f"event={event}" not in (root / f"{name}.log").read_text(errors="replace"):
            if time.monotonic() > deadline or procs[name].poll() is not None:
                raise SystemExit(f"{name} did not start: see {root / name}.log")
            time.sleep(0.1)
    return procs


def _stop(procs: dict[str, subprocess.Popen]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run(jobs: int, warmup: int, workdir: Path | None = None) -> dict[str, Any]:
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smpc-soak-") as tmp:
        root = Path(tmp) if workdir is None else workdir
        root.mkdir(parents=True, exist_ok=True)
        init_keys(_federation(root), root / "keys")
        kits = root / "keys" / "kits"
        federation = load_federation(root / "keys" / "public" / "federation.yaml")
        analyst = load_kit(kits / "analyst")
        expected = _expected(root)
        print(f"  keys and the plaintext answers: {time.perf_counter() - began:.1f} s", flush=True)
        print(
            f"{jobs} jobs ({', '.join(KINDS)} in turn), 3 parties, {len(SITES)} sites, "
            "Mosquitto/TLS",
            flush=True,
        )
        broker = MosquittoBroker(
            federation, load_broker_kit(kits / "broker"), root / "broker",
            port=federation.broker.port,
        )  # fmt: skip
        wrong: list[str] = []
        worst = dict.fromkeys(("fds", "threads", "processes", "ports"), 0)
        rss: list[dict[str, float]] = []
        seconds: list[float] = []
        with broker:
            procs = _start(root, kits)
            print(f"  daemons up: {time.perf_counter() - began:.1f} s", flush=True)
            try:
                daemons = {name: proc.pid for name, proc in procs.items()}
                base = start_state = _all_holdings(root, daemons)
                for i in range(jobs):
                    kind = KINDS[i % len(KINDS)]
                    spec_file = root / "specs" / f"{kind}.yaml"
                    spec_file.parent.mkdir(exist_ok=True)
                    spec_file.write_text(SPECS[kind])
                    spec = load_spec(spec_file, federation)
                    out = root / "out" / f"{i + 1:02d}-{kind}"
                    start = time.perf_counter()
                    try:
                        run_ = run_spec(analyst, federation, spec, out=out, upload_window=120)
                        asyncio.run(run_)
                        problem = _wrong(kind, out, expected)
                    except UserError as exc:  # a failed job is a wrong result; go on
                        problem = f"failed: {exc}"
                    seconds.append(time.perf_counter() - start)
                    if problem:
                        wrong.append(f"job {i + 1} ({kind}): {problem}")
                    warming = i < warmup
                    # a warm-up job's pools stay: wait only for its processes and ports to go
                    keys = ("processes", "ports") if warming else tuple(worst)
                    now, excess = _settled(root, daemons, start_state if warming else base, keys)
                    if not warming:
                        for key in worst:
                            worst[key] = max(worst[key], sum(e[key] for e in excess.values()))
                    rss.append({p: now[p]["rss_mb"] for p in PARTIES})
                    more = {
                        f"{name}.{key}": n
                        for name, e in excess.items()
                        for key, n in e.items()
                        if n
                    }
                    if warming:
                        state = f"warm-up, added since the start: {more or 'nothing'}"
                    else:
                        state = f"LEAKED {more}" if more else "back to the baseline"
                    print(
                        f"  job {i + 1:2d} {kind:12s} {seconds[-1]:6.2f} s  "
                        f"{'ok' if not problem else 'WRONG: ' + problem}  "
                        f"party RSS {max(rss[-1].values()):.0f} MB  {state}",
                        flush=True,
                    )
                    if i + 1 == warmup:
                        base = now
            finally:
                _stop(procs)
    growth = max((rss[-1][p] - rss[0][p]) / rss[0][p] * 100 for p in PARTIES)
    return {
        "benchmark": "soak",
        "jobs": jobs,
        "kinds": list(KINDS[: min(jobs, len(KINDS))]),
        "warmup_jobs": warmup,
        "seconds": round(sum(seconds), 1),
        "wrong_results": len(wrong),
        "rss_growth_pct": round(growth, 2),
        "party_rss_mb_after_first": round(max(rss[0].values()), 1),
        "party_rss_mb_after_last": round(max(rss[-1].values()), 1),
        "rss_growth_after_warmup_pct": round(
            max((rss[-1][p] - rss[warmup - 1][p]) / rss[warmup - 1][p] * 100 for p in PARTIES)
            if warmup
            else growth,
            2,
        ),
        "leaked_fds": worst["fds"],
        "leaked_threads": worst["threads"],
        "leaked_processes": worst["processes"],
        "leaked_ports": worst["ports"],
        "problems": wrong,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--workdir", type=Path, help="keep keys, stores and logs there")
    parser.add_argument(
        "--warmup", type=int, default=len(KINDS), help="jobs before the baseline is taken"
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 jobs (gwas-assoc, sum, fedavg), warm-up 2"
    )
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.warmup = 3, 2
    args.warmup = max(0, min(args.warmup, args.jobs - 1))
    print(json.dumps(run(args.jobs, args.warmup, args.workdir)))


if __name__ == "__main__":
    main()
