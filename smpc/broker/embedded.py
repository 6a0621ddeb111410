"""The embedded broker: amqtt with the federation's ACL, run in a subprocess.

amqtt (the embedded broker of the one-command local default): :class:`EmbeddedBroker`
runs amqtt 0.12 in a separate process (``python -m smpc.broker amqtt CONFIG``) with
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
- no flow control towards subscribers, and it is pure Python: several times slower
  than Mosquitto with the same clients (figures in ``deploy/mosquitto/README.md``).
  Fine for a local demo; use Mosquitto beyond.

The fixes override private methods of amqtt 0.12.1 in the broker process only; pin
amqtt and re-run ``tests/test_broker.py`` when upgrading it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smpc.broker.acl import access_rules, filter_matches, filters_overlap
from smpc.broker.runner import LocalBroker
from smpc.config.federation import Federation, parse_federation
from smpc.pki.kit import BrokerKit, TlsFiles

__all__ = ["EmbeddedBroker", "amqtt_config", "serve_amqtt"]

log = logging.getLogger("smpc.broker")


class EmbeddedBroker(LocalBroker):
    """amqtt in a subprocess (``python -m smpc.broker amqtt``), TLS with the broker kit.

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
            "smpc.broker",
            "amqtt",
            str(self.config_file.resolve()),
        ]


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
                return any(filters_overlap(p, topic) for p in self.config.read.get(user, ()))
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


async def serve_amqtt(config: dict[str, Any]) -> None:
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
