"""Docs are tests: the runnable shell blocks of README.md and docs/*.md, run as written.

A block is runnable when the line before its ```` ```bash ```` fence is the HTML comment
``<!-- test: by-hand -->`` (invisible on GitHub); other blocks are prose examples. The
runnable blocks of one file are one shell session, in file order, as a reader types them
into one terminal: they run with ``bash -e -o pipefail`` in a scratch copy of the
repository (without keys, stores or results), so a failing command fails the test.

What the test changes, and only that: ``parties/federation.yaml`` in the scratch copy gets
a free broker port and free MPyC port ranges (other tests and daemons may hold 8883 and
14000-14249), ``deploy/mosquitto/mosquitto.conf`` listens on that port, and the blocks'
literal ``8883`` becomes that port. ``smpc`` and ``python`` run the scratch copy's code
with this interpreter. The scratch directory is made reachable (mode 0711) for the user
``mosquitto``, which Mosquitto switches to when the test runs as root. Every process the
blocks start is in one process group, killed when the test ends, whatever happened.

docs/deployment.md's by-hand federation (broker, three ``smpc party serve``, three ``smpc site
serve``, ``smpc run`` for a sum, a fedavg round and a GWAS) is checked against the
plaintext: NumPy on the same CSV and .npz files, and ``plink1.9 --assoc`` on the pooled
fileset (the GWAS's ``.assoc`` must be identical).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.plaintext import SITES, check_assoc, check_fedavg, check_sum, require_plink

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- test: by-hand -->"
BY_HAND = ROOT / "docs" / "deployment.md"  # the federation run by hand, results checked
BLOCK = re.compile(re.escape(MARKER) + r"[ \t]*\n```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)
IGNORE = shutil.ignore_patterns(
    ".git", "keys", "var", "broker-data", "results", "__pycache__", ".*_cache", "*.egg-info",
    ".benchmarks", ".*.answered",
)  # fmt: skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def runnable_blocks(path: Path) -> list[str]:
    """The marked ```` ```bash ```` blocks of a Markdown file, in order."""
    return BLOCK.findall(path.read_text())


def _doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [f for f in files if runnable_blocks(f)]


def test_the_by_hand_federation_has_runnable_blocks():
    """The marker is found (a renamed marker would silently test nothing)."""
    assert len(runnable_blocks(BY_HAND)) >= 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_range(taken: set[int], size: int = 50) -> int:
    """The first port of ``size`` consecutive ports that are free now."""
    for base in range(20000 + (os.getpid() % 200) * 100, 60000, 100):
        ports = range(base, base + size)
        if taken & set(ports):
            continue
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        taken.update(ports)
        return base
    raise RuntimeError("no free port range")


def _scratch_copy() -> tuple[Path, int]:
    """The repository without state, on free ports; returns it and the broker port."""
    scratch = Path(tempfile.mkdtemp(prefix="smpc-docs-"))
    scratch.chmod(0o711)  # Mosquitto started as root runs as `mosquitto`: let it pass
    repo = scratch / "smpc"
    shutil.copytree(ROOT, repo, ignore=IGNORE)
    repo.chmod(0o755)
    port = _free_port()
    federation_file = repo / "parties" / "federation.yaml"
    doc = yaml.safe_load(federation_file.read_text())
    doc["broker"]["port"] = port
    taken: set[int] = {port}
    for party in doc["parties"]:
        base = _free_range(taken)
        party["mpyc_ports"] = f"{base}-{base + 49}"
    federation_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    conf = repo / "deploy" / "mosquitto" / "mosquitto.conf"
    conf.write_text(conf.read_text().replace("listener 8883 ", f"listener {port} "))
    bin_dir = scratch / "bin"  # `smpc` and `python`: this interpreter on the copy's code
    bin_dir.mkdir()
    for name, command in (("smpc", f'"{sys.executable}" -m smpc.cli'), ("python", sys.executable)):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    return repo, port


def _run_session(repo: Path, blocks: list[str], port: int, timeout: float = 600) -> str:
    """Run the blocks as one bash session; return its output (stdout and stderr)."""
    script = repo.parent / "session.sh"
    script.write_text("\n".join(b.replace("8883", str(port)) for b in blocks))
    env = {
        **os.environ,
        "PATH": f"{repo.parent / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo),
    }
    transcript = repo.parent / "session.log"  # a file: a daemon left running keeps no pipe open
    with transcript.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", str(script)],
            cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            out.write(f"\n(timed out after {timeout:g} s)\n")
        finally:
            _kill_group(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    output = transcript.read_text(errors="replace")
    logs = "".join(
        f"\n--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted((repo / "results").glob("*.log"))
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{output}{logs}"
    return output


def _kill_group(pgid: int) -> None:
    """Stop every process the session started (daemons left running included)."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.fixture
def scratch():
    repo, port = _scratch_copy()
    try:
        yield repo, port
    finally:
        shutil.rmtree(repo.parent, ignore_errors=True)


def test_federation_by_hand_gives_the_plaintext_results(scratch):
    require_plink()
    repo, port = scratch
    output = _run_session(repo, runnable_blocks(BY_HAND), port)
    sites = ", ".join(SITES)
    for spec in ("cohort", "cohort-fit"):
        assert re.search(rf"{spec}: 3 sites \({sites}\); results in results/{spec}/", output)
    assert f"cc-assoc: 3 sites ({sites}); results in results/cc-assoc/" in output

    # sum and fedavg: NumPy on the same files; GWAS: PLINK 1.9 on the pooled fileset
    data = repo / "smpc" / "data" / "demo"
    result = check_sum(repo / "results" / "cohort" / "result.json", data)
    assert json.dumps(result["age"]["count"]) in output  # the block printed result.json
    check_fedavg(repo / "results" / "cohort-fit" / "model.npz", data)
    ours = check_assoc(
        repo / "results" / "cc-assoc" / "cc-assoc.assoc",
        repo.parent,
        repo / "smpc" / "data" / "gwas" / "POOLED",
    )
    assert ours.splitlines()[1] in output  # the block printed its first rows

    # every site answered every job; nothing was skipped or failed
    for site in SITES:
        log = (repo / "results" / f"{site}.log").read_text()
        assert log.count("event=upload-complete") == 3, log
        assert "event=upload-failed" not in log and "Traceback" not in log


def test_the_runnable_blocks_of_docs_run():
    """README.md and docs/*.md: each file's blocks, one session in a scratch copy of its own."""
    for doc in _doc_files():
        if doc == BY_HAND:
            continue  # the test above, with its results checked
        repo, port = _scratch_copy()
        try:
            _run_session(repo, runnable_blocks(doc), port)
        finally:
            shutil.rmtree(repo.parent, ignore_errors=True)


def test_a_failing_command_fails_the_session(scratch):
    """The harness can fail: a session whose command fails reports it, and a daemon it
    left running is killed with its process group."""
    repo, port = scratch
    blocks = ["sleep 300 & echo $! > daemon.pid", "echo started; false", "echo never"]
    started = time.monotonic()
    with pytest.raises(AssertionError, match="exit 1"):
        _run_session(repo, blocks, port, timeout=60)
    assert time.monotonic() - started < 30
    daemon = int((repo / "daemon.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(daemon, 0)
