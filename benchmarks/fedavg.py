"""Secure FedAvg of 10,000,000 float32 parameters from 10 sites, N=3, t=1, end to end.

Real processes on this machine: Mosquitto (TLS, ACL), three ``smpc party
serve`` daemons, ten ``smpc upload --data site.npz`` processes, and the analyst
(this process) running a ``fedavg`` spec: from publishing the job to the
averaged model written to disk.

Baselines measured in the same run:
* plain FedAvg through the same broker: the ten models published raw
  (unencrypted, unshared) by ten processes to one aggregator process that
  averages them weighted by num_examples;
* NumPy: the weighted average of the ten models in memory.

Prints progress, then one JSON line with ``seconds``, ``peak_rss_mb`` (the
largest party process), ``ratio_vs_plain``, ``ratio_vs_numpy`` and the
baselines' seconds. Run: ``python benchmarks/fedavg.py [--quick]``.
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

from smpc.analyst.driver import write_outputs
from smpc.analyst.jobs import build_job, run_job
from smpc.broker.mosquitto import MosquittoBroker
from smpc.config.federation import load_federation
from smpc.net.connection import Connection
from smpc.net.topics import Topics
from smpc.pki.kit import load_broker_kit, load_kit
from smpc.pki.provision import init_keys
from smpc.protocols.registry import load_spec

PARTIES = ("alpha", "beta", "gamma")


def _federation(root: Path, sites: list[str]) -> Path:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    doc = {
        "name": "bench",
        "threshold": 1,
        "broker": {"host": "127.0.0.1", "port": port},
        "parties": [
            {"name": p, "host": "127.0.0.1", "mpyc_ports": f"{25000 + 100 * i}-{25049 + 100 * i}"}
            for i, p in enumerate(PARTIES)
        ],
        "sites": [{"name": s} for s in sites],
        "analysts": [{"name": "analyst"}],
    }
    path = root / "federation.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def _aggregator(kit_dir: str, count: int) -> None:
    """Plain FedAvg: receive raw models, average them weighted by num_examples."""
    kit = load_kit(kit_dir)
    federation = load_federation(kit.federation_file)
    async with Connection.from_kit(kit, federation, suffix="plain") as conn:
        await conn.subscribe(Topics(federation.name).uploads_for(kit.name))
        print("ready", flush=True)
        total, weight, received = None, 0, 0
        async for message in conn.messages():
            n = int(np.frombuffer(message.body[:8], dtype="<i8")[0])
            w = np.frombuffer(message.body[8:], dtype="<f4").astype(np.float64) * n
            total = w if total is None else total + w
            weight += n
            received += 1
            if received == count:
                break
        _ = total / weight
    print("done", flush=True)


async def _publisher(kit_dir: str, data: str) -> None:
    kit = load_kit(kit_dir)
    federation = load_federation(kit.federation_file)
    with np.load(data) as archive:
        body = np.int64(archive["num_examples"]).tobytes() + archive["w"].astype("<f4").tobytes()
    async with Connection.from_kit(kit, federation, suffix="plain") as conn:
        await conn.publish_body(Topics(federation.name).upload(kit.name, PARTIES[0]), body)


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(sites: int, params: int) -> dict:
    names = [f"site{i:02d}" for i in range(sites)]
    with tempfile.TemporaryDirectory(prefix="smpc-fedavg-") as tmp:
        root = Path(tmp)
        init_keys(_federation(root, names), root / "keys")
        kits = root / "keys" / "kits"
        federation = load_federation(root / "keys" / "public" / "federation.yaml")
        rng = np.random.default_rng(0)
        models = {}
        for i, name in enumerate(names):
            w = rng.normal(0, 0.1, size=params).astype(np.float32)
            models[name] = (100 + 37 * i, w)
            np.savez(root / f"{name}.npz", w=w, num_examples=100 + 37 * i)
        print(
            f"{sites} sites x {params:,} float32 parameters, 3 parties, Mosquitto/TLS", flush=True
        )

        start = time.perf_counter()
        total = sum(n * w.astype(np.float64) for n, w in models.values())
        expected = total / sum(n for n, _ in models.values())
        numpy_seconds = time.perf_counter() - start
        print(f"  numpy: {numpy_seconds:.3f} s", flush=True)

        broker = MosquittoBroker(
            federation, load_broker_kit(kits / "broker"), root / "broker",
            port=federation.broker.port,
        )  # fmt: skip
        with broker:
            me = [sys.executable, __file__]
            agg = subprocess.Popen(
                [*me, "--role", "aggregator", str(kits / PARTIES[0]), str(sites)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert agg.stdout.readline().strip() == "ready"
            start = time.perf_counter()
            pubs = [
                subprocess.Popen(
                    [*me, "--role", "publisher", str(kits / n), str(root / f"{n}.npz")]
                )
                for n in names
            ]
            for p in pubs:
                p.wait(600)
            assert agg.stdout.readline().strip() == "done"
            agg.wait(60)
            plain_seconds = time.perf_counter() - start
            print(f"  plain FedAvg through the broker: {plain_seconds:.2f} s", flush=True)

            parties = []
            try:
                for p in PARTIES:
                    config = root / f"{p}.yaml"
                    config.write_text(
                        f"kit: {kits / p}\nstore: {root / 'store' / p}\nlog_level: warning\n"
                    )
                    parties.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "smpc.cli",
                                "party",
                                "serve",
                                "--config",
                                str(config),
                            ]
                        )
                    )
                time.sleep(2.0)
                spec_file = root / "round.yaml"
                spec_file.write_text("name: round\nprotocol: fedavg\ninputs: [w]\nmin_sites: 2\n")
                spec = load_spec(spec_file, federation)
                analyst = load_kit(kits / "analyst")
                job = build_job(spec, analyst, federation)

                async def job_and_uploads():
                    start = time.perf_counter()
                    running = asyncio.create_task(
                        run_job(analyst, federation, job, upload_window=600, timeout=900)
                    )
                    uploads = [
                        await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "smpc.cli",
                            "upload",
                            "--kit",
                            str(kits / n),
                            "--job",
                            job.id,
                            "--data",
                            str(root / f"{n}.npz"),
                            "--timeout",
                            "600",
                        )
                        for n in names
                    ]
                    for up in uploads:
                        if await up.wait() != 0:
                            raise SystemExit("an upload failed")
                    outcome = await running
                    write_outputs(spec, outcome, root / "out")
                    return time.perf_counter() - start

                seconds = asyncio.run(job_and_uploads())
                peak = max(_vm_hwm_mb(p.pid) for p in parties)
            finally:
                for p in parties:
                    p.send_signal(signal.SIGTERM)
                for p in parties:
                    p.wait(60)
        print(f"  smpc secure FedAvg: {seconds:.2f} s", flush=True)
        with np.load(root / "out" / "model.npz") as got:
            error = float(np.abs(got["w"] - expected).max())
        print(f"  largest deviation from numpy: {error:.1e}", flush=True)
        assert error < 1e-6
    return {
        "benchmark": "fedavg",
        "sites": sites,
        "parameters": params,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak, 1),
        "plain_seconds": round(plain_seconds, 2),
        "numpy_seconds": round(numpy_seconds, 3),
        "ratio_vs_plain": round(seconds / plain_seconds, 2),
        "ratio_vs_numpy": round(seconds / numpy_seconds, 1),
        "max_abs_error": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="3 sites x 100,000 parameters")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, *rest = args.role
        if role == "aggregator":
            asyncio.run(_aggregator(rest[0], int(rest[1])))
        else:
            asyncio.run(_publisher(*rest))
        return
    if args.quick:
        args.sites, args.params = 3, 100_000
    print(json.dumps(run(args.sites, args.params)))


if __name__ == "__main__":
    main()
