"""10 sites upload 1,000,000 float64 values each to 3 parties through Mosquitto.

Everything is a real process on this machine: Mosquitto with TLS and the
federation's ACL, three ``smpc party serve`` daemons (verify, decrypt, fsync,
signed ack), and ten ``smpc upload`` processes (encode, Shamir-share with
compact shares at N=3, t=1, encrypt, sign, publish, wait for every ack).

Baseline, measured in the same run through the same broker: the same ten
arrays published unencrypted and unshared (raw float64 bytes, same framing and
chunk size) by ten processes to one subscriber process.

Prints progress, then one JSON line:

    seconds          launch of the uploaders → every party acknowledged every share
    plain_seconds    launch of the plain publishers → the subscriber has all arrays
    ratio_vs_plain   seconds / plain_seconds
    mb               input MB (10^6 bytes) uploaded in all

Run: ``python benchmarks/upload.py [--quick] [--sites N] [--values N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
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
from smpc.pki.kit import load_broker_kit, load_kit
from smpc.pki.provision import init_keys
from smpc.wire.messages import Job, JobInput

PARTIES = ("alpha", "beta", "gamma")


def _federation(root: Path, sites: int) -> Path:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    doc = {
        "name": "bench",
        "threshold": 1,
        "broker": {"host": "127.0.0.1", "port": port},
        "parties": [
            {"name": p, "host": "127.0.0.1", "mpyc_ports": f"{24000 + 100 * i}-{24049 + 100 * i}"}
            for i, p in enumerate(PARTIES)
        ],
        "sites": [{"name": f"site{i:02d}"} for i in range(sites)],
        "analysts": [{"name": "analyst"}],
    }
    path = root / "federation.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# -- the plain baseline's two roles, run as subprocesses of this script -------------------------


async def _plain_subscriber(kit_dir: str, count: int) -> None:
    kit = load_kit(kit_dir)
    federation = load_federation(kit.federation_file)
    topics = Topics(federation.name)
    async with Connection.from_kit(kit, federation, suffix="plain") as conn:
        await conn.subscribe(topics.uploads_for(kit.name))
        print("ready", flush=True)
        received = 0
        async for _ in conn.messages():
            received += 1
            if received == count:
                break
    print("done", flush=True)


async def _plain_publisher(kit_dir: str, data: str) -> None:
    kit = load_kit(kit_dir)
    federation = load_federation(kit.federation_file)
    body = np.load(data).tobytes()
    async with Connection.from_kit(kit, federation, suffix="plain") as conn:
        await conn.publish_body(Topics(federation.name).upload(kit.name, PARTIES[0]), body)


def _smpc(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "smpc.cli", *args], **kw)


def _wait_all(procs: list[subprocess.Popen], what: str, timeout: float = 600) -> None:
    for proc in procs:
        if proc.wait(timeout) != 0:
            err = proc.stderr.read() if proc.stderr else ""
            raise SystemExit(f"{what} failed: {err}")


def run(sites: int, values: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="smpc-bench-") as tmp:
        root = Path(tmp)
        init_keys(_federation(root, sites), root / "keys")
        kits = root / "keys" / "kits"
        federation = load_federation(root / "keys" / "public" / "federation.yaml")
        rng = np.random.default_rng(0)
        names = [f"site{i:02d}" for i in range(sites)]
        for name in names:
            np.save(root / f"{name}.npy", rng.normal(0, 1000, size=values))
        mb = sites * values * 8 / 1e6
        print(
            f"{sites} sites x {values:,} float64 ({mb:.0f} MB), 3 parties, Mosquitto/TLS",
            flush=True,
        )
        broker = MosquittoBroker(
            federation,
            load_broker_kit(kits / "broker"),
            root / "broker",
            port=federation.broker.port,
        )
        with broker:
            # Plain baseline: raw arrays, one subscriber.
            me = [sys.executable, __file__]
            sub = subprocess.Popen(
                [*me, "--role", "plain-sub", str(kits / PARTIES[0]), str(sites)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert sub.stdout.readline().strip() == "ready"
            start = time.perf_counter()
            pubs = [
                subprocess.Popen(
                    [*me, "--role", "plain-pub", str(kits / n), str(root / f"{n}.npy")]
                )
                for n in names
            ]
            _wait_all(pubs, "plain publisher")
            assert sub.stdout.readline().strip() == "done"
            sub.wait(60)
            plain = time.perf_counter() - start
            print(f"  plain MQTT: {plain:.2f} s", flush=True)

            # smpc: three party daemons, ten uploaders.
            parties = []
            try:
                for p in PARTIES:
                    config = root / f"{p}.yaml"
                    config.write_text(
                        f"kit: {kits / p}\nstore: {root / 'store' / p}\nlog_level: warning\n"
                    )
                    parties.append(_smpc("party", "serve", "--config", str(config)))
                time.sleep(2.0)  # daemons connect and subscribe
                job = Job(
                    id="bench",
                    inputs=(JobInput(name="x", frac_bits=24, int_bits=30),),
                    t=1,
                    n=3,
                    modulus=FAST.modulus,
                    analyst="analyst",
                )
                asyncio.run(publish_job(load_kit(kits / "analyst"), federation, job))
                start = time.perf_counter()
                uploads = [
                    _smpc(
                        "upload",
                        "--kit",
                        str(kits / n),
                        "--job",
                        "bench",
                        "--input",
                        f"x={root / f'{n}.npy'}",
                        "--timeout",
                        "600",
                        "--keep",
                        str(root / "kept" / n),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                    for n in names
                ]
                _wait_all(uploads, "upload")
                seconds = time.perf_counter() - start
                print(f"  smpc upload: {seconds:.2f} s", flush=True)
            finally:
                for proc in parties:
                    proc.send_signal(signal.SIGTERM)
                for proc in parties:
                    proc.wait(30)
    return {
        "benchmark": "upload",
        "sites": sites,
        "values_per_site": values,
        "mb": round(mb, 1),
        "seconds": round(seconds, 3),
        "plain_seconds": round(plain, 3),
        "ratio_vs_plain": round(seconds / plain, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="3 sites x 20,000 values")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, *rest = args.role
        if role == "plain-sub":
            asyncio.run(_plain_subscriber(rest[0], int(rest[1])))
        else:
            asyncio.run(_plain_publisher(*rest))
        return
    if args.quick:
        args.sites, args.values = 3, 20_000
    print(json.dumps(run(args.sites, args.values)))


if __name__ == "__main__":
    main()
