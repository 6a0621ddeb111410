"""Shared fixtures: a provisioned local federation and free loopback ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from smpc.pki.provision import init_keys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FEDERATION = {
    "name": "test",
    "threshold": 1,
    "broker": {"host": "127.0.0.1", "port": free_port()},  # a real broker listens here in tests
    "parties": [
        {"name": "alpha", "host": "127.0.0.1", "mpyc_ports": "20000-20999"},
        {"name": "beta", "host": "127.0.0.1", "mpyc_ports": "21000-21999"},
        {"name": "gamma", "host": "127.0.0.1", "mpyc_ports": "22000-22999"},
    ],
    "sites": [{"name": "oslo"}, {"name": "bergen"}, {"name": "tromso"}],
    "analysts": [{"name": "analyst"}, {"name": "eve"}],  # eve: the other analyst
}


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``smpc keys init`` output for the three-party test federation."""
    root = tmp_path_factory.mktemp("federation")
    federation = root / "federation.yaml"
    federation.write_text(yaml.safe_dump(FEDERATION))
    init_keys(federation, root / "keys")
    return root / "keys"
