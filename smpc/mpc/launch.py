"""Starting MPyC session processes (``python -m smpc.mpc.session``).

The party daemon starts one session per job for itself; ``smpc demo`` and the
tests start one per party on this machine. Either way the command line is
built here, so the MPyC options (``-P``, ``-I``, ``-T``, ``--ssl``) are spelled
in one place.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smpc.mpc.task import SessionTask


@dataclass(frozen=True)
class SessionFailed(Exception):
    """A session process ended without a result; ``reason`` is its last words."""

    party: int
    reason: str

    def __str__(self) -> str:
        return f"MPyC session of party {self.party} failed: {self.reason}"


def session_command(
    *,
    kit: Path,
    task: Path,
    result: Path,
    addresses: Sequence[tuple[str, int]],
    index: int,
    threshold: int,
    ssl: bool = True,
    timeout: float = 60.0,
) -> list[str]:
    """The argv of party ``index``'s session among ``addresses`` (host, port)."""
    cmd = [
        sys.executable,
        "-m",
        "smpc.mpc.session",
        "--kit",
        str(kit),
        "--task",
        str(task),
        "--result",
        str(result),
        "--timeout",
        str(timeout),
    ]
    for host, port in addresses:
        cmd += ["-P", f"{host}:{port}"]
    cmd += ["-I", str(index), "-T", str(threshold), "--no-log"]
    if ssl:
        cmd.append("--ssl")
    return cmd


def run_local_sessions(
    tasks: Sequence[SessionTask],
    kits: Sequence[Path],
    addresses: Sequence[tuple[str, int]],
    threshold: int,
    workdir: Path,
    *,
    ssl: bool = True,
    timeout: float = 60.0,
) -> list[dict]:
    """Run every party's session on this machine and return their results.

    Each process gets ``timeout`` seconds to connect and twice that to finish;
    on any failure all processes are stopped and :class:`SessionFailed` names
    the first party that failed and why.
    """
    procs = []
    results = []
    try:
        for i, (task, kit) in enumerate(zip(tasks, kits, strict=True)):
            task_path = workdir / f"task.{task.job}.{i}.json"
            result_path = workdir / f"result.{task.job}.{i}.json"
            result_path.unlink(missing_ok=True)
            task.write(task_path)
            cmd = session_command(
                kit=kit,
                task=task_path,
                result=result_path,
                addresses=addresses,
                index=i,
                threshold=threshold,
                ssl=ssl,
                timeout=timeout,
            )
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            results.append(result_path)
        deadline = time.monotonic() + 2 * timeout
        for i, proc in enumerate(procs):
            try:
                _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                raise SessionFailed(i, f"no result after {2 * timeout:g} s") from None
            if proc.returncode != 0:
                lines = err.decode(errors="replace").strip().splitlines()
                raise SessionFailed(i, lines[-1] if lines else f"exit status {proc.returncode}")
        return [json.loads(path.read_text()) for path in results]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
