"""``smpc local``: a whole federation on this machine, with real processes.

Keys in a work directory, a broker on TLS (Mosquitto when it is installed, else the
embedded amqtt broker; ``--broker``), N ``smpc party serve`` daemons, one ``smpc
upload`` process per site and the analyst (this process) running the spec: the same
code paths as a distributed deployment, on 127.0.0.1.

With a trainer (``--trainer module:function``, see :mod:`smpc.protocols.fedavg.training`) every site
runs ``smpc site serve`` with that trainer instead of one upload, and the
analyst runs every round of the spec (:func:`smpc.fl.train`).

Every site is the user's own here, so a site whose upload fails fails the run, naming
the site and its reason, unless the spec sets ``min_sites`` itself (then the run goes
on without it and says so). Messages about the generated federation file name the
arguments it came from (``--threshold``, ``--parties``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from smpc.analyst.driver import Run, run_spec
from smpc.broker.embedded import EmbeddedBroker
from smpc.broker.mosquitto import MOSQUITTO, MosquittoBroker
from smpc.config.federation import Federation, load_federation, read_yaml_mapping
from smpc.errors import UserError
from smpc.io.inputs import data_exists
from smpc.io.modelfile import read_model
from smpc.pki.kit import load_broker_kit, load_kit
from smpc.pki.provision import init_keys
from smpc.protocols.base import RunContext
from smpc.protocols.registry import PROTOCOLS, Spec, load_spec, protocol
from smpc.wire.messages import Job

BROKERS = ("auto", "mosquitto", "embedded")
"""``smpc local --broker``: ``auto`` is Mosquitto when installed, else the embedded one."""


def _broker(choice: str, federation: Any, workdir: Path) -> EmbeddedBroker | MosquittoBroker:
    """The local broker: Mosquitto (C, the production broker) carries large uploads with
    a fraction of the embedded Python broker's CPU, which the parties and sites need."""
    if choice not in BROKERS:
        raise UserError(f"--broker {choice}: choose one of {', '.join(BROKERS)}")
    installed = Path(MOSQUITTO).is_file()
    if choice == "mosquitto" and not installed:
        raise UserError(
            f"--broker mosquitto: {MOSQUITTO} is not installed (apt-get install mosquitto)"
        )
    kind = (
        MosquittoBroker
        if choice == "mosquitto" or (choice == "auto" and installed)
        else EmbeddedBroker
    )
    kit = load_broker_kit(workdir / "keys" / "kits" / "broker")
    return kind(federation, kit, workdir / "broker", port=federation.broker.port)


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


ARGUMENTS = {"threshold": "--threshold", "parties": "--parties", "sites": "--site"}


def _as_arguments(message: str, federation_file: Path) -> str:
    """A message about the generated federation file, told in the ``smpc local`` arguments
    it came from (the user never saw that file)."""
    lines = []
    for line in message.splitlines():
        if line.startswith(f"{federation_file}: "):
            field, _, rest = line.removeprefix(f"{federation_file}: ").partition(": ")
            line = f"{ARGUMENTS.get(field.split('.')[0].split('[')[0], field)}: {rest}"
        lines.append(line.replace("(the federation's default)", "(--threshold)"))
    return "\n".join(lines)


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = path.read_text(errors="replace")[-2000:] if path.exists() else ""
    raise UserError(f"a daemon did not start ({path}):\n{tail}")


SITE_ENV = {
    **os.environ,
    **{
        name: os.environ.get(name, "1")
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    },
}
"""Every site's process on one machine: one BLAS thread each (several sites computing
at once with a thread per core each ran 3x slower than with one), unless set already."""


def _site_serve(
    workdir: Path, kits: Path, site: str, trainer: str | None, data: Path | None, out: Path
) -> subprocess.Popen:
    """``smpc site serve`` for one site, answering every round with ``trainer`` (or, with
    no trainer, with the job's protocol on ``data``: a GWAS's Newton rounds); its own
    results (a GWAS PCA's ``.eigenvec``) go to ``OUT/sites/<site>/``."""
    config = workdir / f"{site}.yaml"
    doc: dict[str, Any] = {
        "kit": str(kits / site),
        "state": str(workdir / f"{site}.answered"),
        "out": str((Path(out) / "sites" / site).resolve()),
    }
    if trainer is None:
        assert data is not None  # the caller passes data to a site without a trainer
        doc["data"] = str(Path(data).resolve())
    else:
        module, _, function = trainer.rpartition(":")
        if module.endswith(".py"):  # the config resolves relative paths against its own folder
            trainer = f"{Path(module).resolve()}:{function}"
        doc["trainer"] = trainer
    if trainer is not None and data is not None:
        doc["trainer_args"] = {"data": str(Path(data).resolve())}
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    with open(workdir / f"{site}.log", "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "smpc.cli", "site", "serve", "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=Path.cwd(),
            env=SITE_ENV,
        )


def run_local(
    spec_path: Path,
    sites: Mapping[str, Path | None],
    out: Path,
    *,
    parties: int = 3,
    threshold: int = 1,
    workdir: Path | None = None,
    timeout: float = 300.0,
    trainer: str | None = None,
    initial_model: Path | None = None,
    broker: str = "auto",
) -> LocalRun:
    """Run ``spec_path`` over the sites' files; write the results into ``out``.

    ``broker``: one of :data:`BROKERS`.

    With ``trainer`` (``module:function`` or ``file.py:function``), every site runs
    ``smpc site serve`` with that trainer (given ``site=NAME``, and ``data=PATH``
    when the site has a path) and the analyst trains for ``spec.rounds`` rounds,
    starting from ``initial_model`` (an .npz) if given.
    """
    _check_arguments(sites, trainer, initial_model)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="smpc-local-") as tmp:
            return run_local(
                spec_path, sites, out, parties=parties, threshold=threshold,
                workdir=Path(tmp), timeout=timeout, trainer=trainer, initial_model=initial_model,
                broker=broker,
            )  # fmt: skip
    workdir = Path(workdir).resolve()  # daemons run in other directories
    workdir.mkdir(parents=True, exist_ok=True)
    federation_file = _federation(workdir, parties, threshold, list(sites))
    federation, spec, context = _prepare(
        spec_path, federation_file, sites, out, trainer=trainer, initial_model=initial_model
    )
    family = protocol(spec.protocol)
    allow_fewer = "min_sites" in read_yaml_mapping(spec_path)
    # several jobs (or a trainer): every site answers each one as `smpc site serve`
    served = trainer is not None or family.jobs_per_run(spec) > 1
    keys = workdir / "keys"
    init_keys(federation_file, keys)
    kits = keys / "kits"
    procs: list[subprocess.Popen] = []
    failed: dict[str, str] = {}
    with _broker(broker, federation, workdir):
        try:
            for party in federation.party_names:
                procs.append(_party_serve(workdir, kits, party))
            analyst = load_kit(kits / "analyst")
            if served:
                for site, path in sites.items():
                    procs.append(_site_serve(workdir, kits, site, trainer, path, out))
                    _wait_for(workdir / f"{site}.log", "event=site-serving", procs[-1])
                try:
                    run = asyncio.run(
                        run_spec(
                            analyst, federation, spec, out=out, context=context,
                            upload_window=timeout / 2, timeout=timeout,
                        )
                    )  # fmt: skip
                except UserError as exc:
                    raise UserError(f"{exc}{_site_log_reasons(workdir, sites)}") from None
                if trainer is None:
                    _check_sites(
                        spec, sites, run.sites, _served_failures(workdir, sites), allow_fewer
                    )
                assert run.summary is not None  # written into out
                return LocalRun(spec, run.summary, run.sites or tuple(sites))
            run = asyncio.run(
                _run_with_uploads(
                    analyst, federation, spec, sites, out, workdir, kits, timeout,
                    failed, allow_fewer,
                )
            )  # fmt: skip
        finally:
            _stop(procs)
    assert run.summary is not None  # written into out
    _check_sites(spec, sites, run.sites, failed, allow_fewer)
    return LocalRun(spec, run.summary, run.sites)


def _check_arguments(
    sites: Mapping[str, Path | None], trainer: str | None, initial_model: Path | None
) -> None:
    """Refuse missing files and a trainer that does not load before anything starts."""
    if not sites:
        raise UserError("smpc local needs at least one --site NAME=PATH")
    for name, path in sites.items():
        if path is None and trainer is None:
            raise UserError(f"--site {name}: give its data file, --site {name}=PATH")
        if path is not None and not data_exists(Path(path)):
            raise UserError(f"--site {name}={path}: no such file (or genotype fileset prefix)")
    if initial_model is not None and not Path(initial_model).exists():
        raise UserError(f"--initial-model {initial_model}: no such file")
    if trainer is not None:
        from smpc.protocols.fedavg.training import load_trainer

        load_trainer(trainer)  # a typo fails here, not in every site's log


def _prepare(
    spec_path: Path,
    federation_file: Path,
    sites: Mapping[str, Path | None],
    out: Path,
    *,
    trainer: str | None,
    initial_model: Path | None,
) -> tuple[Federation, Spec, RunContext]:
    """The federation, the spec completed by its protocol for this run, and the run's context."""
    try:
        federation = load_federation(federation_file)
        spec = load_spec(spec_path, federation)
    except UserError as exc:  # the federation file is ours: name the user's arguments
        raise UserError(_as_arguments(str(exc), federation_file)) from None
    family = protocol(spec.protocol)
    problem = family.local_problem(spec, trainer is not None)
    if problem:
        raise UserError(problem)
    if trainer is not None and not family.trains:
        trainers = ", ".join(name for name, p in PROTOCOLS.items() if p.trains)
        raise UserError(f"{spec.name}: --trainer runs {trainers} specs, not {spec.protocol}")
    context = RunContext(
        initial_model=None if initial_model is None else read_model(initial_model)[0],
        training=trainer is not None,
        out=out if trainer is not None else None,
        site_files=tuple(Path(p) for p in sites.values() if p is not None)
        if trainer is None
        else (),
    )
    return federation, family.complete_spec(spec, context), context


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process still running, then wait (killing what does not stop)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _party_serve(workdir: Path, kits: Path, party: str) -> subprocess.Popen:
    """``smpc party serve`` for one party, once it has connected to the broker."""
    config = workdir / f"{party}.yaml"
    config.write_text(f"kit: {kits / party}\nstore: {workdir / 'store' / party}\n")
    log_path = workdir / f"{party}.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "smpc.cli", "party", "serve", "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    _wait_for(log_path, "event=party-connected", proc)
    return proc


async def _run_with_uploads(
    analyst: Any,
    federation: Any,
    spec: Any,
    sites: Mapping[str, Path | None],
    out: Path,
    workdir: Path,
    kits: Path,
    timeout: float,
    failed: dict[str, str],
    allow_fewer: bool,
) -> Run:
    """A one-job run whose every site answers with one ``smpc upload`` process; a site
    whose upload fails ends the run at once unless the spec allows fewer sites."""
    watchers: list[asyncio.Task] = []
    running: asyncio.Task[Run] | None = None

    async def watch(site: str, up: asyncio.subprocess.Process) -> None:
        _, err = await up.communicate()
        if up.returncode != 0:
            failed[site] = _last_line(err.decode(errors="replace"))
            if not allow_fewer and running is not None:
                running.cancel()  # the job cannot succeed: do not wait for it

    async def start_uploads(job: Job) -> None:
        for site, path in sites.items():
            up = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "smpc.cli", "upload", "--kit", str(kits / site),
                "--job", job.id, "--data", str(path), "--timeout", str(timeout / 2),
                "--keep", str(workdir / "uploads" / site),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=SITE_ENV,
            )  # fmt: skip
            watchers.append(asyncio.create_task(watch(site, up)))

    running = asyncio.create_task(
        run_spec(
            analyst, federation, spec, out=out, upload_window=timeout / 2, timeout=timeout,
            on_job=start_uploads,
        )
    )  # fmt: skip
    try:
        return await running
    except asyncio.CancelledError:
        if not running.cancelled():
            raise
        raise UserError(_site_failures(spec, failed)) from None
    except UserError as exc:
        detail = "; ".join(f"site {s}: {r}" for s, r in failed.items())
        raise UserError(f"{exc}" + (f" (uploads: {detail})" if detail else "")) from None
    finally:
        await asyncio.gather(*watchers, return_exceptions=True)


def _last_line(text: str) -> str:
    """An uploader's reason: its last stderr line, without the ``smpc: error:`` prefix."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "exited without a message").removeprefix("smpc: error: ")


def _site_failures(spec: Any, failed: dict[str, str]) -> str:
    reasons = "; ".join(f"site {site}: {reason}" for site, reason in failed.items())
    return (
        f"{spec.name}: {reasons}. Nothing was opened: every site must upload unless the "
        "spec sets min_sites to allow fewer"
    )


def _served_failures(workdir: Path, sites: Mapping[str, Path | None]) -> dict[str, str]:
    """The last failure each ``smpc site serve`` logged (``event=upload-failed``)."""
    failed = {}
    for site in sites:
        path = workdir / f"{site}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for line in lines:
            reason = line.partition("reason=")[2].strip('"')
            if "event=upload-failed" in line or (
                "event=job-skipped" in line and not reason.startswith(("closed", "already"))
            ):
                failed[site] = reason or line
    return failed


def _site_log_reasons(workdir: Path, sites: Mapping[str, Path | None]) -> str:
    failed = _served_failures(workdir, sites)
    return "".join(f"; site {site}: {reason}" for site, reason in failed.items())


def _check_sites(
    spec: Any,
    sites: Mapping[str, Path | None],
    used: tuple[str, ...],
    failed: dict[str, str],
    allow_fewer: bool,
) -> None:
    """Refuse a result without every site unless the spec allows fewer (``min_sites``);
    when it does, say on stderr which sites are missing and why."""
    missing = {s: failed.get(s, "no upload") for s in sites if s not in used}
    if not missing:
        return
    if not allow_fewer:
        raise UserError(_site_failures(spec, missing))
    for site, reason in missing.items():
        print(f"smpc: warning: site {site} is not in the result: {reason}", file=sys.stderr)


class LocalRun(NamedTuple):
    """What :func:`run_local` ran: the spec, the result summary and the sites in it."""

    spec: Any
    summary: dict[str, Any]
    sites: tuple[str, ...]
