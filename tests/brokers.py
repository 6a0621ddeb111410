"""Real brokers for tests: Mosquitto or the embedded amqtt broker for a provisioned federation.

    from tests.brokers import mosquitto, requires_mosquitto

    @requires_mosquitto
    @pytest.mark.timeout(60)
    def test_something(keys_dir, tmp_path):
        with mosquitto(keys_dir, tmp_path) as broker:
            host, port = broker.address
            ...  # Connection(host, port, kit(keys_dir, "alpha").tls, client_id="alpha")

``keys_dir`` is the output of ``smpc keys init`` (the ``keys_dir`` session fixture of
conftest.py). Both context managers start the broker on a free 127.0.0.1 port (or, with
``at_federation_port=True``, on the federation file's broker port, so that
``Connection.from_kit(kit, federation)`` finds it), wait until it accepts TLS
connections, and stop it (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from smpc.broker.embedded import EmbeddedBroker
from smpc.broker.mosquitto import MOSQUITTO, MosquittoBroker
from smpc.config.federation import Federation, load_federation
from smpc.net.connection import Connection
from smpc.pki.kit import Kit, load_broker_kit, load_kit

HAVE_MOSQUITTO = Path(MOSQUITTO).is_file() or shutil.which("mosquitto") is not None
requires_mosquitto = pytest.mark.skipif(
    not HAVE_MOSQUITTO, reason="mosquitto is not installed (tests/run.sh installs it)"
)


def federation_of(keys_dir: Path) -> Federation:
    """The federation a keys directory was made for."""
    return load_federation(Path(keys_dir) / "public" / "federation.yaml")


@functools.cache
def _kit(path: str) -> Kit:
    return load_kit(path)


def kit(keys_dir: Path, name: str) -> Kit:
    """A participant's kit (loaded once per test session)."""
    return _kit(str(Path(keys_dir) / "kits" / name))


def _mosquitto_executable() -> str:
    return MOSQUITTO if Path(MOSQUITTO).is_file() else (shutil.which("mosquitto") or MOSQUITTO)


def _port(federation: Federation, at_federation_port: bool, options: dict[str, Any]) -> None:
    if at_federation_port:
        options["host"] = federation.broker.host
        options["port"] = federation.broker.port


@contextmanager
def mosquitto(
    keys_dir: Path, workdir: Path, *, at_federation_port: bool = False, **options: Any
) -> Iterator[MosquittoBroker]:
    """Mosquitto with the federation's TLS config and ACL in ``workdir``, started."""
    federation = federation_of(keys_dir)
    _port(federation, at_federation_port, options)
    options.setdefault("executable", _mosquitto_executable())
    broker = MosquittoBroker(
        federation,
        load_broker_kit(Path(keys_dir) / "kits" / "broker"),
        Path(workdir),
        **options,
    )
    with broker:
        yield broker


@contextmanager
def embedded_broker(
    keys_dir: Path, workdir: Path, *, at_federation_port: bool = False, **options: Any
) -> Iterator[EmbeddedBroker]:
    """The embedded amqtt broker for the federation in ``workdir``, started."""
    federation = federation_of(keys_dir)
    _port(federation, at_federation_port, options)
    broker = EmbeddedBroker(
        federation,
        load_broker_kit(Path(keys_dir) / "kits" / "broker"),
        Path(workdir),
        **options,
    )
    with broker:
        yield broker


def connect(
    broker: MosquittoBroker | EmbeddedBroker,
    keys_dir: Path,
    name: str,
    *,
    client_id: str | None = None,
    **options: Any,
) -> Connection:
    """A (not yet entered) Connection as participant ``name`` to a test broker."""
    host, port = broker.address
    return Connection(host, port, kit(keys_dir, name).tls, client_id=client_id or name, **options)
