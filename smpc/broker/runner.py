"""A broker subprocess on this machine: start it, wait until its TLS listener answers, stop it.

:class:`LocalBroker` is what :class:`~smpc.broker.mosquitto.MosquittoBroker` and
:class:`~smpc.broker.embedded.EmbeddedBroker` share; they differ in the files they write
and the command they run.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import ssl
import subprocess
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from smpc.config.federation import Federation
from smpc.errors import UserError
from smpc.pki.kit import BrokerKit

__all__ = ["BrokerStartError", "LocalBroker"]

log = logging.getLogger("smpc.broker")


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


class LocalBroker:
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

    def start(self) -> LocalBroker:
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
