"""The ``smpc`` command as a user runs it: a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smpc import __version__

ROOT = Path(__file__).resolve().parent.parent


def smpc(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smpc.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def test_version_and_help():
    assert smpc("--version").stdout.strip() == f"smpc {__version__}"
    out = smpc("--help")
    assert out.returncode == 0 and "keys" in out.stdout and "demo" in out.stdout


def test_keys_init_on_the_example_federation_then_rerun_keeps_keys(tmp_path):
    first = smpc("keys", "init", str(ROOT / "parties" / "federation.yaml"), "--out", str(tmp_path))
    assert first.returncode == 0, first.stderr
    key = tmp_path / "kits" / "alpha" / ".config" / "party_0.key"
    assert key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    again = smpc("keys", "init", str(ROOT / "parties" / "federation.yaml"), "--out", str(tmp_path))
    assert again.returncode == 0 and "kept" in again.stdout
    assert key.read_bytes() == before


def test_bad_federation_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "federation.yaml"
    bad.write_text(
        "name: x\nthreshold: 3\nbroker: {host: 127.0.0.1}\nparties:\n"
        "  - {name: a, host: 127.0.0.1, mpyc_ports: 14000-14001}\n"
        "  - {name: b, host: 127.0.0.1, mpyc_ports: 14100-14101}\n"
    )
    out = smpc("keys", "init", str(bad), "--out", str(tmp_path / "keys"))
    assert out.returncode == 2
    assert "threshold" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.timeout(180)
def test_demo_prints_matching_secure_and_plaintext_results(tmp_path):
    out = smpc("demo", "--workdir", str(tmp_path), timeout=170)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "match" in out.stdout and "MISMATCH" not in out.stdout
    assert "mean systolic_bp" in out.stdout
    # The demo really went through envelopes and MPyC sessions on disk.
    assert len(list((tmp_path / "inbox").rglob("*.env"))) == 9
    assert len(list(tmp_path.glob("result.*.json"))) == 3
