"""50 sites upload 1,000,000 float64 values each, concurrently, to 3 parties through Mosquitto.

Everything a user runs is a real process on this machine: Mosquitto with TLS and the
federation's ACL (the generated config), and three ``smpc party serve`` daemons
(verify, decrypt, fsync, signed ack). The 50 sites, each with its own kit from
``smpc keys init``, run as concurrent asyncio tasks in a few worker processes, each
task the real upload code (:func:`smpc.site.upload.upload`: encode, Shamir-share with
compact shares at N=3, t=1, seal, sign, publish, keep the sealed envelopes durably,
wait for every party's ack). Afterwards the parties' stores are read: every (job,
site) must hold exactly one share at each party, its file complete.

Baseline, through the same broker in the same run: the same processes publish the
same arrays raw (unshared, unencrypted float64 bytes; the same framing and QoS 1
over the same TLS listener with the same client certificates) to one subscriber,
until it has received every array.

Prints progress, then one JSON line:

    seconds            start → every site has every party's ack
    plain_seconds      start → the subscriber has every raw array
    ratio_vs_plain     seconds / plain_seconds
    mb_per_s           plaintext MB (10^6 bytes) uploaded / seconds
    p50_seconds, p99_seconds   per site: start → its last ack
    peak_party_rss_mb  the largest party daemon's peak RSS (VmHWM)
    lost_shares        (job, site, party) without a stored share
    duplicate_shares   shares stored more than once for one (job, site, party)
    partial_files      temporary share files left in the parties' stores
    envelopes_resent   envelopes a party received again because a site re-sent them
                       before its ack came (``event=share-duplicate``: stored once)

Run: ``python benchmarks/load.py [--quick] [--sites N] [--values N] [--workers N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from smpc.analyst.jobs import publish_job
from smpc.broker.mosquitto import MosquittoBroker
from smpc.config.federation import load_federation
from smpc.core.field import FAST
from smpc.net.connection import Connection
from smpc.net.topics import Topics
from smpc.party.store import PartyStore
from smpc.pki.kit import load_broker_kit, load_kit
from smpc.pki.provision import init_keys
from smpc.site.upload import upload
from smpc.wire.messages import Job, JobInput

PARTIES = ("alpha", "beta", "gamma")
JOB = "load"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _federation(root: Path, sites: list[str]) -> Path:
    doc = {
        "name": "load",
        "threshold": 1,
        "broker": {"host": "127.0.0.1", "port": _free_port()},
        "parties": [
            {"name": p, "host": "127.0.0.1", "mpyc_ports": f"{26000 + 100 * i}-{26049 + 100 * i}"}
            for i, p in enumerate(PARTIES)
        ],
        "sites": [{"name": s} for s in sites],
        "analysts": [{"name": "analyst"}],
    }
    path = root / "federation.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the roles run as subprocesses of this script ------------------------------------------------


async def _sites_worker(mode: str, root: str, resend_after: float, names: list[str]) -> None:
    """Upload (mode smpc) or publish raw (mode plain) for each site, all at once.

    Prints ``ready`` once kits and data are loaded, waits for ``go START`` on stdin
    (START: the wall-clock time the parent started the clock), then prints one JSON
    line: each site's wall-clock time of completion.
    """
    base = Path(root)
    kits = {n: load_kit(base / "keys" / "kits" / n) for n in names}
    federation = load_federation(base / "keys" / "public" / "federation.yaml")
    topics = Topics(federation.name)
    data = {n: np.load(base / "data" / f"{n}.npy") for n in names}
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    done: dict[str, float] = {}

    async def one(name: str) -> None:
        kit = kits[name]
        if mode == "smpc":
            await upload(
                kit, federation, JOB, {"x": data[name]}, timeout=900,
                resend_after=resend_after, keep=base / "kept" / name,
            )  # fmt: skip
        else:
            async with Connection.from_kit(kit, federation, suffix="plain") as conn:
                await conn.publish_body(topics.upload(name, PARTIES[0]), data[name].tobytes())
        done[name] = time.time()

    await asyncio.gather(*(one(n) for n in names))
    print(json.dumps(done), flush=True)


async def _plain_subscriber(root: str, count: int) -> None:
    base = Path(root)
    kit = load_kit(base / "keys" / "kits" / PARTIES[0])
    federation = load_federation(kit.federation_file)
    async with Connection.from_kit(kit, federation, suffix="plain") as conn:
        await conn.subscribe(Topics(federation.name).uploads_for(kit.name))
        print("ready", flush=True)
        received = set()
        async for message in conn.messages():
            received.add(message.topic)
            if len(received) == count:
                break
    print("done", flush=True)


# -- the driver ------------------------------------------------------------------------------------


def _start_workers(
    mode: str, root: Path, names: list[str], workers: int, resend_after: float = 0.0
) -> list:
    groups = [names[i::workers] for i in range(workers)]
    role = ["--role", "sites", mode, str(root), str(resend_after)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, *role, *group],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for group in groups
        if group
    ]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"a {mode} worker did not start")
    return procs


def _go(procs: list) -> float:
    start = time.time()
    for proc in procs:
        proc.stdin.write(f"go {start}\n")
        proc.stdin.flush()
    return start


def _finish_workers(procs: list, what: str) -> dict[str, float]:
    done: dict[str, float] = {}
    for proc in procs:
        out, _ = proc.communicate(timeout=1200)
        if proc.returncode != 0:
            raise SystemExit(f"a {what} worker failed")
        done.update(json.loads(out.strip().splitlines()[-1]))
    return done


def _wait_connected(logs: list[Path], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for log in logs:
        while "event=party-connected" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise SystemExit(f"{log}: the party did not connect")
            time.sleep(0.1)


def _check_stores(root: Path, names: list[str]) -> tuple[int, int, int]:
    """(lost, duplicate) shares over every (site, party), from the stores' rows and files,
    and the partial (temporary) files left in the stores."""
    lost = duplicate = partial = 0
    for party in PARTIES:
        with PartyStore(root / "store" / party) as store:
            shares = store.shares(JOB)
            for name in names:
                mine = [s for s in shares if s.site == name]
                files = sorted((root / "store" / party / "shares" / JOB).glob(f"*/{name}.share"))
                count = max(len(mine), len(files))
                complete = [s for s in mine if s.path.is_file() and len(store.read_share(s))]
                if not complete:
                    lost += 1
                duplicate += max(0, count - 1)
            partial += len(list((root / "store" / party / "shares").rglob("*.tmp")))
    return lost, duplicate, partial


def run(
    sites: int, values: int, workers: int, resend_after: float, workdir: Path | None = None
) -> dict:
    names = [f"site{i:02d}" for i in range(sites)]
    with tempfile.TemporaryDirectory(prefix="smpc-load-") as tmp:
        root = Path(tmp) if workdir is None else workdir
        root.mkdir(parents=True, exist_ok=True)
        init_keys(_federation(root, names), root / "keys")
        kits = root / "keys" / "kits"
        federation = load_federation(root / "keys" / "public" / "federation.yaml")
        (root / "data").mkdir()
        rng = np.random.default_rng(0)
        for name in names:
            np.save(root / "data" / f"{name}.npy", rng.normal(0, 1000, size=values))
        mb = sites * values * 8 / 1e6
        workers = max(1, min(workers, sites))
        print(
            f"{sites} sites x {values:,} float64 ({mb:.0f} MB) in {workers} processes, "
            "3 parties, Mosquitto/TLS",
            flush=True,
        )
        broker = MosquittoBroker(
            federation, load_broker_kit(kits / "broker"), root / "broker",
            port=federation.broker.port,
        )  # fmt: skip
        with broker:
            # Plain baseline: the raw arrays, one subscriber.
            sub = subprocess.Popen(
                [sys.executable, __file__, "--role", "plain-sub", str(root), str(sites)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                if sub.stdout.readline().strip() != "ready":
                    raise SystemExit("the plain subscriber did not start")
                pubs = _start_workers("plain", root, names, workers)
                start = _go(pubs)
                _finish_workers(pubs, "plain")
                if sub.stdout.readline().strip() != "done":
                    raise SystemExit("the plain subscriber did not receive every array")
                plain = time.time() - start
            finally:
                if sub.poll() is None:
                    sub.kill()
                sub.wait(30)
            print(f"  plain MQTT: {plain:.2f} s", flush=True)

            parties, logs = [], []
            try:
                for p in PARTIES:
                    config = root / f"{p}.yaml"
                    config.write_text(
                        f"kit: {kits / p}\nstore: {root / 'store' / p}\nlog_level: info\n"
                    )
                    logs.append(root / f"{p}.log")
                    serve = ["party", "serve", "--config", str(config)]
                    with logs[-1].open("w") as err:
                        parties.append(
                            subprocess.Popen([sys.executable, "-m", "smpc.cli", *serve], stderr=err)
                        )
                _wait_connected(logs)
                job = Job(
                    id=JOB,
                    inputs=(JobInput(name="x", frac_bits=24, int_bits=30),),
                    t=1,
                    n=3,
                    modulus=FAST.modulus,
                    analyst="analyst",
                )
                asyncio.run(publish_job(load_kit(kits / "analyst"), federation, job))
                ups = _start_workers("smpc", root, names, workers, resend_after)
                start = _go(ups)
                done = _finish_workers(ups, "upload")
                seconds = max(done.values()) - start
                peak = max(_vm_hwm_mb(p.pid) for p in parties)
            finally:
                for proc in parties:
                    proc.send_signal(signal.SIGTERM)
                for proc in parties:
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
        per_site = np.array([done[n] - start for n in names])
        print(f"  smpc uploads: {seconds:.2f} s", flush=True)
        lost, duplicate, partial = _check_stores(root, names)
        print(
            f"  stores: {lost} lost, {duplicate} duplicate shares, {partial} partial files",
            flush=True,
        )
        resent = sum(
            (root / f"{p}.log").read_text(errors="replace").count("event=share-duplicate")
            for p in PARTIES
        )
        print(f"  envelopes received again (re-sent, stored once): {resent}", flush=True)
    return {
        "benchmark": "load",
        "sites": sites,
        "values_per_site": values,
        "worker_processes": workers,
        "mb": round(mb, 1),
        "seconds": round(seconds, 3),
        "plain_seconds": round(plain, 3),
        "ratio_vs_plain": round(seconds / plain, 2),
        "mb_per_s": round(mb / seconds, 1),
        "p50_seconds": round(float(np.percentile(per_site, 50)), 3),
        "p99_seconds": round(float(np.percentile(per_site, 99)), 3),
        "peak_party_rss_mb": round(peak, 1),
        "lost_shares": lost,
        "duplicate_shares": duplicate,
        "partial_files": partial,
        "resend_after": resend_after,
        "envelopes_resent": resent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=5, help="processes the sites run in")
    parser.add_argument(
        "--resend-after",
        type=float,
        default=inspect.signature(upload).parameters["resend_after"].default,
        help="seconds a site waits for an ack before re-sending (default: the upload's)",
    )
    parser.add_argument("--workdir", type=Path, help="keep keys, stores and logs there")
    parser.add_argument("--quick", action="store_true", help="5 sites x 10,000 values")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, *rest = args.role
        if role == "plain-sub":
            asyncio.run(_plain_subscriber(rest[0], int(rest[1])))
        else:
            asyncio.run(_sites_worker(rest[0], rest[1], float(rest[2]), rest[3:]))
        return
    if args.quick:
        args.sites, args.values, args.workers = 5, 10_000, 2
    print(json.dumps(run(args.sites, args.values, args.workers, args.resend_after, args.workdir)))


if __name__ == "__main__":
    main()
