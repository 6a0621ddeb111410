"""MQTT brokers for a federation: Mosquitto configuration and ACL, and two local runners.

Who may do what (the same rules for both brokers, from :func:`access_rules`; topics as in
:mod:`smpc.net.transport`; ``<fed>`` is the federation name, every participant's user name
is the common name of its federation-CA client certificate):

=========  ========================================  =========================================
role       publishes                                 reads (subscribes and receives)
=========  ========================================  =========================================
site S     ``up/S/P`` for each party P               ``jobs/+``, ``ack/S/P`` for each party P,
                                                     ``status/+/P`` for each party P
party P    ``ack/S/P`` for each site S,              ``jobs/+``, ``up/S/P`` for each site S,
           ``result/+/+/P``, ``status/+/P``          ``status/+/Q`` for each party Q
analyst A  ``jobs/+``                                ``jobs/+``, ``result/A/+/P`` and
                                                     ``status/+/P`` for each party P
=========  ========================================  =========================================

Rules name the participants explicitly (generated from the federation file); the only
wildcards stand for job ids, which are not known in advance. Nobody else connects: a
client needs a certificate of the federation CA whose name is in the federation.

Mosquitto (production): :func:`mosquitto_config` and :func:`mosquitto_acl` for
Mosquitto 2.0 (``require_certificate``, ``use_identity_as_username``, persistence, lifted
per-client queue limits, 16 MiB packets); :class:`MosquittoBroker` runs one locally.

Known limitation of Mosquitto with this config: a participant connecting with another
participant's client id takes over that session (Mosquitto 2.0 binds sessions to client
ids, not to certificates). It cannot read what the ACL forbids, and envelopes stay
end-to-end encrypted and signed, but it can disrupt delivery to that participant until
the application acks make the senders republish. ``use_username_as_clientid`` would
close this, at the price of one connection per participant at a time.

amqtt (the embedded broker of the one-command local default): :class:`EmbeddedBroker`
runs amqtt 0.12 in a separate process (``python -m smpc.broker.broker amqtt CONFIG``) with
the broker kit's server certificate. amqtt's TLS listener cannot *require* a client
certificate during the handshake (it requests one, verifies it against the federation
CA when presented, but lets a client without one finish the handshake), so the
embedded broker closes such connections before reading their CONNECT, checks the
certificate's name against the federation, binds client ids to it (``<name>`` or
``<name>.<suffix>``) and applies the same ACL as Mosquitto. Envelopes stay end-to-end
encrypted and signed either way. amqtt limitations found (0.12.1) and how they are
handled:

- no maximum packet size: a connected client can make it buffer any packet up to the
  MQTT limit of 256 MiB (only federation members get that far here);
- no persistence: sessions and queued messages live in memory, lost when it stops;
- messages queued for an offline persistent session are delivered with the retain
  flag set (``Message.retained`` is only a hint);
- on reconnect amqtt sends retained messages matching *every* client's subscriptions,
  at QoS 0 and without the receive ACL; fixed here (only the client's own
  subscriptions, with the ACL and their QoS);
- a CONNECT with ``clean_session=1`` deletes the session of that client id before
  authentication; fixed here by checking certificate and client id first;
- a reconnecting persistent session kept the *previous* connection's TLS object, so
  plugins saw the old certificate; fixed here (refreshed on every connection);
- a reconnecting persistent session had the user name of the new CONNECT (none here)
  until amqtt had authenticated the client, so the ACL refused whatever was routed to
  that session meanwhile and amqtt dropped it silently (a party reconnecting during an
  upload lost chunks); fixed here (the certificate's name from the start);
- an outgoing QoS 1 message was given up after 5 s without PUBACK and when the
  connection closed: a persistent session lost whatever its client had not
  acknowledged yet (our clients acknowledge a message when they consume it); fixed
  here (in flight until acknowledged; the session's next connection resends it);
- a connection taking over a still-open one of the same persistent session was marked
  offline when the old one closed, so messages waited for the next reconnect; fixed;
- QoS 1 publishes are acknowledged when queued inside amqtt, and whatever was still
  queued when the publisher disconnected was silently dropped (a site that published
  and left lost the end of its upload); fixed here (routed before the disconnect);
- no ordering guarantee: every delivery is its own task, so messages on one topic may
  arrive in another order than they were published (the transport reassembles chunks
  in any order; bodies may complete in another order);
- no flow control towards subscribers, and it is pure
  Python: 80-95 MB/s where Mosquitto does 230-280 MB/s with the same clients
  (``deploy/mosquitto/README.md``). Fine for a local demo; use Mosquitto beyond.

The fixes override private methods of amqtt 0.12.1 in the broker process only; pin
amqtt and re-run ``tests/test_broker.py`` when upgrading it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smpc.config.federation import Federation, load_federation, parse_federation
from smpc.errors import UserError
from smpc.net.topics import Topics
from smpc.net.transport import MAX_CHUNK
from smpc.pki.keys import BrokerKit, TlsFiles

__all__ = [
    "MAX_PACKET_SIZE",
    "Access",
    "BrokerStartError",
    "EmbeddedBroker",
    "MosquittoBroker",
    "access_rules",
    "broker_kit_files",
    "filter_matches",
    "mosquitto_acl",
    "mosquitto_config",
    "write_mosquitto_files",
]

log = logging.getLogger("smpc.broker")

MAX_PACKET_SIZE = 16 * 1024 * 1024
assert MAX_CHUNK + 64 * 1024 <= MAX_PACKET_SIZE
MOSQUITTO = "/usr/sbin/mosquitto"


# --- access rules ---------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """Topics (MQTT filters, '+' only where a job id goes) one participant may use."""

    publish: tuple[str, ...]
    read: tuple[str, ...]


def access_rules(federation: Federation) -> dict[str, Access]:
    """Per-participant rules, in federation order (parties, sites, analysts)."""
    t = Topics(federation.name)
    parties, sites = federation.party_names, federation.site_names

    def any_job(kind: str, party: str) -> str:  # result/status of any job of one party
        return f"{t.prefix}/{kind}/+/{party}"

    status_all = tuple(any_job("status", p) for p in parties)
    rules: dict[str, Access] = {}
    for p in parties:
        rules[p] = Access(
            publish=(
                *(t.ack(s, p) for s in sites),
                f"{t.prefix}/result/+/+/{p}",
                any_job("status", p),
            ),
            read=(t.jobs(), *(t.upload(s, p) for s in sites), *status_all),
        )
    for s in sites:
        rules[s] = Access(
            publish=tuple(t.upload(s, p) for p in parties),
            read=(t.jobs(), *(t.ack(s, p) for p in parties), *status_all),
        )
    for a in federation.analyst_names:
        rules[a] = Access(
            publish=(t.jobs(),),
            # only its own results: sealed to it anyway, and invisible to other analysts
            read=(t.jobs(), *(f"{t.prefix}/result/{a}/+/{p}" for p in parties), *status_all),
        )
    return rules


def filter_matches(pattern: str, topic: str) -> bool:
    """MQTT matching of a topic name (no wildcards) against a filter."""
    p_levels, t_levels = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(p_levels) == len(t_levels)


def _filters_overlap(a: str, b: str) -> bool:
    """Whether some topic name matches both filters."""
    a_levels, b_levels = a.split("/"), b.split("/")
    for i in range(max(len(a_levels), len(b_levels))):
        x = a_levels[i] if i < len(a_levels) else None
        y = b_levels[i] if i < len(b_levels) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != "+" and y != "+" and x != y:
            return False
    return True


# --- Mosquitto ------------------------------------------------------------------------


def mosquitto_acl(federation: Federation) -> str:
    """The ``acl_file`` for Mosquitto 2.0: one ``user`` block per participant."""
    lines = [
        f"# Mosquitto ACL for federation {federation.name!r}, generated by smpc.broker.broker.",
        "# Regenerate it from the federation file (deploy/mosquitto/README.md); do not edit.",
        "# User names are the common names of the federation-CA client certificates.",
    ]
    roles = dict(federation.participants)
    for name, access in access_rules(federation).items():
        lines += ["", f"# {roles[name]}", f"user {name}"]
        lines += [f"topic write {topic}" for topic in access.publish]
        lines += [f"topic read {topic}" for topic in access.read]
    return "\n".join(lines) + "\n"


def _tls_files(tls: BrokerKit | TlsFiles) -> TlsFiles:
    return tls.tls if isinstance(tls, BrokerKit) else tls


def broker_kit_files(kit_dir: str | Path) -> TlsFiles:
    """Where ``smpc keys init`` puts the broker's TLS files in ``kit_dir`` (not loaded)."""
    kit_dir = Path(kit_dir)
    return TlsFiles(
        cert=kit_dir / "tls" / "server.crt",
        key=kit_dir / "tls" / "server.key",
        ca=kit_dir / "tls" / "ca.crt",
    )


def mosquitto_config(
    federation: Federation,
    broker_kit: BrokerKit | TlsFiles,
    *,
    host: str,
    port: int,
    data_dir: str | Path,
    acl_file: str | Path,
    user: str | None = None,
    log_file: str | Path | None = None,
) -> str:
    """``mosquitto.conf`` for Mosquitto 2.0: one TLS listener with client certificates.

    Paths are written as given (relative ones are relative to Mosquitto's working
    directory). ``user``: the account Mosquitto runs as when started as root.
    ``log_file``: log there instead of stdout (which Mosquitto block-buffers when it is
    not a terminal).
    """
    tls = _tls_files(broker_kit)
    data = str(data_dir).rstrip("/") + "/"
    lines = [
        f"# Mosquitto 2.0 configuration for federation {federation.name!r}, generated by",
        "# smpc.broker.broker.mosquitto_config; regenerate it (deploy/mosquitto/README.md),",
        "# do not edit.",
        "",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {acl_file}",
        "",
        "# One TLS listener. Clients must present a certificate of the federation CA; its",
        "# common name (the participant's name) becomes the MQTT user name for the ACL.",
        f"listener {port} {host}",
        "protocol mqtt",
        f"cafile {tls.ca}",
        f"certfile {tls.cert}",
        f"keyfile {tls.key}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        "",
        "# Started as root, Mosquitto switches to the account `user` names (default",
        "# 'mosquitto'), which must read keyfile and write persistence_location: chown them",
        "# to it first (deploy/mosquitto/README.md). Started as another user, it stays that user.",
        "",
        "# Persistent sessions (clean_session=false) keep subscriptions and queued QoS 1",
        "# messages of a participant that is offline; saved on shutdown and every minute.",
        "persistence true",
        f"persistence_location {data}",
        "autosave_interval 60",
        "persistent_client_expiration 30d",
        "",
        "# Shares travel as chunks of up to 15 MiB; no practical per-client queue limit (a",
        "# party that is down must get everything the sites sent meanwhile). Not 0 for",
        "# 'unlimited': with 0, Mosquitto 2.0.11 disconnects a client whose publish the ACL",
        "# denies instead of dropping the message.",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        "max_inflight_messages 32",
        "set_tcp_nodelay true",
        "",
        f"log_dest file {log_file}" if log_file is not None else "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if user is not None:
        lines += ["", "# the account Mosquitto switches to when started as root", f"user {user}"]
    return "\n".join(lines) + "\n"


def write_mosquitto_files(
    federation_file: str | Path,
    out_dir: str | Path = "deploy/mosquitto",
    *,
    kit_dir: str | Path = "keys/kits/broker",
    data_dir: str | Path = "broker-data",
    acl_file: str | Path | None = None,
) -> tuple[Path, Path]:
    """Write ``mosquitto.conf`` and ``acl`` for a federation file; returns their paths.

    The config refers to ``kit_dir``'s TLS files, ``data_dir`` and the ACL by the paths
    given (relative ones: relative to where Mosquitto is started). Listens on the
    federation's broker host and port.
    """
    federation = load_federation(federation_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acl_ref = Path(acl_file) if acl_file is not None else out / "acl"
    conf_path, acl_path = out / "mosquitto.conf", out / "acl"
    acl_path.write_text(mosquitto_acl(federation))
    conf_path.write_text(
        mosquitto_config(
            federation,
            broker_kit_files(kit_dir),
            host=federation.broker.host,
            port=federation.broker.port,
            data_dir=data_dir,
            acl_file=acl_ref,
        )
    )
    return conf_path, acl_path


# --- local runners --------------------------------------------------------------------


class BrokerStartError(UserError):
    """A local broker did not start; the message includes the end of its log."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _kill(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the child when the thread that started it dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _LocalBroker:
    """Common start/wait/stop of a broker subprocess listening with TLS on host:port."""

    name = "broker"

    def __init__(
        self,
        federation: Federation,
        broker_kit: BrokerKit,
        workdir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.federation = federation
        self.broker_kit = broker_kit
        self.workdir = Path(workdir)
        self.host = host
        self.port = port if port is not None else _free_port(host)
        self.start_timeout = start_timeout
        self.log_file = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        raise NotImplementedError

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> _LocalBroker:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        with open(self.log_file, "ab") as log_out:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=(
                    _die_with_parent
                    if threading.current_thread() is threading.main_thread()
                    else None
                ),
            )
        self._finalizer = weakref.finalize(self, _kill, self._proc)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("%s listening on %s:%d (pid %d)", self.name, self.host, self.port, self.pid)
        return self

    def _failed(self, what: str) -> BrokerStartError:
        tail = self.log_tail()
        return BrokerStartError(
            f"{self.name} on {self.host}:{self.port} {what}"
            + (f"; end of {self.log_file}:\n{tail}" if tail else f" (log {self.log_file} empty)")
        )

    def _wait_ready(self) -> None:
        """Until the listener completes (or refuses, by alert) a TLS handshake."""
        context = ssl.create_default_context(cafile=str(self.broker_kit.tls.ca))
        deadline = time.monotonic() + self.start_timeout
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self._failed(f"exited with status {code} while starting")
            try:
                raw = socket.create_connection((self.host, self.port), timeout=1)
            except OSError:
                if time.monotonic() > deadline:
                    raise self._failed(f"did not listen within {self.start_timeout:g} s") from None
                time.sleep(0.05)
                continue
            try:
                with context.wrap_socket(raw, server_hostname=self.host):
                    return  # handshake done: the broker's certificate verified
            except ssl.SSLCertVerificationError as exc:
                raise self._failed(f"presents a certificate that does not verify: {exc}") from None
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                pass  # closed on us: not (yet) our TLS listener
            except ssl.SSLError:
                return  # a TLS alert (no client certificate) after its certificate verified
            except OSError:
                pass  # timeout or reset: not (yet) our TLS listener
            finally:
                raw.close()
            if time.monotonic() > deadline:
                raise self._failed(f"did not complete a TLS handshake in {self.start_timeout:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _kill(proc)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class MosquittoBroker(_LocalBroker):
    """Mosquitto with this federation's config and ACL, as a subprocess on host:port.

    Writes ``mosquitto.conf``, ``acl`` and ``data/`` into ``workdir`` and logs to
    ``workdir/mosquitto.log``. A context manager; ``stop()`` never leaves it running.
    """

    name = "mosquitto"

    def __init__(
        self,
        federation: Federation,
        broker_kit: BrokerKit,
        workdir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        executable: str | Path = MOSQUITTO,
        start_timeout: float = 15.0,
    ) -> None:
        super().__init__(
            federation, broker_kit, workdir, host=host, port=port, start_timeout=start_timeout
        )
        self.executable = Path(executable)
        self.config_file = self.workdir / "mosquitto.conf"
        self.acl_file = self.workdir / "acl"
        self.data_dir = self.workdir / "data"

    def _prepare(self) -> None:
        if not self.executable.is_file():
            raise BrokerStartError(
                f"{self.executable}: not found; install Mosquitto (Debian: apt-get install "
                "mosquitto) or use the embedded broker"
            )
        self.data_dir.mkdir(exist_ok=True)
        self.acl_file.write_text(mosquitto_acl(self.federation))
        user = getpass.getuser() if os.geteuid() == 0 else None
        self.config_file.write_text(
            mosquitto_config(
                self.federation,
                self.broker_kit,
                host=self.host,
                port=self.port,
                data_dir=self.data_dir.resolve(),
                acl_file=self.acl_file.resolve(),
                user=user,
                log_file=self.log_file.resolve(),
            )
        )

    def _command(self) -> list[str]:
        return [str(self.executable), "-c", str(self.config_file.resolve())]


class EmbeddedBroker(_LocalBroker):
    """amqtt in a subprocess (``python -m smpc.broker.broker amqtt``), TLS with the broker kit.

    Client certificates are checked after the handshake, not during it (see the module
    docstring). Writes ``amqtt.json`` into ``workdir`` and logs to ``workdir/amqtt.log``.

    Persistent sessions (``clean_session=0``): what is published for a session while it
    is offline or reconnecting, and what its client had not acknowledged when a
    connection closed, is delivered by its next connection (possibly again, with DUP).
    In memory only: lost when the broker stops.
    """

    name = "amqtt"

    def __init__(
        self,
        federation: Federation,
        broker_kit: BrokerKit,
        workdir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float = 30.0,
        log_level: str = "INFO",
    ) -> None:
        super().__init__(
            federation, broker_kit, workdir, host=host, port=port, start_timeout=start_timeout
        )
        self.config_file = self.workdir / "amqtt.json"
        self.log_level = log_level

    def _prepare(self) -> None:
        tls = self.broker_kit.tls
        config = {
            "host": self.host,
            "port": self.port,
            "cafile": str(Path(tls.ca).resolve()),
            "certfile": str(Path(tls.cert).resolve()),
            "keyfile": str(Path(tls.key).resolve()),
            "federation": self.federation.model_dump(mode="json"),
            "log_level": self.log_level,
        }
        self.config_file.write_text(json.dumps(config, indent=2))

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "smpc.broker.broker",
            "amqtt",
            str(self.config_file.resolve()),
        ]


# --- the amqtt broker process ---------------------------------------------------------

_AMQTT_PLUGINS = ("AmqttIdentityAuth", "AmqttTopicAcl")


def _peer_name(ssl_object: Any) -> str | None:
    """Common name of the verified client certificate of a TLS connection, if any."""
    if ssl_object is None:
        return None
    try:
        cert = ssl_object.getpeercert()
    except (ValueError, OSError):
        return None
    if not cert:
        return None
    names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return names[0] if len(names) == 1 else None


def _client_id_allowed(client_id: str | None, name: str) -> bool:
    return client_id is not None and (client_id == name or client_id.startswith(name + "."))


def _define_amqtt_plugins() -> None:
    """Define the amqtt plugin classes (module attributes, loaded by dotted path)."""
    from amqtt.contexts import Action
    from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

    class AmqttIdentityAuth(BaseAuthPlugin):
        """Accepts a client whose federation-CA certificate names a participant.

        The user name becomes the certificate's common name (whatever the client sent).
        """

        @dataclass
        class Config:
            names: list[str] = field(default_factory=list)

        async def authenticate(self, *, session: Any) -> bool:
            name = _peer_name(session.ssl_object)
            if name is None or name not in self.config.names:
                log.warning("refused client %s: no certificate of a participant", session.client_id)
                return False
            if not _client_id_allowed(session.client_id, name):
                log.warning("refused %s: client id %r is not theirs", name, session.client_id)
                return False
            session.username = name
            session.is_anonymous = False
            return True

    class AmqttTopicAcl(BaseTopicPlugin):
        """The ACL of :func:`access_rules`: publish, subscribe and receive checks."""

        @dataclass
        class Config:
            publish: dict[str, list[str]] = field(default_factory=dict)
            read: dict[str, list[str]] = field(default_factory=dict)

        async def topic_filtering(
            self, *, session: Any = None, topic: str | None = None, action: Any = None
        ) -> bool:
            user = getattr(session, "username", None)
            if not user or not topic:
                return False
            if action == Action.PUBLISH:
                return any(filter_matches(p, topic) for p in self.config.publish.get(user, ()))
            if action == Action.RECEIVE:
                return any(filter_matches(p, topic) for p in self.config.read.get(user, ()))
            if action == Action.SUBSCRIBE:
                # like Mosquitto: a filter is accepted if it can match a readable topic;
                # every delivery is checked again (RECEIVE)
                return any(_filters_overlap(p, topic) for p in self.config.read.get(user, ()))
            return False

    AmqttIdentityAuth.__module__ = AmqttTopicAcl.__module__ = __name__
    AmqttIdentityAuth.__qualname__, AmqttTopicAcl.__qualname__ = _AMQTT_PLUGINS
    globals().update(AmqttIdentityAuth=AmqttIdentityAuth, AmqttTopicAcl=AmqttTopicAcl)


def __getattr__(name: str) -> Any:
    if name in _AMQTT_PLUGINS:  # amqtt is imported only by the broker process
        _define_amqtt_plugins()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _amqtt_broker_class() -> type:
    """amqtt's Broker with the fixes listed in the module docstring."""
    from amqtt.broker import Broker
    from amqtt.contexts import Action
    from amqtt.errors import AMQTTError, MQTTError
    from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
    from amqtt.session import OUTGOING, OutgoingApplicationMessage

    original_init_from_connect = BrokerProtocolHandler.init_from_connect.__func__

    class SmpcHandler(BrokerProtocolHandler):
        """amqtt's broker side of one connection; a QoS 1 message stays in flight until
        its PUBACK.

        amqtt gave up on an outgoing QoS 1 message after 5 s without PUBACK and when the
        connection closed, and forgot it: a persistent session lost whatever the client
        had not acknowledged yet (our clients acknowledge when they consume a message).
        Here it stays in the session's ``inflight_out`` until acknowledged, and the next
        connection of that session sends it again (DUP), as MQTT 3.1.1 asks. Every
        publish goes on in the background: amqtt also waited for the PUBACKs of resent
        and queued messages before it handled the client's SUBSCRIBE, which such a
        client sends before it starts consuming.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._closing = False  # the connection is gone or going: no more publishes
            self._background: set[asyncio.Task[Any]] = set()
            self._sending: set[int] = set()  # packet ids being sent on this connection
            self._publishing = asyncio.Lock()
            self.taken_over = False  # a newer connection of the same session replaced it

        async def stop(self) -> None:
            self._closing = True  # before amqtt cancels the PUBACK waiters
            await super().stop()

        async def handle_connection_closed(self) -> None:
            self._closing = True
            await super().handle_connection_closed()

        def _gone(self) -> bool:
            writer = getattr(self.writer, "_writer", None)  # amqtt's StreamWriterAdapter
            transport = getattr(writer, "transport", None)
            return self._closing or (transport is not None and transport.is_closing())

        async def _send_publish(self, packet: Any) -> bool:
            """Send unless the connection is gone (checked in turn, not when queued)."""
            async with self._publishing:
                if self._gone():
                    return False
                await self._send_packet(packet)
                # let a failed write close the transport before the next publish is
                # written (each would log "socket.send() raised exception")
                await asyncio.sleep(0)
                return True

        def _spawn(self, coro: Any) -> None:
            task = asyncio.ensure_future(coro)
            self._background.add(task)
            task.add_done_callback(self._reap)

        def _reap(self, task: asyncio.Task[Any]) -> None:
            self._background.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning("delivery to %s failed: %r", self._client_id, task.exception())

        @property
        def _client_id(self) -> str | None:
            return self.session.client_id if self.session is not None else None

        def publish_nowait(self, topic: str, data: bytes, qos: int, retain: bool) -> None:
            """Send in the background; a QoS 1/2 message is in flight from now on."""
            packet_id = self.session.next_packet_id if qos else None
            message = OutgoingApplicationMessage(packet_id, topic, qos, data, retain)
            if packet_id is not None:
                self.session.inflight_out[packet_id] = message
            self._spawn(self._handle_message_flow(message))

        async def mqtt_publish(
            self, topic: str, data: bytes, qos: int | None, retain: bool, *args: Any, **kw: Any
        ) -> None:
            # amqtt's routing waits for this (a task per message, reaped in order): no
            # need to keep a task and the message per unacknowledged message around there
            self.publish_nowait(topic, data, qos or 0, retain)

        async def _retry_deliveries(self) -> None:
            session = self.session
            for message in [*session.inflight_in.values(), *session.inflight_out.values()]:
                self._spawn(self._handle_message_flow(message))

        async def _handle_qos1_message_flow(self, app_message: Any) -> None:
            if app_message.direction != OUTGOING:
                await super()._handle_qos1_message_flow(app_message)
                return
            session, packet_id = self.session, app_message.packet_id
            session.inflight_out[packet_id] = app_message
            if packet_id in self._sending:
                return  # a resend of what this connection is sending already
            self._sending.add(packet_id)
            acknowledged = False
            try:
                resend = app_message.publish_packet is not None
                packet = app_message.build_publish_packet(dup=resend)
                if not await self._send_publish(packet):
                    return  # for the next connection of the session
                app_message.publish_packet = packet
                if self._closing:
                    return
                waiter = asyncio.get_running_loop().create_future()
                self._puback_waiters[packet_id] = waiter
                try:
                    # no timeout: MQTT resends only on a new connection (cancelled by stop)
                    app_message.puback_packet = await waiter
                finally:
                    if self._puback_waiters.get(packet_id) is waiter:
                        del self._puback_waiters[packet_id]
                acknowledged = True
            finally:
                self._sending.discard(packet_id)
                if (acknowledged or session.clean_session) and (
                    session.inflight_out.get(packet_id) is app_message
                ):
                    del session.inflight_out[packet_id]

    async def init_from_connect(cls: Any, reader: Any, writer: Any, plugins_manager: Any, **kw):
        name = _peer_name(writer.get_ssl_info())
        if name is None:
            with contextlib.suppress(Exception):
                await writer.close()
            raise AMQTTError("no client certificate of the federation CA: connection closed")
        handler, session = await original_init_from_connect(
            SmpcHandler, reader, writer, plugins_manager, **kw
        )
        if not _client_id_allowed(session.client_id, name):
            # refuse before amqtt deletes or takes over the session of that client id
            with contextlib.suppress(Exception):
                await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
                await writer.close()
            raise MQTTError(f"{name} may not use client id {session.client_id!r}")
        # amqtt copies the CONNECT's user name into an existing session *before* it
        # authenticates the client; with the client's (here: none) the ACL refused every
        # message routed to that session meanwhile, and amqtt dropped it silently.
        session.username = name
        return handler, session

    BrokerProtocolHandler.init_from_connect = classmethod(init_from_connect)

    class SmpcBroker(Broker):
        async def _handle_client_session(
            self, reader: Any, writer: Any, client_session: Any, *args: Any, **kwargs: Any
        ) -> None:
            # an existing session keeps the old connection's TLS object otherwise
            client_session.ssl_object = writer.get_ssl_info()
            current = self._sessions.get(client_session.client_id)
            if (
                current is not None
                and current[0] is client_session
                and client_session.transitions.is_connected()
            ):
                current[1].taken_over = True  # amqtt closes it below (take-over)
            await super()._handle_client_session(reader, writer, client_session, *args, **kwargs)

        async def _handle_disconnect(
            self, client_session: Any, handler: Any, disconnect_waiter: Any
        ) -> None:
            # amqtt PUBACKs a QoS 1 publish when it queues it, and dropped what was still
            # queued when the publisher disconnected: route it first.
            queue = client_session.delivered_message_queue
            while not queue.empty():
                delivered = asyncio.get_running_loop().create_future()
                delivered.set_result(queue.get_nowait())
                await self._handle_message_delivery(client_session, handler, delivered)
            if getattr(handler, "taken_over", False):
                # amqtt marked the session offline here, after the new connection of the
                # session was set up: messages then waited for the next reconnect
                await self._stop_handler(handler)
                return
            await super()._handle_disconnect(client_session, handler, disconnect_waiter)

        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            topic_filter, qos = subscription
            ours = [q for s, q in self._subscriptions.get(topic_filter, []) if s == session]
            if not ours:
                return  # amqtt calls this with every client's filters on reconnect
            qos = ours[0]
            for topic, retained in list(self._retained_messages.items()):
                if not self._matches(topic, topic_filter):
                    continue
                if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                    continue
                handler = self._get_handler(session)
                if handler is None:
                    return
                handler.publish_nowait(
                    retained.topic, retained.data, min(qos, retained.qos or qos), True
                )

        async def _publish_session_retained_messages(self, session: Any) -> None:
            # what was queued while the session was offline (amqtt waited for every
            # PUBACK here, before handling anything else the client sent)
            handler = self._get_handler(session)
            if handler is None:
                return
            queue = session.retained_messages
            while not queue.empty():
                queued = queue.get_nowait()
                handler.publish_nowait(queued.topic, queued.data, queued.qos, True)

    return SmpcBroker


def amqtt_config(federation: Federation, tls: TlsFiles, *, host: str, port: int) -> dict[str, Any]:
    """amqtt ``BrokerConfig`` dictionary: one TLS listener, identity auth and the ACL."""
    rules = access_rules(federation)
    return {
        "listeners": {
            "default": {
                "type": "tcp",
                "bind": f"{host}:{port}",
                "ssl": True,
                "cafile": str(tls.ca),
                "certfile": str(tls.cert),
                "keyfile": str(tls.key),
            }
        },
        "plugins": {
            f"{__name__}.AmqttIdentityAuth": {"names": [n for n, _ in federation.participants]},
            f"{__name__}.AmqttTopicAcl": {
                "publish": {n: list(a.publish) for n, a in rules.items()},
                "read": {n: list(a.read) for n, a in rules.items()},
            },
        },
    }


async def _serve_amqtt(config: dict[str, Any]) -> None:
    federation = parse_federation(config["federation"], source="amqtt.json")
    tls = TlsFiles(cert=config["certfile"], key=config["keyfile"], ca=config["cafile"])
    broker = _amqtt_broker_class()(
        amqtt_config(federation, tls, host=config["host"], port=int(config["port"]))
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    log.info(
        "amqtt broker for %r listening on %s:%s", federation.name, config["host"], config["port"]
    )
    await stop.wait()
    log.info("shutting down")
    with contextlib.suppress(Exception):
        await asyncio.wait_for(broker.shutdown(), 10)


def main(argv: list[str] | None = None) -> int:
    """``python -m smpc.broker.broker``: run the embedded broker, or write Mosquitto files."""
    parser = argparse.ArgumentParser(prog="python -m smpc.broker.broker", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("amqtt", help="run the embedded amqtt broker (EmbeddedBroker)")
    run.add_argument("config", type=Path, help="the amqtt.json EmbeddedBroker writes")
    files = commands.add_parser(
        "mosquitto-files", help="write mosquitto.conf and acl for a federation file"
    )
    files.add_argument("federation", type=Path)
    files.add_argument("--out", type=Path, default=Path("deploy/mosquitto"))
    files.add_argument("--kit", type=Path, default=Path("keys/kits/broker"))
    files.add_argument("--data-dir", type=Path, default=Path("broker-data"))
    args = parser.parse_args(argv)
    if args.command == "mosquitto-files":
        try:
            paths = write_mosquitto_files(
                args.federation, args.out, kit_dir=args.kit, data_dir=args.data_dir
            )
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print("\n".join(str(p) for p in paths))
        return 0
    config = json.loads(args.config.read_text())
    logging.basicConfig(
        level=getattr(logging, str(config.get("log_level", "INFO")).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,  # line-buffered, also when redirected to the log file
    )
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    asyncio.run(_serve_amqtt(config))
    return 0


if __name__ == "__main__":
    from smpc.broker import broker as _broker  # one copy of the module, also for the plugins

    sys.exit(_broker.main())
