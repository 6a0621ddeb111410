"""Every benchmark runs in its --quick form and ends with one JSON line of its figures.

Only the form is checked here (timings are never pass/fail); the figures themselves
are in the README.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.brokers import requires_mosquitto

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "share_encrypt": {"seconds", "mb_per_s", "ratio_vs_np_save", "peak_rss_mb"},
    "upload": {"seconds", "plain_seconds", "ratio_vs_plain"},
    "load": {"ratio_vs_plain", "mb_per_s", "p50_seconds", "p99_seconds", "peak_party_rss_mb"},
    "soak": {"jobs", "seconds"},
    "fedavg": {"seconds", "peak_rss_mb", "ratio_vs_plain", "ratio_vs_numpy"},
    "gwas": {
        "assoc_seconds",
        "assoc_ratio_vs_plink",
        "linear_seconds",
        "linear_ratio_vs_plink",
        "linear_aggregates_ratio_vs_plink",
        "peak_rss_mb",
        "plink_assoc_seconds",
        "plink_linear_seconds",
    },
    "pca": {"seconds", "plink2_seconds", "ratio_vs_plink2", "peak_rss_mb", "iterations"},
}
# Figures that count failures: the benchmark's own checks, so they must be 0. (The quick
# soak's thread count is only reported: after its short warm-up a thread pool may still
# start a worker, which then stays idle.)
ZERO = {
    "load": {"lost_shares", "duplicate_shares", "partial_files"},
    "soak": {"wrong_results", "leaked_fds", "leaked_processes", "leaked_ports"},
}
REPORTED = {"soak": {"rss_growth_pct", "leaked_threads"}}


@requires_mosquitto
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", sorted(CASES))
def test_quick_run_prints_its_figures_last(name):
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) >= 2  # progress first
    figures = json.loads(lines[-1])
    assert CASES[name] | REPORTED.get(name, set()) <= set(figures)
    assert all(figures[key] > 0 for key in CASES[name])
    assert {key: figures[key] for key in ZERO.get(name, ())} == dict.fromkeys(ZERO.get(name, ()), 0)
    if name == "pca":  # the same PCs as plink2 --pca meanimpute on POOLED
        assert figures["worst_eigenvalue_rel"] <= 1e-4
        assert figures["worst_correlation_deficit"] <= 1e-4
    if name == "gwas":  # the rows PLINK prints on POOLED, every column
        assert all(same == total > 0 for same, total in figures["rows_equal_plink"].values())
