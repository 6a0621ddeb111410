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
import os
import re
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from smpc.broker.acl import mosquitto_acl
from smpc.config.federation import load_federation
from smpc.errors import UserError
from smpc.net.connection import Connection
from smpc.net.topics import Topics
from smpc.pki.certs import CA, CertSpec, cert_name, issue_cert, mpyc_party_name
from smpc.pki.files import generate_key, key_pem, load_private_key
from smpc.pki.kit import TlsFiles, load_kit, reload_kit
from smpc.pki.provision import init_keys
from tests.brokers import connect, federation_of, kit, mosquitto, requires_mosquitto
from tests.conftest import FEDERATION, free_port
from tests.test_broker import _refused, _run
from tests.test_mpc_session import _ended, _kill_all, _session, _wait_line
from tests.test_party_daemon import (
    Statuses,
    _closing,
    _data,
    _job,
    _log,
    _parties,
    _publish,
    _upload,
)
from tests.test_upload_integration import _start_site, _stop, _wait_for_log

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
        await party.subscribe(topics.job("analyst", "tls-probe"))
        async with connect(broker, keys_dir, "analyst", client_id="analyst.t") as analyst:
            await analyst.publish(
                topics.job("analyst", "tls-probe"), b"still serving", retain=False
            )
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


# --- a live MPyC session port ---------------------------------------------------------


def _mpyc_hello(keys_dir: Path, port: int, server: int, claimed: int, tls: TlsFiles | None) -> str:
    """Connect to party ``server``'s MPyC port and say "I am party ``claimed``" (MPyC's
    first two bytes); what came of it: the TLS handshake failed (and how), the connection
    was dropped after it, or the party answered.

    TLS 1.2, so that the server's verdict on the client certificate is part of the
    handshake (in TLS 1.3 the client finishes its handshake before the server checks).
    """
    hello = claimed.to_bytes(2, "little") + bytes(64)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if tls is None:  # plain TCP
            raw.sendall(hello)
            try:
                return "answered" if raw.recv(1024) else "dropped"
            except ConnectionResetError:
                return "dropped"
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.cert, keyfile=tls.key)
        try:
            conn = context.wrap_socket(raw, server_hostname=mpyc_party_name(server))
        except (ssl.SSLError, OSError) as exc:
            return f"handshake failed: {type(exc).__name__}"
        with conn:
            try:
                conn.sendall(hello)
                return "answered" if conn.recv(1024) else "dropped"
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                return "dropped"


def _mpyc_cases(keys_dir: Path, foreign_keys: Path, tmp_path: Path) -> dict[str, TlsFiles]:
    """Certificates of "MPyC party 0" that party 2's MPyC port must refuse in TLS."""
    ca = keys_dir / "public" / "party-ca.crt"
    foreign = foreign_keys / "kits" / "alpha" / ".config"
    name = mpyc_party_name(0)
    spec = CertSpec(
        cert_name(name, "party", ORG),
        sans=(x509.DNSName(name),),
        eku=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    )
    return {
        "foreign CA": TlsFiles(cert=foreign / "party_0.crt", key=foreign / "party_0.key", ca=ca),
        **_dated(tmp_path / "certs", spec, _ca(keys_dir, "party-ca"), ca),
    }


@pytest.mark.slow
def test_mpyc_port_refuses_bad_certificates_and_the_session_still_opens(
    keys_dir: Path, foreign_keys: Path, tmp_path: Path
) -> None:
    """gamma (party 2) listens for alpha and beta; beta connects. Before alpha comes,
    plain TCP, foreign-CA, expired and not-yet-valid certificates of "MPyC party 0" and
    beta's genuine certificate claiming index 0 try gamma's port: all are refused, then
    the real alpha connects and the three open the session's output."""
    addresses = [("127.0.0.1", free_port()) for _ in range(3)]
    procs = []
    outcomes = {}
    try:
        procs = [_session(keys_dir, tmp_path, i, addresses, 1, timeout=60) for i in (2, 1)]
        gamma = procs[0]
        _wait_line(gamma, "event=mpyc-peer party=beta index=1", 30)
        port = addresses[2][1]
        outcomes["plain TCP"] = _mpyc_hello(keys_dir, port, 2, 0, None)
        for what, tls in _mpyc_cases(keys_dir, foreign_keys, tmp_path).items():
            outcomes[what] = _mpyc_hello(keys_dir, port, 2, 0, tls)
        beta = keys_dir / "kits" / "beta" / ".config"
        genuine = TlsFiles(
            beta / "party_1.crt", beta / "party_1.key", keys_dir / "public" / "party-ca.crt"
        )
        outcomes["index of another"] = _mpyc_hello(keys_dir, port, 2, 0, genuine)
        _wait_line(gamma, "event=mpyc-impostor", 15)
        assert gamma.poll() is None  # still waiting for the real alpha
        procs.append(_session(keys_dir, tmp_path, 0, addresses, 1, timeout=60))
        ended = {i: _ended(proc, 90) for i, proc in zip((2, 1, 0), procs, strict=True)}
    finally:
        _kill_all(procs)
    assert outcomes["plain TCP"] == "dropped"
    for what in ("foreign CA", "expired", "not yet valid"):
        assert outcomes[what].startswith("handshake failed"), outcomes
    assert outcomes["index of another"] == "dropped"
    for i, (code, err, _) in ended.items():
        assert code == 0, err
        assert "Traceback" not in err
        assert (tmp_path / f"watch{i}.result.json").is_file()
    err = ended[2][1]
    # Only the genuine certificate got past TLS to the identity check, which logs it; the
    # handshake failures leave no line (asyncio drops them without logging).
    assert err.count("event=mpyc-impostor ") == 1
    line = next(ln for ln in err.splitlines() if "event=mpyc-impostor" in ln)
    assert 'claimed=0 subject="MPyC party 1"' in line
    assert "peer claims to be party 0 but its certificate is for party 1" in line
    assert "event=mpyc-peer party=alpha index=0" in err


# --- revoking a site: SIGHUP --------------------------------------------------------


def _refusals(stderr: str, site: str) -> list[str]:
    """The parties that refused ``site``'s upload because it is not in their directory."""
    reason = f"site {site!r} is not in the federation's site directory"
    return re.findall(rf"party (\w+) refused 'x': [^;]*{re.escape(reason)}", stderr)


PARTIES = ("alpha", "beta", "gamma")


@requires_mosquitto
@pytest.mark.slow
def test_a_removed_site_is_refused_after_sighup_without_a_restart(tmp_path: Path) -> None:
    """Real Mosquitto, three ``smpc party serve`` and oslo's ``smpc site serve``.

    tromso uploads; the operator re-runs ``smpc keys init`` without tromso and sends every
    daemon SIGHUP (alpha first gets a broken directory.json, which it refuses, keeping the
    old one). From then on every party refuses tromso's envelopes and a close naming it,
    while oslo's and bergen's uploads are stored. Mosquitto still lets tromso in (its
    certificate is from the same CA) until its ACL is regenerated and Mosquitto gets
    SIGHUP; then tromso's upload no longer reaches the parties at all.
    """
    federation = {**FEDERATION, "broker": {"host": "127.0.0.1", "port": free_port()}}
    federation_file = tmp_path / "federation.yaml"
    federation_file.write_text(yaml.safe_dump(federation))
    keys = tmp_path / "keys"
    init_keys(federation_file, keys)
    oslo = tmp_path / "oslo-site.yaml"
    oslo.write_text(
        f"kit: {keys / 'kits' / 'oslo'}\ninputs:\n  x: {_data(tmp_path, 'oslo')}\n"
        f"state: {tmp_path / 'oslo.answered'}\n"
    )
    before, after, later = _job("before"), _job("after"), _job("later")
    procs: list = []
    with (
        mosquitto(keys, tmp_path / "broker", at_federation_port=True) as broker,
        Statuses(keys, ["before"]) as seen,
    ):
        try:
            parties = _parties(keys, tmp_path)
            site = _start_site(oslo, tmp_path / "oslo-site.log")
            procs = [*parties, site]
            _publish(keys, before)
            up = _upload(keys, "tromso", _data(tmp_path, "tromso"), "before")
            assert up.returncode == 0, up.stderr
            _wait_for_log(site, "event=upload-complete job=before site=oslo")

            # The operator removes tromso from the federation and provisions again.
            federation_file.write_text(
                yaml.safe_dump({**federation, "sites": [{"name": "oslo"}, {"name": "bergen"}]})
            )
            report = init_keys(federation_file, keys)
            assert any("tromso is no longer in" in note for note in report.notes)
            directory = keys / "kits" / "alpha" / "public" / "directory.json"
            good = directory.read_bytes()
            directory.write_bytes(good[: len(good) // 2])  # a half-copied file
            parties[0].send_signal(signal.SIGHUP)
            _wait_for_log(parties[0], "event=reload-refused party=alpha")
            directory.write_bytes(good)
            copy = keys / "kits" / "oslo" / "public" / "federation.yaml"
            copy.write_text(yaml.safe_dump(federation))  # the old file: still lists tromso
            site.send_signal(signal.SIGHUP)
            _wait_for_log(site, "event=reload-refused site=oslo")
            copy.write_bytes(federation_file.read_bytes())
            for proc in procs:
                proc.send_signal(signal.SIGHUP)
            for name, proc in zip(PARTIES, parties, strict=True):
                _wait_for_log(proc, f"event=reload party={name} ")
            _wait_for_log(site, "event=reload site=oslo ")

            # tromso is refused by every party; the other sites are stored as before.
            _publish(keys, after)
            up = _upload(keys, "tromso", _data(tmp_path, "tromso"), "after", timeout=30)
            assert up.returncode != 0
            assert sorted(_refusals(up.stderr, "tromso")) == sorted(PARTIES), up.stderr
            _wait_for_log(site, "event=upload-complete job=after site=oslo")
            up = _upload(keys, "bergen", _data(tmp_path, "bergen"), "after")
            assert up.returncode == 0, up.stderr
            # A close naming tromso (whose share of "before" is stored) is refused.
            _publish(keys, _closing(seen, before, ("oslo", "tromso")))
            for name in PARTIES:
                status = seen.wait(name, "before", "failed", 30)
                assert "names tromso, no longer in the federation's directory" in status.reason

            # The broker still lets tromso in: its certificate is from the federation CA.
            # The operator regenerates the ACL, and Mosquitto reloads it on SIGHUP.
            broker.acl_file.write_text(mosquitto_acl(load_federation(federation_file)))
            os.kill(broker.pid, signal.SIGHUP)
            _wait_for(lambda: "Reloading config" in broker.log_file.read_text(), "the reload")
            _publish(keys, later)
            up = _upload(keys, "tromso", _data(tmp_path, "tromso"), "later", timeout=5)
            assert up.returncode != 0
            assert "job later: not announced on the broker within 5 s" in up.stderr  # unreadable
            _wait_for_log(site, "event=upload-complete job=later site=oslo")
            assert all(proc.poll() is None for proc in procs)
        finally:
            _stop(procs)
        broker_log = broker.log_file.read_text()
    for proc in procs:
        assert proc.returncode == 0, _log(proc)
        assert "Traceback" not in _log(proc)
    for proc in parties:
        log = _log(proc)
        reload = next(ln for ln in log.splitlines() if "event=reload " in ln)
        assert "sites=oslo,bergen added=none removed=tromso" in reload
        assert "event=share-stored job=before input=x site=tromso" in log
        assert "event=share-rejected job=after input=x site=tromso reason=" in log
        assert "event=share-stored job=after input=x site=bergen" in log
        assert "job=later input=x site=tromso" not in log  # never reached the party
    refused = next(ln for ln in _log(parties[0]).splitlines() if "event=reload-refused" in ln)
    assert "directory.json" in refused and "the directory loaded before stays in use" in refused
    site_log = _log(site)
    assert "removed=tromso" in next(ln for ln in site_log.splitlines() if "event=reload " in ln)
    refused = next(ln for ln in site_log.splitlines() if "event=reload-refused" in ln)
    assert "federation.yaml: does not list the participants of" in refused
    # Mosquitto still took tromso's certificate after the ACL reload; the ACL gave it nothing.
    reloaded = broker_log.index("Reloading config")
    assert " as tromso.up-later " in broker_log[reloaded:]


def test_reload_refuses_other_computing_parties_and_keeps_nothing_of_them(tmp_path: Path) -> None:
    """Parties' indices are in MPyC certificates and running jobs: a new directory with
    other parties is refused on reload (a restart of every party is needed)."""
    federation_file = tmp_path / "federation.yaml"
    federation_file.write_text(yaml.safe_dump(FEDERATION))
    init_keys(federation_file, tmp_path / "keys")
    alpha = load_kit(tmp_path / "keys" / "kits" / "alpha")
    same = reload_kit(alpha)
    assert (same.added, same.removed) == ((), ())
    assert same.kit.directory.sites == ("oslo", "bergen", "tromso")
    federation_file.write_text(yaml.safe_dump({**FEDERATION, "parties": FEDERATION["parties"][:2]}))
    init_keys(federation_file, tmp_path / "keys")
    with pytest.raises(UserError, match=r"parties changed \(alpha, beta, gamma -> alpha, beta\)"):
        reload_kit(alpha)
