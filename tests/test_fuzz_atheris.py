"""The coverage-guided harnesses of ``fuzz/`` (atheris), each run for a bounded time.

Each harness runs as its own process for ``SMPC_FUZZ_SECONDS`` (default 40) from its
seed corpus, with libFuzzer's per-input timeout and an RSS limit, and must end without
a crash: no oracle failure, no exception a parser must not raise, no input slower than
the timeout, no process over the memory limit. What each harness feeds and checks is in
its docstring; ``python fuzz/<harness>.py -max_total_time=600`` runs one longer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

ROOT = Path(__file__).resolve().parents[1]
SECONDS = int(os.environ.get("SMPC_FUZZ_SECONDS", "40"))


@pytest.mark.slow
@pytest.mark.fuzz
@pytest.mark.timeout(SECONDS + 120)
@pytest.mark.parametrize("harness", ["envelope", "frames", "messages"])
def test_harness_runs_without_a_crash(harness: str, tmp_path: Path) -> None:
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    artifacts.mkdir()
    command = [
        sys.executable,
        str(ROOT / "fuzz" / f"{harness}.py"),
        str(corpus),
        f"-max_total_time={SECONDS}",
        "-timeout=20",  # seconds per input: a slower one is a crash (a hang)
        "-rss_limit_mb=1536",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        run = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SECONDS + 90
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
        pytest.fail(f"fuzz/{harness}.py did not stop after {SECONDS} s: {exc}")
    log = run.stderr
    crashes = sorted(p.name for p in artifacts.iterdir())
    tail = "\n".join(log.splitlines()[-40:])
    assert run.returncode == 0 and not crashes, f"fuzz/{harness}.py crashed {crashes}:\n{tail}"
    runs = re.search(r"stat::number_of_executed_units:\s+(\d+)", log)
    speed = re.search(r"stat::average_exec_per_sec:\s+(\d+)", log)
    assert runs and int(runs.group(1)) > 1000, f"fuzz/{harness}.py hardly ran:\n{tail}"
    print(f"fuzz/{harness}.py: {runs.group(1)} runs, {speed and speed.group(1)} exec/s")
