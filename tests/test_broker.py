"""Brokers: Mosquitto config and ACL, refused clients, the local runners, the embedded broker."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smpc.broker.acl import access_rules, filter_matches, mosquitto_acl
from smpc.broker.embedded import EmbeddedBroker
from smpc.broker.mosquitto import MosquittoBroker, mosquitto_config, write_mosquitto_files
from smpc.broker.runner import BrokerStartError
from smpc.config.federation import load_federation
from smpc.net.connection import Connection
from smpc.net.errors import ConnectFailed, SubscriptionRefused
from smpc.net.reassembly import Message
from smpc.net.topics import Topics
from smpc.pki.kit import TlsFiles, load_broker_kit
from tests.brokers import (
    connect,
    embedded_broker,
    federation_of,
    kit,
    mosquitto,
    requires_mosquitto,
)

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
T = Topics("test")


# --- ACL and configuration ------------------------------------------------------------


def _parse_acl(text: str) -> dict[str, dict[str, set[str]]]:
    users: dict[str, dict[str, set[str]]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        words = line.split()
        if words[0] == "user":
            current = users.setdefault(words[1], {"read": set(), "write": set()})
        else:
            assert words[0] == "topic" and current is not None, line
            current[words[1]].add(words[2])
    return users


def _may(acl: dict[str, dict[str, set[str]]], user: str, access: str, topic: str) -> bool:
    return any(filter_matches(p, topic) for p in acl.get(user, {}).get(access, ()))


def test_acl_names_each_participant_explicitly(keys_dir: Path) -> None:
    federation = federation_of(keys_dir)
    text = mosquitto_acl(federation)
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert not any(line.startswith("pattern") or "#" in line for line in rules)
    acl = _parse_acl(text)
    assert set(acl) == {n for n, _ in federation.participants}
    for rules in acl.values():
        for topic in rules["read"] | rules["write"]:
            levels = topic.split("/")
            assert levels[:2] == ["smpc", "test"]
            # a wildcard only where a job id goes (and, for jobs and a party's results, the
            # analyst)
            assert all(
                lv != "+"
                or (i == 3 and levels[2] != "up")
                or (i == 4 and levels[2] in ("result", "jobs"))
                for i, lv in enumerate(levels)
            )
    assert acl["oslo"]["write"] == {T.upload("oslo", p) for p in ("alpha", "beta", "gamma")}
    assert acl["alpha"]["write"] == {
        *(T.ack(s, "alpha") for s in ("oslo", "bergen", "tromso")),
        "smpc/test/result/+/+/alpha",
        "smpc/test/status/+/alpha",
    }
    assert acl["analyst"]["write"] == {T.jobs_of("analyst")}


@pytest.mark.parametrize(
    ("user", "access", "topic", "allowed"),
    [
        ("oslo", "write", T.upload("oslo", "alpha"), True),
        ("oslo", "write", T.upload("bergen", "alpha"), False),
        ("oslo", "write", T.ack("oslo", "alpha"), False),
        ("oslo", "write", T.job("analyst", "j1"), False),
        ("oslo", "read", T.ack("oslo", "alpha"), True),
        ("oslo", "read", T.ack("bergen", "alpha"), False),
        ("oslo", "read", T.upload("oslo", "alpha"), False),
        ("oslo", "read", T.job("analyst", "j1"), True),
        ("oslo", "read", T.status("j1", "beta"), True),
        ("oslo", "read", T.result("analyst", "j1", "beta"), False),
        ("alpha", "read", T.upload("oslo", "alpha"), True),
        ("alpha", "read", T.upload("oslo", "beta"), False),
        ("alpha", "write", T.ack("oslo", "alpha"), True),
        ("alpha", "write", T.ack("oslo", "beta"), False),
        ("alpha", "write", T.result("analyst", "j1", "alpha"), True),
        ("alpha", "write", T.result("eve", "j1", "alpha"), True),
        ("alpha", "write", T.result("analyst", "j1", "beta"), False),
        ("alpha", "write", T.upload("oslo", "alpha"), False),
        ("alpha", "write", T.job("analyst", "j1"), False),
        ("alpha", "read", T.status("j1", "gamma"), True),
        ("alpha", "read", T.result("analyst", "j1", "gamma"), False),
        ("analyst", "write", T.job("analyst", "j1"), True),
        ("eve", "write", T.job("analyst", "j1"), False),  # no analyst replaces another's job
        ("eve", "write", T.job("eve", "j1"), True),
        ("analyst", "read", T.result("analyst", "j1", "gamma"), True),
        ("analyst", "read", T.result("eve", "j1", "gamma"), False),
        ("eve", "read", T.result("analyst", "j1", "gamma"), False),
        ("eve", "read", T.result("eve", "j1", "gamma"), True),
        ("analyst", "read", T.upload("oslo", "alpha"), False),
        ("analyst", "write", T.result("analyst", "j1", "alpha"), False),
        ("mallory", "read", T.job("analyst", "j1"), False),
    ],
)
def test_acl_semantics(keys_dir: Path, user: str, access: str, topic: str, allowed: bool) -> None:
    acl = _parse_acl(mosquitto_acl(federation_of(keys_dir)))
    assert _may(acl, user, access, topic) is allowed
    rules = access_rules(federation_of(keys_dir)).get(user)
    same = rules is not None and any(
        filter_matches(p, topic) for p in (rules.publish if access == "write" else rules.read)
    )
    assert same is allowed


def test_mosquitto_config(keys_dir: Path) -> None:
    broker_kit = load_broker_kit(keys_dir / "kits" / "broker")
    text = mosquitto_config(
        federation_of(keys_dir),
        broker_kit,
        host="127.0.0.1",
        port=18883,
        data_dir="/var/lib/smpc",
        acl_file="/etc/smpc/acl",
    )
    lines = {line for line in text.splitlines() if line and not line.startswith("#")}
    for expected in (
        "listener 18883 127.0.0.1",
        f"cafile {broker_kit.tls.ca}",
        f"certfile {broker_kit.tls.cert}",
        f"keyfile {broker_kit.tls.key}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        "allow_anonymous false",
        "acl_file /etc/smpc/acl",
        "persistence true",
        "persistence_location /var/lib/smpc/",
        "max_packet_size 16777216",
        "max_queued_bytes 0",
        "log_dest stdout",
    ):
        assert expected in lines
    assert "max_queued_messages 0" not in lines  # see the comment in mosquitto_config
    assert not any(line.startswith(("listener 1883", "port ")) for line in lines)


def test_deploy_files_are_current(tmp_path: Path) -> None:
    """deploy/mosquitto/ is what write_mosquitto_files makes of parties/federation.yaml."""
    conf, acl = write_mosquitto_files(
        ROOT / "parties" / "federation.yaml", tmp_path, acl_file="deploy/mosquitto/acl"
    )
    deploy = ROOT / "deploy" / "mosquitto"
    assert (deploy / "mosquitto.conf").read_text() == conf.read_text()
    assert (deploy / "acl").read_text() == acl.read_text()
    text = conf.read_text()
    assert "listener 8883 127.0.0.1" in text
    assert "certfile keys/kits/broker/tls/server.crt" in text
    federation = load_federation(ROOT / "parties" / "federation.yaml")
    assert set(_parse_acl(acl.read_text())) == {n for n, _ in federation.participants}


def test_mosquitto_files_command(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            *(sys.executable, "-m", "smpc.broker", "mosquitto-files"),
            *(str(ROOT / "parties" / "federation.yaml"), "--out", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "mosquitto.conf").is_file() and (tmp_path / "acl").is_file()


# --- clients without a valid certificate ----------------------------------------------


def _self_signed(tmp_path: Path, ca: Path) -> TlsFiles:
    """A certificate that claims to be party alpha, but no federation CA signed it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "alpha"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "party"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "self.crt", tmp_path / "self.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsFiles(cert=cert_path, key=key_path, ca=ca)


def _invalid_clients(keys_dir: Path, tmp_path: Path, host: str, port: int) -> dict:
    """Connections that must be refused: no certificate, self-signed, from the party CA."""
    alpha = kit(keys_dir, "alpha")
    assert alpha.mpyc is not None
    ca = alpha.tls.ca
    options = {"client_id": "alpha", "connect_timeout": 10}
    return {
        "no certificate": Connection(
            host, port, None, ssl_context=ssl.create_default_context(cafile=str(ca)), **options
        ),
        "self-signed": Connection(host, port, _self_signed(tmp_path, ca), **options),
        # alpha's own MPyC certificate: valid, but from the party CA
        "party CA": Connection(
            host, port, TlsFiles(cert=alpha.mpyc.cert, key=alpha.mpyc.key, ca=ca), **options
        ),
    }


async def _refused(connection: Connection) -> ConnectFailed:
    try:
        async with connection:
            pass
    except ConnectFailed as exc:
        return exc
    raise AssertionError(f"{connection} was accepted")


async def _collect(conn: Connection, timeout: float, count: int | None = None) -> list[Message]:
    out: list[Message] = []
    try:
        async with asyncio.timeout(timeout):
            async for message in conn.messages():
                out.append(message)
                if count is not None and len(out) >= count:
                    break
    except TimeoutError:
        pass
    return out


def _run(coro, timeout: float = 40):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@requires_mosquitto
@pytest.mark.timeout(60)
def test_mosquitto_refuses_clients_without_a_federation_certificate(
    keys_dir: Path, tmp_path: Path
) -> None:
    with mosquitto(keys_dir, tmp_path / "broker") as broker:

        async def scenario() -> dict[str, ConnectFailed]:
            clients = _invalid_clients(keys_dir, tmp_path, *broker.address)
            errors = {what: await _refused(conn) for what, conn in clients.items()}
            async with connect(broker, keys_dir, "alpha"):  # the real alpha still gets in
                pass
            return errors

        errors = _run(scenario())
        log = broker.log_file.read_text()
    for what, exc in errors.items():
        assert f"cannot connect to broker 127.0.0.1:{broker.port}" in str(exc), what
    assert "New client connected" in log
    assert log.count("as alpha") == 1  # none of the impostors got as far as a session


@requires_mosquitto
@pytest.mark.timeout(60)
def test_clients_check_the_broker_certificate(keys_dir: Path, tmp_path: Path) -> None:
    alpha = kit(keys_dir, "alpha")
    assert alpha.mpyc is not None
    with mosquitto(keys_dir, tmp_path / "broker") as broker:
        wrong_name = Connection("127.1", broker.port, alpha.tls, client_id="alpha.h")
        wrong_ca = Connection(
            "127.0.0.1",
            broker.port,
            TlsFiles(cert=alpha.tls.cert, key=alpha.tls.key, ca=alpha.mpyc.ca),
            client_id="alpha.h",
        )
        name_error = _run(_refused(wrong_name))
        ca_error = _run(_refused(wrong_ca))
    # 127.1 reaches the broker, but is not a name in its certificate
    assert "Hostname mismatch" in str(name_error) and name_error.permanent
    assert "certificate verify failed" in str(ca_error) and ca_error.permanent


# --- the local runners ----------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@requires_mosquitto
@pytest.mark.timeout(60)
def test_mosquitto_runner_stops_its_process(keys_dir: Path, tmp_path: Path) -> None:
    with mosquitto(keys_dir, tmp_path / "broker") as broker:
        pid = broker.pid
        assert pid is not None and _alive(pid) and broker.running
    assert not _alive(pid) and not broker.running
    broker.stop()  # idempotent
    assert (tmp_path / "broker" / "mosquitto.conf").is_file()
    assert (tmp_path / "broker" / "acl").is_file()


@requires_mosquitto
@pytest.mark.timeout(60)
def test_mosquitto_start_failure_shows_its_log(keys_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = MosquittoBroker(
            federation_of(keys_dir),
            load_broker_kit(keys_dir / "kits" / "broker"),
            tmp_path / "broker",
            port=port,
        )
        with pytest.raises(BrokerStartError, match="exited with status") as info:
            broker.start()
    assert "Address already in use" in str(info.value)
    assert not broker.running


def test_mosquitto_missing_executable(keys_dir: Path, tmp_path: Path) -> None:
    broker = MosquittoBroker(
        federation_of(keys_dir),
        load_broker_kit(keys_dir / "kits" / "broker"),
        tmp_path,
        executable=tmp_path / "no-mosquitto",
    )
    with pytest.raises(BrokerStartError, match="not found"):
        broker.start()


# --- the embedded amqtt broker --------------------------------------------------------


@pytest.fixture(scope="module")
def amqtt_broker(
    keys_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedBroker]:
    with embedded_broker(keys_dir, tmp_path_factory.mktemp("amqtt")) as broker:
        yield broker


@pytest.mark.timeout(60)
def test_embedded_multi_chunk_round_trip(keys_dir: Path, amqtt_broker: EmbeddedBroker) -> None:
    body = random.Random(7).randbytes(5 * MIB + 3)

    async def scenario() -> list[Message]:
        async with connect(amqtt_broker, keys_dir, "alpha", client_id="alpha.rt") as party:
            await party.subscribe(T.uploads_for("alpha"))
            # the site disconnects right after its last PUBACK (amqtt used to drop what
            # it had acknowledged but not yet routed)
            async with connect(
                amqtt_broker, keys_dir, "oslo", client_id="oslo.rt", max_chunk=MIB
            ) as site:
                await site.publish_body(T.upload("oslo", "alpha"), body)
                await site.publish(T.upload("oslo", "alpha"), b"small")
            return await _collect(party, 20, count=2)

    got = _run(scenario())
    assert [(m.topic, m.body) for m in got] == [
        (T.upload("oslo", "alpha"), body),
        (T.upload("oslo", "alpha"), b"small"),
    ]


@pytest.mark.timeout(60)
def test_embedded_keeps_what_it_acknowledged(keys_dir: Path, amqtt_broker: EmbeddedBroker) -> None:
    """A publisher that leaves right after its last PUBACK loses nothing (amqtt dropped
    acknowledged messages it had not routed yet when their publisher disconnected)."""
    bodies = [random.Random(i).randbytes(4 * MIB) for i in range(3)]

    async def scenario() -> list[Message]:
        async with connect(amqtt_broker, keys_dir, "beta", client_id="beta.keep") as party:
            await party.subscribe(T.uploads_for("beta"))
            async with connect(
                amqtt_broker, keys_dir, "oslo", client_id="oslo.keep", max_chunk=64 * 1024
            ) as site:
                for body in bodies:
                    await site.publish_body(T.upload("oslo", "beta"), body)
            return await _collect(party, 20, count=len(bodies))

    # amqtt does not keep the order of messages (every delivery is its own task)
    assert sorted(m.body for m in _run(scenario())) == sorted(bodies)


@pytest.mark.timeout(60)
def test_embedded_persistent_session(keys_dir: Path, amqtt_broker: EmbeddedBroker) -> None:
    body = random.Random(8).randbytes(2 * MIB)

    async def scenario() -> list[Message]:
        async with connect(amqtt_broker, keys_dir, "beta", client_id="beta.p") as party:
            await party.subscribe(T.uploads_for("beta"))
        async with connect(amqtt_broker, keys_dir, "bergen", client_id="bergen.p") as site:
            await site.publish_body(T.upload("bergen", "beta"), body)
        async with connect(amqtt_broker, keys_dir, "beta", client_id="beta.p") as party:
            return await _collect(party, 20, count=1)

    got = _run(scenario())
    assert [m.body for m in got] == [body]


@pytest.mark.timeout(60)
def test_embedded_persistent_session_reconnecting(
    keys_dir: Path, amqtt_broker: EmbeddedBroker
) -> None:
    """Nothing is lost for a persistent session that reconnects while a site uploads to
    it and that never consumes (acknowledges) a message until its last connection.

    amqtt lost what it routed to the session while the session was reconnecting (its
    user name was reset until authentication, so the ACL refused it) and what the
    client had not acknowledged when a connection closed."""
    bodies = [random.Random(100 + i).randbytes(MIB) for i in range(8)]

    async def scenario() -> tuple[int, list[Message]]:
        async with connect(amqtt_broker, keys_dir, "gamma", client_id="gamma.re") as party:
            await party.subscribe(T.uploads_for("gamma"))

        async def upload() -> None:
            async with connect(
                amqtt_broker, keys_dir, "tromso", client_id="tromso.re", max_chunk=64 * 1024
            ) as site:
                for body in bodies:
                    await site.publish_body(T.upload("tromso", "gamma"), body)

        uploading = asyncio.create_task(upload())
        reconnects = 0
        while not uploading.done():
            async with connect(amqtt_broker, keys_dir, "gamma", client_id="gamma.re"):
                reconnects += 1
        await uploading
        async with connect(amqtt_broker, keys_dir, "gamma", client_id="gamma.re") as party:
            return reconnects, await _collect(party, 20, count=len(bodies))

    reconnects, got = _run(scenario())
    assert reconnects >= 1
    assert sorted(m.body for m in got) == sorted(bodies)


@pytest.mark.timeout(60)
def test_embedded_session_take_over(keys_dir: Path, amqtt_broker: EmbeddedBroker) -> None:
    """A connection that takes over a still-open one of the same persistent session gets
    what is published next at once (amqtt marked the session offline when it closed the
    old connection, so messages waited for the next reconnect)."""

    async def scenario() -> tuple[list[Message], list[Message]]:
        async with connect(amqtt_broker, keys_dir, "beta", client_id="beta.tk") as old:
            await old.subscribe(T.uploads_for("beta"))
            async with connect(amqtt_broker, keys_dir, "beta", client_id="beta.tk") as new:
                async with connect(amqtt_broker, keys_dir, "oslo", client_id="oslo.tk") as site:
                    await site.publish(T.upload("oslo", "beta"), b"after the take-over")
                live = await _collect(new, 10, count=1)
        async with connect(amqtt_broker, keys_dir, "beta", client_id="beta.tk") as again:
            later = await _collect(again, 1)
        return live, later

    live, later = _run(scenario())
    assert [m.body for m in live] == [b"after the take-over"]
    assert later == []


@pytest.mark.timeout(60)
def test_embedded_refuses_invalid_clients(
    keys_dir: Path, tmp_path: Path, amqtt_broker: EmbeddedBroker
) -> None:
    async def scenario() -> tuple[dict[str, ConnectFailed], list[Message]]:
        async with connect(amqtt_broker, keys_dir, "alpha") as alpha:  # durable session
            await alpha.subscribe(T.uploads_for("alpha"))
        clients = _invalid_clients(keys_dir, tmp_path, *amqtt_broker.address)
        # a real participant using another participant's client id, with clean_session=1
        # (amqtt itself would delete alpha's session before authenticating anyone)
        clients["client id of another"] = connect(
            amqtt_broker, keys_dir, "oslo", client_id="alpha", persistent=False
        )
        errors = {what: await _refused(conn) for what, conn in clients.items()}
        async with connect(amqtt_broker, keys_dir, "oslo", client_id="oslo.inv") as site:
            await site.publish(T.upload("oslo", "alpha"), b"still queued for alpha")
        async with connect(amqtt_broker, keys_dir, "alpha") as alpha:
            return errors, await _collect(alpha, 10, count=1)

    errors, queued = _run(scenario())
    assert set(errors) == {"no certificate", "self-signed", "party CA", "client id of another"}
    assert "Not authorized" in str(errors["client id of another"])
    assert errors["client id of another"].permanent
    assert [m.body for m in queued] == [b"still queued for alpha"]


@pytest.mark.timeout(60)
def test_embedded_retained_jobs(keys_dir: Path, amqtt_broker: EmbeddedBroker) -> None:
    """Retained messages go to a client for its own subscriptions only."""

    async def scenario() -> tuple[list[Message], list[Message]]:
        async with connect(amqtt_broker, keys_dir, "tromso", client_id="tromso.ret") as site:
            await site.subscribe(T.acks_for("tromso"))  # durable, but not on jobs
        async with connect(amqtt_broker, keys_dir, "analyst", client_id="analyst.ret") as a:
            await a.publish(T.job("analyst", "ret1"), b"job", retain=True)
        async with connect(amqtt_broker, keys_dir, "gamma", client_id="gamma.ret") as party:
            await party.subscribe(T.jobs())
            jobs = await _collect(party, 10, count=1)
            async with connect(amqtt_broker, keys_dir, "tromso", client_id="tromso.ret") as site:
                others = await _collect(site, 1)
        async with connect(amqtt_broker, keys_dir, "analyst", client_id="analyst.ret") as a:
            await a.clear_retained(T.job("analyst", "ret1"))
        return jobs, others

    jobs, others = _run(scenario())
    assert [(m.topic, m.body) for m in jobs] == [(T.job("analyst", "ret1"), b"job")]
    assert others == []


@pytest.mark.timeout(60)
def test_embedded_acl(keys_dir: Path, amqtt_broker: EmbeddedBroker) -> None:
    async def scenario() -> tuple[list[Message], list[Message]]:
        async with (
            connect(amqtt_broker, keys_dir, "gamma", client_id="gamma.acl") as gamma,
            connect(amqtt_broker, keys_dir, "beta", client_id="beta.acl") as beta,
        ):
            await gamma.subscribe(T.uploads_for("gamma"))
            with pytest.raises(SubscriptionRefused, match="smpc/test/up/\\+/gamma"):
                await beta.subscribe(T.uploads_for("gamma"))
            with contextlib.suppress(SubscriptionRefused):
                await beta.subscribe("#")  # accepted (jobs are readable), filtered per message
            async with connect(amqtt_broker, keys_dir, "tromso", client_id="tromso.acl") as site:
                await site.publish(T.upload("oslo", "gamma"), b"forged")
                await site.publish(T.ack("tromso", "gamma"), b"forged ack")
                await site.publish(T.upload("tromso", "gamma"), b"control")
            return await _collect(gamma, 2), await _collect(beta, 0.5)

    gamma_got, beta_got = _run(scenario())
    assert [(m.topic, m.body) for m in gamma_got] == [(T.upload("tromso", "gamma"), b"control")]
    assert beta_got == []


@pytest.mark.timeout(60)
def test_embedded_runner_stops_its_process(keys_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as busy:  # a start failure first: the port is taken
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        failing = EmbeddedBroker(
            federation_of(keys_dir),
            load_broker_kit(keys_dir / "kits" / "broker"),
            tmp_path / "failing",
            port=busy.getsockname()[1],
        )
        with pytest.raises(BrokerStartError, match="exited with status"):
            failing.start()
    assert not failing.running
    with embedded_broker(keys_dir, tmp_path / "ok") as broker:
        pid = broker.pid
        assert pid is not None and _alive(pid)
    assert not _alive(pid)
