"""``smpc local``: a whole federation on this machine, with real processes.

Keys in a work directory, the embedded broker (amqtt, TLS), N ``smpc party
serve`` daemons, one ``smpc upload`` process per site and the analyst (this
process) running the spec: the same code paths as a distributed deployment,
on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from smpc.analyst import build_job, run_job, write_outputs
from smpc.broker import EmbeddedBroker
from smpc.errors import UserError
from smpc.keys import init_keys, load_broker_kit, load_kit
from smpc.spec.federation import load_federation
from smpc.spec.protocol import load_spec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _federation(root: Path, parties: int, threshold: int, sites: list[str]) -> Path:
    doc = {
        "name": "local",
        "threshold": threshold,
        "broker": {"host": "127.0.0.1", "port": _free_port()},
        "parties": [
            {
                "name": f"party{i}",
                "host": "127.0.0.1",
                "mpyc_ports": f"{30000 + 100 * i}-{30049 + 100 * i}",
            }
            for i in range(parties)
        ],
        "sites": [{"name": s} for s in sites],
        "analysts": [{"name": "analyst"}],
    }
    path = root / "federation.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = path.read_text(errors="replace")[-2000:] if path.exists() else ""
    raise UserError(f"a party daemon did not start ({path}):\n{tail}")


def run_local(
    spec_path: Path,
    sites: dict[str, Path],
    out: Path,
    *,
    parties: int = 3,
    threshold: int = 1,
    workdir: Path | None = None,
    timeout: float = 300.0,
) -> tuple[Any, dict[str, Any]]:
    """Run ``spec_path`` over the sites' files; write the results into ``out``."""
    if not sites:
        raise UserError("smpc local needs at least one --site NAME=PATH")
    for name, path in sites.items():
        if not Path(path).exists():
            raise UserError(f"--site {name}={path}: no such file")
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="smpc-local-") as tmp:
            return run_local(
                spec_path, sites, out, parties=parties, threshold=threshold,
                workdir=Path(tmp), timeout=timeout,
            )  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    federation_file = _federation(workdir, parties, threshold, list(sites))
    federation = load_federation(federation_file)
    spec = load_spec(spec_path, federation)
    if spec.protocol == "fedavg" and not spec.inputs:
        from smpc.protocols.linear import fedavg_parameter_names

        first = next(iter(sites.values()))
        spec = spec.model_copy(update={"inputs": fedavg_parameter_names(Path(first))})
    keys = workdir / "keys"
    init_keys(federation_file, keys)
    kits = keys / "kits"
    procs: list[subprocess.Popen] = []
    broker = EmbeddedBroker(
        federation,
        load_broker_kit(kits / "broker"),
        workdir / "broker",
        port=federation.broker.port,
    )
    with broker:
        try:
            for party in federation.party_names:
                config = workdir / f"{party}.yaml"
                config.write_text(f"kit: {kits / party}\nstore: {workdir / 'store' / party}\n")
                log_path = workdir / f"{party}.log"
                with open(log_path, "ab") as log_file:
                    proc = subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "smpc.cli",
                            "party",
                            "serve",
                            "--config",
                            str(config),
                        ],
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                    )
                procs.append(proc)
                _wait_for(log_path, "event=party-connected", proc)
            analyst = load_kit(kits / "analyst")
            job = build_job(spec, analyst, federation)

            async def analyst_and_sites():
                running = asyncio.create_task(
                    run_job(analyst, federation, job, upload_window=timeout / 2, timeout=timeout)
                )
                uploads = [
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "smpc.cli",
                        "upload",
                        "--kit",
                        str(kits / site),
                        "--job",
                        job.id,
                        "--data",
                        str(path),
                        "--timeout",
                        str(timeout / 2),
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.PIPE,
                    )
                    for site, path in sites.items()
                ]
                errors = []
                for site, up in zip(sites, uploads, strict=True):
                    _, err = await up.communicate()
                    if up.returncode != 0:
                        errors.append(f"{site}: {err.decode(errors='replace').strip()}")
                try:
                    outcome = await running
                except UserError as exc:
                    detail = "; ".join(errors)
                    raise UserError(
                        f"{exc}" + (f" (uploads: {detail})" if detail else "")
                    ) from None
                return outcome

            outcome = asyncio.run(analyst_and_sites())
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    summary = write_outputs(spec, outcome, out)
    return spec, summary
