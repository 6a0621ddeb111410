"""TLS and identity refusals against the real daemons, and revoking a site without a restart.

- Mosquitto with the generated config (:func:`tests.brokers.mosquitto`) refuses plain TCP, a
  certificate of another federation's CA, an expired and a not-yet-valid certificate of the
  federation CA and a party-CA certificate, each in the TLS handshake with a line in its
  log, and still serves a genuine client afterwards.
- A live MPyC session port refuses the same certificates in the TLS handshake (the session
  process does not log those: asyncio drops failed handshakes silently), and a genuine party
  certificate claiming another index at the identity check (``event=mpyc-impostor``);
  afterwards the genuine parties still connect and the session opens its output. The site
  certificate on an MPyC port and the claim of another index on its own are in
  ``tests/test_mpc_session.py``.
- A site removed from the federation (``smpc keys init`` re-run without it) is refused by
  real ``smpc party serve`` daemons after SIGHUP, without a restart, while the other sites'
  uploads go on; a broken new directory is refused with one line and the old one kept. Its
  broker certificate is still accepted by Mosquitto (same CA) until the operator
  regenerates the ACL and sends Mosquitto SIGHUP; from then on the broker refuses its
  subscriptions and drops its publishes.

Certificates are made with :func:`smpc.pki.certs.issue_cert` (``now`` shifted for the expired
and not-yet-valid ones) and a second :func:`smpc.pki.provision.init_keys` (the foreign CA).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from smpc.net.connection import Connection
from smpc.net.topics import Topics
from smpc.pki.certs import CA, CertSpec, cert_name, issue_cert
from smpc.pki.files import generate_key, key_pem, load_private_key
from smpc.pki.kit import TlsFiles
from smpc.pki.provision import init_keys
from tests.brokers import connect, federation_of, kit, mosquitto, requires_mosquitto
from tests.conftest import FEDERATION
from tests.test_broker import _refused, _run

pytestmark = pytest.mark.timeout(180)

ORG = f"smpc federation {FEDERATION['name']}"


@pytest.fixture(scope="module")
def foreign_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another federation with the same names (alpha, oslo, ...) and CAs of its own."""
    root = tmp_path_factory.mktemp("foreign")
    (root / "federation.yaml").write_text(yaml.safe_dump(FEDERATION))
    init_keys(root / "federation.yaml", root / "keys")
    return root / "keys"


def _ca(keys_dir: Path, stem: str) -> CA:
    """One of the federation's CAs (``federation-ca`` or ``party-ca``), with its key."""
    key = load_private_key(keys_dir / "ca" / f"{stem}.key", "ec")
    cert = x509.load_pem_x509_certificate((keys_dir / "ca" / f"{stem}.crt").read_bytes())
    return CA(key, cert, cert.public_bytes(serialization.Encoding.PEM))


def _issued(out: Path, spec: CertSpec, issuer: CA, now: dt.datetime, ca: Path) -> TlsFiles:
    """A new key and a certificate for ``spec`` as ``issuer`` would sign it at ``now``."""
    key = generate_key("ec")
    cert = issue_cert(spec, key.public_key(), issuer, key, now)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "key.pem").write_bytes(key_pem(key))
    return TlsFiles(cert=out / "cert.pem", key=out / "key.pem", ca=ca)


def _dated(out: Path, spec: CertSpec, issuer: CA, ca: Path) -> dict[str, TlsFiles]:
    """An expired and a not-yet-valid certificate of ``issuer`` for ``spec``.

    issue_cert makes a certificate valid from ``now`` - 5 min to ``now`` + 730 days (at
    most the CA's end): 800 days ago is long expired, tomorrow is not valid yet.
    """
    now = dt.datetime.now(dt.UTC)
    return {
        "expired": _issued(out / "expired", spec, issuer, now - dt.timedelta(days=800), ca),
        "not yet valid": _issued(out / "future", spec, issuer, now + dt.timedelta(days=1), ca),
    }


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- the broker port ------------------------------------------------------------------

MQTT_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 0])  # 3.1.1, no id


def _plain_mqtt(host: str, port: int) -> bytes:
    """An MQTT CONNECT without TLS; what the broker answered before it closed."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(MQTT_CONNECT)
        try:
            return sock.recv(64)
        except ConnectionResetError:
            return b""


def _broker_cases(keys_dir: Path, foreign_keys: Path, tmp_path: Path) -> dict[str, TlsFiles]:
    """Client certificates the broker must refuse, each with the right broker CA (so the
    client side of the handshake passes and the refusal is the broker's)."""
    ca = keys_dir / "public" / "federation-ca.crt"
    alpha = kit(keys_dir, "alpha")
    assert alpha.mpyc is not None
    foreign = foreign_keys / "kits" / "alpha" / "tls"
    spec = CertSpec(cert_name("alpha", "party", ORG), eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    return {
        "foreign CA": TlsFiles(cert=foreign / "client.crt", key=foreign / "client.key", ca=ca),
        **_dated(tmp_path / "certs", spec, _ca(keys_dir, "federation-ca"), ca),
        "party CA": TlsFiles(cert=alpha.mpyc.cert, key=alpha.mpyc.key, ca=ca),
    }


# What the client reads in the broker's TLS alert.
BROKER_ALERTS = {
    "foreign CA": "alert unknown ca",
    "expired": "alert certificate expired",
    "not yet valid": "alert bad certificate",
    "party CA": "alert unknown ca",
}


async def _round_trip(broker, keys_dir: Path) -> bytes:
    """alpha receives what the analyst publishes on a job topic: the broker serves."""
    topics = Topics(federation_of(keys_dir).name)
    async with connect(broker, keys_dir, "alpha", client_id="alpha.t", persistent=False) as party:
        await party.subscribe(topics.job("tls-probe"))
        async with connect(broker, keys_dir, "analyst", client_id="analyst.t") as analyst:
            await analyst.publish(topics.job("tls-probe"), b"still serving", retain=False)
        async with asyncio.timeout(15):
            async for message in party.messages():
                return message.body
    raise AssertionError("no message")


@requires_mosquitto
def test_mosquitto_refuses_bad_certificates_in_the_handshake_and_keeps_serving(
    keys_dir: Path, foreign_keys: Path, tmp_path: Path
) -> None:
    cases = _broker_cases(keys_dir, foreign_keys, tmp_path)
    errors = {}
    with mosquitto(keys_dir, tmp_path / "broker") as broker:
        host, port = broker.address

        def log() -> str:
            return broker.log_file.read_text(errors="replace")

        # Plain TCP: the broker's TLS layer reads MQTT bytes, answers nothing and closes.
        assert _plain_mqtt(host, port) == b""
        _wait_for(lambda: "wrong version number" in log(), "the broker's plain-TCP log line")
        for what, tls in cases.items():
            before = log().count("certificate verify failed")
            client = Connection(host, port, tls, client_id="alpha", connect_timeout=10)
            errors[what] = _run(_refused(client))
            _wait_for(
                lambda before=before: log().count("certificate verify failed") > before,  # type: ignore[misc]
                f"the broker's log line for the {what} certificate",
            )
            assert broker.running, what
        assert _run(_round_trip(broker, keys_dir)) == b"still serving"
        text = log()
    for what, exc in errors.items():
        assert f"cannot connect to broker {host}:{port} (client id alpha)" in str(exc), what
        assert BROKER_ALERTS[what] in str(exc).lower(), (what, exc)
        assert exc.permanent, what  # a daemon stops with the reason instead of retrying
    # Mosquitto's lines name the failure and the address, not which check failed:
    # "OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed" (or
    # "Client connection from 127.0.0.1 failed: ...") and "wrong version number".
    assert "SSL routines::wrong version number" in text
    assert " as alpha " not in text  # no refused client got an MQTT session
    assert "as alpha.t" in text and "as analyst.t" in text
