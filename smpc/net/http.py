"""The daemons' read-only operator page server: strict HTTP/1.1 GET on asyncio, optional mTLS.

``smpc party serve`` and ``smpc site serve`` start one when their config has a ``web:``
block (:class:`WebConfig`); it is off by default and listens on 127.0.0.1 unless told
otherwise. It answers ``GET`` and ``HEAD`` of the paths it was given and nothing else:
one request per connection, a request line and headers of at most 8 KiB, no body, and
every response ``Connection: close`` and ``Cache-Control: no-store``. Handlers run on the
daemon's event loop and must not block it (they read the store in a worker thread).

With ``client_ca: true`` the server speaks TLS only and requires a client certificate
issued by the federation CA (:func:`server_tls_context`): a client without one fails the
handshake and never sees a byte of the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, field_validator

from smpc import log
from smpc.errors import UserError

__all__ = ["Response", "Routes", "WebConfig", "server_tls_context", "start_web"]

logger = logging.getLogger("smpc.web")

MAX_HEAD = 8192  # bytes of request line and headers
MAX_HEADERS = 64
READ_TIMEOUT = 10.0  # seconds for a client to send its whole request (and its handshake)
MAX_CONNECTIONS = 32  # at once; more are closed without an answer
_REQUEST_LINE = re.compile(rb"(GET|HEAD) (/[!-~]*) HTTP/1\.[01]\r\n")
_HEADER = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~]*\r\n")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    421: "Misdirected Request",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_PAGE_HEADERS = (  # a page of its own: no scripts, nothing from elsewhere, no framing
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("Connection", "close"),
)


class WebConfig(BaseModel):
    """A daemon config's ``web:`` block: where its operator page listens, and who may read it.

    - ``listen``: ``HOST:PORT`` (default ``127.0.0.1:9464``; ``[::1]:9464`` for IPv6);
    - ``hosts``: the DNS names clients reach the page by; requests naming another host
      (``Host:``) than these, an IP address or ``localhost`` get 421, so a web page that
      rebinds its own name to this address cannot read the page through a browser;
    - ``client_ca``: serve TLS only, to clients with a federation-CA certificate (any
      participant's kit ``tls/client.crt``);
    - ``cert``, ``key``: the page's server certificate and key under ``client_ca``. A
      party defaults to its MPyC certificate (issued by the party CA, for server
      authentication, named ``mpyc-party-INDEX``); a site has no server certificate and
      must give them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = "127.0.0.1:9464"
    hosts: tuple[str, ...] = ()  # host names besides IP addresses and localhost
    client_ca: bool = False
    cert: Path | None = None
    key: Path | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"give HOST:PORT, e.g. 127.0.0.1:9464 (got {value!r})")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def resolved(self, base: Path) -> WebConfig:
        """Relative ``cert`` and ``key`` taken relative to ``base`` (the config's directory)."""
        update = {
            k: (v if v.is_absolute() else base / v)
            for k, v in (("cert", self.cert), ("key", self.key))
            if v is not None
        }
        return self.model_copy(update=update)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


Routes = dict[str, Callable[[], Awaitable[Response]]]


def server_tls_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """TLS ≥ 1.2 with ``cert``/``key``; a client must present a certificate issued by
    ``client_ca`` (the federation CA), checked in the handshake."""
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: not found (TLS files of the operator page)") from None
    except (ssl.SSLError, OSError) as exc:
        raise UserError(f"cannot load TLS files {cert}, {key}, {client_ca}: {exc}") from None
    return context


def render(response: Response, head_only: bool = False) -> bytes:
    """The bytes of one HTTP/1.1 response."""
    lines = [
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Error')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        *(f"{k}: {v}" for k, v in _PAGE_HEADERS + response.headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, str | None] | Response:
    """(method, path, Host header) of one request, or the error response to send instead."""
    try:
        line = await reader.readuntil(b"\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return Response(400, b"bad request line\n")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        if re.match(rb"(?!GET |HEAD )[A-Z]+ ", line):
            return Response(405, b"only GET and HEAD\n", headers=(("Allow", "GET, HEAD"),))
        return Response(400, b"bad request line\n")
    size, host = len(line), None
    for _ in range(MAX_HEADERS + 1):
        try:
            header = await reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return Response(400, b"bad header\n")
        size += len(header)
        if size > MAX_HEAD:
            return Response(400, b"request head too large\n")
        if header == b"\r\n":
            method, target = match.group(1).decode(), match.group(2).decode("ascii")
            return method, target.split("?", 1)[0], host
        if not _HEADER.fullmatch(header):
            return Response(400, b"bad header\n")
        key, _, value = header.partition(b":")
        if key.lower() == b"host":
            if host is not None:
                return Response(400, b"two Host headers\n")
            host = value.strip().decode("ascii")
    return Response(400, b"too many headers\n")


async def start_web(
    config: WebConfig, routes: Routes, ssl_context: ssl.SSLContext | None, name: str
) -> asyncio.Server:
    """Listen on ``config.listen`` and answer ``routes`` (path -> handler) until closed.

    ``name`` (the daemon's participant) goes into the log lines: ``event=web-listening``
    once it listens, ``event=web-refused`` for a client that failed the TLS handshake
    (no certificate, one of another CA, not TLS at all), ``event=web-error`` for a
    handler that raised (the client gets a 500 without details).
    """

    active = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        active += 1
        try:
            if active > MAX_CONNECTIONS:
                return  # closed at once: a page does not need more
            writer.write(await _respond(reader, routes, name, config.hosts))
            await writer.drain()
        except (ConnectionError, ssl.SSLError, OSError):
            pass  # the client went away
        finally:
            active -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        if ssl_context is None:
            server = await asyncio.start_server(handle, config.host, config.port, limit=MAX_HEAD)
        else:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                lambda: _TlsAccept(ssl_context, handle, name), config.host, config.port
            )
    except OSError as exc:
        raise UserError(f"web: cannot listen on {config.listen}: {exc.strerror or exc}") from None
    scheme = "https" if ssl_context else "http"
    log.event(logger, "web-listening", who=name, url=f"{scheme}://{config.listen}/")
    return server


class _TlsAccept(asyncio.Protocol):
    """An accepted connection that speaks TLS before anything else.

    Reading is paused from the first moment, so every byte the client sends goes to the
    handshake; a client the handshake refuses (no certificate, one of another CA, not
    TLS at all) is logged (``event=web-refused``) and closed, and only the others get a
    stream to ``handle``.
    """

    _tasks: ClassVar[set[asyncio.Task[None]]] = set()  # keeps the handshakes running

    def __init__(
        self,
        context: ssl.SSLContext,
        handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        name: str,
    ) -> None:
        self.context, self.handle, self.name = context, handle, name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._upgrade(transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_HEAD)
        protocol = asyncio.StreamReaderProtocol(reader)
        peer = transport.get_extra_info("peername")
        try:
            tls = await loop.start_tls(
                transport, protocol, self.context, server_side=True,
                ssl_handshake_timeout=READ_TIMEOUT,
            )  # fmt: skip
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
            log.event(
                logger, "web-refused", logging.WARNING, who=self.name, peer=where, reason=reason
            )
            transport.close()
            return
        if tls is None:  # the client went away during the handshake
            return
        protocol.connection_made(tls)
        await self.handle(reader, asyncio.StreamWriter(tls, protocol, reader, loop))


def host_allowed(host: str | None, names: tuple[str, ...]) -> bool:
    """Whether a request's Host header names this server: an IP address, ``localhost``, one
    of ``names`` (any port), or no header at all. Another name is what a page the
    operator's browser opened elsewhere sends after rebinding its DNS name to this
    address: it must not read the page."""
    if host is None:
        return True
    name = host.rpartition(":")[0] if re.fullmatch(r".*:\d+", host) else host
    name = name.strip("[]").lower()
    if name == "localhost" or name in {n.lower() for n in names}:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


async def _respond(
    reader: asyncio.StreamReader, routes: Routes, name: str, hosts: tuple[str, ...]
) -> bytes:
    """The response to one request on ``reader``, rendered."""
    try:
        request = await asyncio.wait_for(read_request(reader), READ_TIMEOUT)
    except TimeoutError:
        request = Response(408, b"request not received in time\n")
    if isinstance(request, Response):
        return render(request)
    method, path, host = request
    if not host_allowed(host, hosts):
        return render(Response(421, b"this server does not answer to that host name\n"))
    handler = routes.get(path)
    if handler is None:
        return render(Response(404, b"not found\n"), method == "HEAD")
    try:
        response = await handler()
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.event(logger, "web-error", logging.ERROR, who=name, path=path, reason=reason)
        response = Response(500, b"internal error (see the daemon's log)\n")
    return render(response, method == "HEAD")
