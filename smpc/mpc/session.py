"""One computing party's MPyC session, run as a process of its own.

Usage (normally started by the party daemon, one process per job)::

    python -m smpc.mpc.session --kit KIT --task TASK.json --result RESULT.json \\
        [--bind HOST] [--timeout SECONDS] -P host:port -P host:port ... -I i -T t --ssl

``--kit`` is the party's kit directory from ``smpc keys init``: MPyC's ``--ssl``
loads ``.config/party_{i}.crt``, ``.config/party_{i}.key`` and
``.config/mpyc_ca.crt`` relative to the working directory, so the session
changes into it. The task names the share files of every site and input; the
session sums each input's shares locally in the field (a linear operation on
shares needs no communication), loads the sum as an MPyC secure array, opens
it and writes the result as JSON.

Two hardening steps close gaps of MPyC 0.11, in this one place:

* **Bind address.** MPyC listens on all interfaces; the session binds its
  listening socket to ``--bind`` (default: ``$SMPC_MPYC_BIND`` when set, else this
  party's host from ``-P``). A container whose public host name is not an address of
  its own (a Kubernetes pod behind a LoadBalancer) sets ``SMPC_MPYC_BIND=0.0.0.0`` in
  the daemon's environment, which every session inherits (``deploy/k8s/``).
* **Claimed identity.** MPyC's listening side accepts any certificate of the
  party CA and believes the party index the peer sends first. The session
  checks that the peer certificate is issued by the party CA and that its
  common name is ``MPyC party {j}`` for the index j it claims, and drops the
  connection otherwise (``_install_identity_check``). The connecting
  side is already covered: MPyC checks the server name ``MPyC party {j}``.
  A name mismatch makes MPyC retry silently forever, so connecting is bounded
  and ends with a clear error. A refused peer is reported on stderr as
  ``event=mpyc-impostor peer=ADDR claimed=INDEX subject=CN reason=...``, which
  the party daemon logs with the job.

**Dead peers are detected within a bound, not at the session timeout.**

* Connecting: every peer must connect within ``--timeout`` seconds (the party
  daemon uses 120: parties start their sessions when each has pooled its
  shares); once one peer has connected, the others must follow within
  ``--connect-grace`` seconds (default 30). The error names who is missing:
  ``parties did not all connect within 30 s of the first: missing beta (index 1)``.
* During the session: a peer connection that closes before this party has
  finished computing fails the session at once with ``lost party beta
  (index 1) during the session``. A peer process that dies (even SIGKILLed) has
  its connections closed by its kernel, so this is immediate; a peer host that
  vanishes is caught by TCP keepalive (5 s idle, 3 probes 2 s apart) and
  ``TCP_USER_TIMEOUT`` (unacknowledged data for 15 s): within
  ``DEAD_HOST_BOUND`` = 15 seconds.
* The session exits within a second when the process that started it (the
  party daemon) dies, so a killed daemon takes its session down with it and its
  peers notice at once.

The process exits 0 with the result written, or non-zero with one
``session: job JOB: REASON`` line on stderr saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from mpyc.runtime import mpc  # parses and strips MPyC's own options from sys.argv

from smpc import log as events
from smpc.errors import UserError
from smpc.mpc import mpyc_adapter
from smpc.mpc.task import SessionError, SessionTask
from smpc.pki.certs import mpyc_party_index

CONNECT_GRACE = 30.0  # seconds the other peers get once one peer has connected
KEEPALIVE = (5, 2, 3)  # TCP keepalive: idle seconds, seconds between probes, probes
BIND_ENV = "SMPC_MPYC_BIND"  # the listening address, when not the party's own host
DEAD_HOST_BOUND = 15  # seconds: keepalive gives up after 5 + 3 * 2; unacked data after 15
PARENT_POLL = 0.5  # seconds between checks that the starting process is alive
LINGER = 2.0  # seconds a party failed by a lost peer stays connected before it exits


def report(name: str, **fields: object) -> None:
    """One ``event=`` line on stderr, for the party daemon's log (MPyC's --no-log
    silences the logging module, so these are printed)."""
    print(events.line(name, **fields), file=sys.stderr, flush=True)


class _Watch:
    """Which peers connected when, and the first peer lost while the session computes."""

    def __init__(self, task: SessionTask) -> None:
        self.task = task
        self.first_peer: float | None = None  # loop time the first peer connected
        self.lost: asyncio.Future[str] = mpyc_adapter.event_loop(mpc).create_future()
        self.connected = False  # True once every peer has connected
        self.computing = True  # False once this party's outputs are open (shutdown)

    def peer_connected(self, pid: int) -> None:
        if self.first_peer is None:
            self.first_peer = mpyc_adapter.event_loop(mpc).time()
        report("mpyc-peer", party=self.task.party_called(pid), index=pid)

    def peer_lost(self, pid: int, exc: Exception | None) -> None:
        if self.computing and not self.lost.done():
            when = "during the session" if self.connected else "while connecting"
            reason = f"lost party {self.task.party_name(pid)} {when}"
            report(
                "mpyc-peer-lost", party=self.task.party_called(pid), index=pid,
                error=exc or "connection closed",
            )  # fmt: skip
            self.lost.set_result(reason)

    def missing(self) -> str:
        absent = [
            self.task.party_name(p.pid)
            for p in mpc.parties
            if p.pid != mpc.pid and not mpyc_adapter.party_connected(p)
        ]
        return ", ".join(absent) or "none"


def _keep_alive(transport: asyncio.BaseTransport) -> None:
    """TCP keepalive and a user timeout on a peer connection (see module doc)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    idle, interval, count = KEEPALIVE
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), interval),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), count),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), DEAD_HOST_BOUND * 1000),
    ]
    for level, option, value in options:
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, value)


def _peer_is_party(
    transport: asyncio.BaseTransport, claimed: int, party_ca
) -> tuple[str | None, str]:
    """Why a peer claiming index ``claimed`` must be refused (None if it may talk), and
    the common name of its certificate."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    if not der:
        return "no peer certificate", ""
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    subject = str(names[0].value) if names else cert.subject.rfc4514_string()
    try:
        cert.verify_directly_issued_by(party_ca)
    except (ValueError, TypeError, InvalidSignature):
        reason = f"certificate {cert.subject.rfc4514_string()!r} is not issued by the party CA"
        return reason, subject
    try:
        index = mpyc_party_index(cert)
    except UserError as exc:
        return str(exc), subject
    if index != claimed:
        return (
            f"peer claims to be party {claimed} but its certificate is for party {index}",
            subject,
        )
    return None, subject


def _install_identity_check(party_ca_path: Path) -> None:
    """Make MPyC's listening side verify the pid a peer claims (see module doc)."""
    party_ca = x509.load_pem_x509_certificate(party_ca_path.read_bytes())
    original: Callable[..., None]

    def data_received(self: Any, data: bytes) -> None:
        if mpyc_adapter.exchanger_peer_pid(self) is None and (
            len(mpyc_adapter.exchanger_buffer(self)) + len(data) >= 2
        ):
            received = bytes(mpyc_adapter.exchanger_buffer(self))
            claimed = int.from_bytes((received + bytes(data))[:2], "little")
            transport = mpyc_adapter.exchanger_transport(self)
            reason, subject = _peer_is_party(transport, claimed, party_ca)
            if reason is not None:
                peer = transport.get_extra_info("peername")
                address = f"{peer[0]}:{peer[1]}" if peer else "unknown"
                report(
                    "mpyc-impostor", peer=address, claimed=claimed, subject=subject or "none",
                    reason=reason,
                )  # fmt: skip
                transport.close()
                return
        original(self, data)

    original = mpyc_adapter.patch_exchanger(data_received=data_received)["data_received"]


def _install_peer_watch(watch: _Watch) -> None:
    """Report connected peers, set keepalive on their sockets, and turn a peer
    connection closing while this party computes into the session's failure."""
    original_made: Callable[..., None]

    def connection_made(self: Any, transport) -> None:
        _keep_alive(transport)
        original_made(self, transport)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        peer_pid = mpyc_adapter.exchanger_peer_pid(self)
        if peer_pid is None:  # refused (or gone) before it said who it is
            return
        if watch.computing:
            watch.peer_lost(peer_pid, exc)
            return
        # Shutdown: the outputs are open; a peer closing (normally, or not) is the end.
        mpyc_adapter.release_peer(self)

    def set_protocol(peer_pid: int) -> None:
        if peer_pid != mpc.pid:
            watch.peer_connected(peer_pid)

    originals = mpyc_adapter.patch_exchanger(
        connection_made=connection_made, connection_lost=connection_lost
    )
    original_made = originals["connection_made"]
    mpyc_adapter.on_set_protocol(mpc, set_protocol)


def _bind_listening_socket(host: str) -> None:
    """Make MPyC's ``create_server`` listen on ``host`` only."""
    loop: Any = mpyc_adapter.event_loop(mpc)  # its create_server is replaced
    original = loop.create_server
    loop.create_server = functools.partial(original, host=host)


async def _connect(watch: _Watch, timeout: float, grace: float) -> None:
    """``mpc.start()``, bounded: ``timeout`` for all, ``grace`` after the first peer."""
    loop = mpyc_adapter.event_loop(mpc)
    start = asyncio.ensure_future(mpc.start())
    deadline = loop.time() + timeout
    try:
        while True:
            done, _ = await asyncio.wait(
                {start, watch.lost}, timeout=0.2, return_when=asyncio.FIRST_COMPLETED
            )
            if start in done:
                start.result()
                watch.connected = True
                report("mpyc-connected", parties=len(mpc.parties))
                return
            if watch.lost.done():  # a peer left before everyone was there
                raise SessionError(f"{watch.lost.result()}; still missing {watch.missing()}")
            now = loop.time()
            if watch.first_peer is not None and now >= watch.first_peer + grace:
                raise SessionError(
                    f"parties did not all connect within {grace:g} s of the first: "
                    f"missing {watch.missing()}"
                )
            if now >= deadline:
                raise SessionError(
                    f"parties did not all connect within {timeout:g} s: missing "
                    f"{watch.missing()} (check that every party runs this job, that the -P "
                    "addresses and ports are reachable, and that each party's certificate is "
                    "issued by the party CA with CN 'MPyC party <index>')"
                )
    finally:
        if not start.done():
            start.cancel()


async def _exit_with_parent(parent: int) -> None:
    """End this process when the one that started it is gone (see module doc)."""
    while True:
        await asyncio.sleep(PARENT_POLL)
        if os.getppid() != parent:
            os._exit(3)


async def run_task(
    task: SessionTask,
    timeout: float,
    file_dir: Path,
    grace: float = CONNECT_GRACE,
    watch: _Watch | None = None,
) -> dict:
    """Connect to the other parties, compute the task, open the outputs.

    ``watch`` is the installed peer watch (:func:`_install_peer_watch`); without one a
    lost peer is noticed only at the session's time limit.
    """
    if len(mpc.parties) == 1:
        await mpc.start()
        result = await compute(task, file_dir)
        await mpc.shutdown()
        return result
    watch = watch if watch is not None else _Watch(task)
    await _connect(watch, timeout, grace)
    work = asyncio.ensure_future(compute(task, file_dir))
    racing: set[asyncio.Future[Any]] = {work, watch.lost}
    done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
    if work not in done:
        work.cancel()
        raise SessionError(watch.lost.result())
    result = work.result()
    watch.computing = False
    try:
        await asyncio.wait_for(mpc.shutdown(), grace)
    except TimeoutError:  # the outputs are open already: a peer gone now changes nothing
        report("mpyc-shutdown-incomplete", missing=watch.missing())
    return result


async def compute(task: SessionTask, file_dir: Path) -> dict:
    """The task's computation between connecting and shutting down: its protocol's."""
    from smpc.protocols.registry import protocol

    sectype = task.sectype
    if sectype.kind == "int":
        stype = mpc.SecInt(sectype.bit_length, p=sectype.prime)
    else:
        stype = mpc.SecFxp(sectype.bit_length, sectype.frac_bits, p=sectype.prime)
    if stype.field.modulus != sectype.field.modulus:
        raise SessionError(
            f"MPyC chose modulus {stype.field.modulus}, shares use {sectype.field.modulus}"
        )
    return await protocol(task.protocol).session(mpc, task, file_dir)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m smpc.mpc.session")
    parser.add_argument("--kit", required=True, type=Path, help="the party's kit directory")
    parser.add_argument("--task", required=True, type=Path, help="task file (JSON)")
    parser.add_argument("--result", required=True, type=Path, help="where to write the result")
    parser.add_argument(
        "--bind", default=os.environ.get(BIND_ENV) or None,
        help=f"address to listen on (default: ${BIND_ENV}, else own host from -P)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to connect")
    parser.add_argument(
        "--connect-grace", type=float, default=CONNECT_GRACE,
        help="seconds the other peers get once one has connected",
    )  # fmt: skip
    args = parser.parse_args(sys.argv[1:])  # MPyC has already removed its own options
    task = SessionTask.read(args.task.resolve())
    result_path = args.result.resolve()
    if task.party != mpc.pid:
        print(f"session: task is for party {task.party}, MPyC runs as {mpc.pid}", file=sys.stderr)
        return 2
    if mpc.options.ssl:
        os.chdir(args.kit)  # MPyC loads .config/party_{i}.* from the working directory
        _install_identity_check(Path(".config", "mpyc_ca.crt"))
    if len(mpc.parties) > 1:
        _bind_listening_socket(args.bind or mpc.parties[mpc.pid].host)
        watch = _Watch(task)
        _install_peer_watch(watch)
    else:
        watch = None
    parent = asyncio.ensure_future(
        _exit_with_parent(os.getppid()), loop=mpyc_adapter.event_loop(mpc)
    )
    try:
        result = mpc.run(
            run_task(task, args.timeout, result_path.parent, args.connect_grace, watch)
        )
    except SessionError as exc:
        print(f"session: job {task.job}: {exc}", file=sys.stderr, flush=True)
        if watch is not None and watch.lost.done():
            # Keep the connections open a moment, so that the other survivors see the
            # lost peer go first and name it, not this party leaving after it.
            time.sleep(LINGER)
        os._exit(1)  # peers' pending messages and tasks die with the process
    parent.cancel()
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
