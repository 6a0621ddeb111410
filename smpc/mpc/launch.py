"""Starting MPyC session processes (``python -m smpc.mpc.session``).

The party daemon starts one session per job for itself, as a child process it
awaits beside its message loop (:func:`run_session_process`); ``smpc demo`` and
the tests start one per party on this machine (:func:`run_local_sessions`).
Either way the command line is built here, so the MPyC options (``-P``, ``-I``,
``-T``, ``--ssl``) are spelled in one place.

A session reports on stderr: ``event=NAME key=value ...`` lines for what an
operator must see (an impostor refused, a peer lost), and one last
``session: job JOB: REASON`` line when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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
    connect_grace: float | None = None,
) -> list[str]:
    """The argv of party ``index``'s session among ``addresses`` (host, port).

    ``timeout`` bounds connecting to every peer; once one peer has connected the
    others get ``connect_grace`` seconds more (the session's default when None).
    """
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
    if connect_grace is not None:
        cmd += ["--connect-grace", str(connect_grace)]
    for host, port in addresses:
        cmd += ["-P", f"{host}:{port}"]
    cmd += ["-I", str(index), "-T", str(threshold), "--no-log"]
    if ssl:
        cmd.append("--ssl")
    return cmd


FAILURE_PREFIX = "session: "
# How a session fails because of another party (smpc.mpc.session): a consequence.
PEER_FAILURES = ("lost party ", "parties did not all connect")


def failure_reason(lines: Sequence[str], returncode: int) -> str:
    """Why a session failed: its ``session: job JOB: REASON`` line, else its last words."""
    for line in reversed(lines):
        if line.startswith(FAILURE_PREFIX):
            text = line[len(FAILURE_PREFIX) :]
            head, sep, reason = text.partition(": ")
            return reason if sep and head.startswith("job ") else text
    last = [line for line in lines if line.strip()]
    return last[-1] if last else f"exit status {returncode}"


async def run_session_process(
    cmd: Sequence[str], *, limit: float, on_line: Callable[[str], None] | None = None
) -> str:
    """Run one session process without blocking the event loop; "" or why it failed.

    Every stderr line goes to ``on_line`` as it arrives (the party daemon logs the
    ``event=`` lines with the job). The process is killed when it runs longer than
    ``limit`` seconds, and when the awaiting task is cancelled (the daemon stops).
    """
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    lines: list[str] = []

    async def read() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            del lines[:-50]  # the last words are enough
            if on_line is not None:
                on_line(line)

    reader = asyncio.ensure_future(read())
    try:
        try:
            await asyncio.wait_for(proc.wait(), limit)
        except TimeoutError:
            return f"the MPyC session did not finish within {limit:g} s"
        await reader  # the rest of stderr, up to its end
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    assert proc.returncode is not None  # waited for above
    return "" if proc.returncode == 0 else failure_reason(lines, proc.returncode)


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
        failures = []
        for i, proc in enumerate(procs):
            try:
                _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                raise SessionFailed(i, f"no result after {2 * timeout:g} s") from None
            if proc.returncode != 0:
                lines = err.decode(errors="replace").strip().splitlines()
                failures.append(SessionFailed(i, failure_reason(lines, proc.returncode)))
        if failures:  # the cause, rather than the peers that lost the failing party
            causes = [f for f in failures if not f.reason.startswith(PEER_FAILURES)]
            raise (causes or failures)[0]
        return [json.loads(path.read_text()) for path in results]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
