"""The shared reconnect loop in real daemons: a broker restart is survived, a refused
certificate ends the daemon with one clear error instead of endless retries."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.brokers import mosquitto, requires_mosquitto
from tests.test_upload_integration import _start_site, _stop

pytestmark = [requires_mosquitto, pytest.mark.timeout(120)]


def test_site_serve_survives_a_broker_restart(keys_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "oslo-site.yaml"
    config.write_text(
        f"kit: {keys_dir / 'kits' / 'oslo'}\ndata: {tmp_path / 'none.csv'}\n"
        f"state: {tmp_path / 'oslo.answered'}\n"
    )
    log_path = tmp_path / "oslo-site.log"
    with mosquitto(keys_dir, tmp_path / "broker", at_federation_port=True) as broker:
        site = _start_site(config, log_path)
        try:
            broker.stop()
            time.sleep(1.0)
            broker.start()
            deadline = time.monotonic() + 60
            while log_path.read_text().count("event=site-serving") < 2:
                assert site.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        finally:
            _stop([site])
    assert site.returncode == 0, log_path.read_text()


def test_party_serve_whose_certificate_is_refused_exits(keys_dir: Path, tmp_path: Path) -> None:
    kit_dir = tmp_path / "alpha"
    shutil.copytree(keys_dir / "kits" / "alpha", kit_dir)
    # alpha's MPyC certificate is valid but from the party CA: the broker refuses it
    shutil.copy(kit_dir / ".config" / "party_0.crt", kit_dir / "tls" / "client.crt")
    shutil.copy(kit_dir / ".config" / "party_0.key", kit_dir / "tls" / "client.key")
    config = tmp_path / "alpha.yaml"
    config.write_text(f"kit: {kit_dir}\nstore: {tmp_path / 'store'}\n")
    with mosquitto(keys_dir, tmp_path / "broker", at_federation_port=True):
        proc = subprocess.run(
            [sys.executable, "-m", "smpc.cli", "party", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0, proc.stderr
    assert "cannot connect to broker" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "event=broker-lost" not in proc.stdout + proc.stderr
