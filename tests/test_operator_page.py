"""The daemons' operator pages on real processes: Mosquitto, three ``smpc party serve``
(alpha's page over plain HTTP on 127.0.0.1, beta's behind federation-CA client
certificates, gamma's off), bergen's ``smpc site serve`` with its page, ``smpc upload``
and a real MPyC session; alpha's page read by Debian's headless ``chromium``.

- The page loads in the browser and shows the jobs the test ran (a sum done, a job
  refused with its reason), their sites and the rejection of a second, different
  upload of one site; a screenshot is written.
- ``/metrics`` parses with prometheus-client's text parser and its counters are what the
  test did: two shares stored, one envelope rejected as a ``conflict``, one MPyC
  session done, the jobs by state; bergen's counts its one upload.
- Neither the pages nor ``/metrics`` hold any private key of the federation (PEM or raw
  bytes), share body or seed the party stores.
- ``/healthz`` answers 200 while the broker is connected and 503 naming why once it is
  gone, at the party and at the site.
- With ``client_ca: true`` a client without a certificate, with one of another CA, or
  without TLS is refused in the handshake (and logged); one with a federation-CA
  certificate gets the page.

The page server on its own (in-process, no processes): only GET and HEAD of its paths,
strict request heads, a raising handler's details kept in the log.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from smpc.errors import UserError
from smpc.net.http import Response, WebConfig, start_web
from smpc.net.webpage import BrokerState
from smpc.party.metrics import reason_kind
from smpc.site.web import SiteActivity, start_site_web
from tests.brokers import kit, requires_mosquitto
from tests.conftest import free_port
from tests.test_party_daemon import (
    PARTIES,
    Statuses,
    _closing,
    _data,
    _job,
    _publish,
)
from tests.test_upload_integration import _broker, _start_site, _stop, _wait_for_log

pytestmark = [pytest.mark.timeout(240)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOC_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "operator-page.png"


def _start(name: str, keys_dir: Path, workdir: Path, web: str) -> subprocess.Popen:
    """``smpc party serve`` with ``web`` as its config's ``web:`` block (YAML flow)."""
    config = workdir / f"{name}.yaml"
    config.write_text(
        f"kit: {keys_dir / 'kits' / name}\nstore: {workdir / 'store' / name}\nweb: {web}\n"
    )
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "smpc.cli", "party", "serve", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    proc.log_path = workdir / f"{name}.log"  # type: ignore[attr-defined]
    return proc


def _upload(keys_dir: Path, site: str, data: Path, job: str) -> subprocess.CompletedProcess:
    return _upload_as(keys_dir, site, data, job, keep=data.with_suffix(".keep"))


def _upload_as(
    keys_dir: Path, site: str, data: Path, job: str, keep: Path
) -> subprocess.CompletedProcess:
    """``smpc upload`` of ``data`` as ``x``, its envelopes kept in ``keep``."""
    return subprocess.run(
        [
            sys.executable, "-m", "smpc.cli", "upload", "--kit", str(keys_dir / "kits" / site),
            "--job", job, "--input", f"x={data}", "--timeout", "60", "--keep", str(keep),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _holds(seen: Statuses, party: str, job: str, site: str) -> bool:
    """Whether ``party`` said it holds ``site``'s shares of ``job``."""
    return any(p == party and s.job == job and site in s.sites for p, s in list(seen.seen))


def _wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _tls_get(port: int, keys_dir: Path, client: tuple[Path, Path] | None) -> tuple[int, str]:
    """GET / over TLS, checking the server against the party CA, as ``client`` (or none)."""
    context = ssl.create_default_context(cafile=str(keys_dir / "public" / "party-ca.crt"))
    context.check_hostname = False  # the page's certificate names "MPyC party 1"
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _secrets(keys_dir: Path, store: Path) -> list[tuple[str, bytes]]:
    """(what, needle) of every private key of the federation and every stored share body."""
    needles: list[tuple[str, bytes]] = []
    for path in sorted(keys_dir.rglob("*.key")):
        pem = path.read_bytes()
        needles += [(f"{path} PEM line", line) for line in pem.splitlines() if len(line) > 20]
        key = serialization.load_pem_private_key(pem, password=None)
        try:
            raw = key.private_bytes(  # type: ignore[union-attr]
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )  # fmt: skip
        except ValueError:  # an EC key: its private scalar
            raw = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
        needles += _encodings(str(path), raw)
    bodies = sorted(store.rglob("*.share"))
    assert bodies, "the party stored no share"
    for path in bodies:
        body = path.read_bytes()
        needles += _encodings(f"share {path}", body[:32])  # a seed is the whole body
    return needles


def _encodings(what: str, raw: bytes) -> list[tuple[str, bytes]]:
    return [
        (f"{what} raw", raw),
        (f"{what} hex", raw.hex().encode()),
        (f"{what} HEX", raw.hex().upper().encode()),
        (f"{what} base64", base64.b64encode(raw)[:40]),
        (f"{what} base64url", base64.urlsafe_b64encode(raw)[:40]),
    ]


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _chromium(url: str, *options: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1280,900",
            *options, url,
        ],
        capture_output=True, timeout=90,
    )  # fmt: skip


@requires_mosquitto
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_operator_page_metrics_health_and_client_certificates(keys_dir, tmp_path):
    alpha_port, beta_port, bergen_port = free_port(), free_port(), free_port()
    webs = {
        "alpha": f'{{listen: "127.0.0.1:{alpha_port}"}}',
        "beta": f'{{listen: "127.0.0.1:{beta_port}", client_ca: true}}',
        "gamma": "null",  # off: the default
    }
    job = _job("web-sum", deliver="parties", sites=("oslo", "bergen"))
    bergen = tmp_path / "bergen-site.yaml"  # bergen's agent answers the job by itself
    bergen.write_text(
        f"kit: {keys_dir / 'kits' / 'bergen'}\ninputs:\n  x: {_data(tmp_path, 'bergen')}\n"
        f'web: {{listen: "127.0.0.1:{bergen_port}"}}\n'
    )
    parties: list[subprocess.Popen] = []
    with _broker(keys_dir, tmp_path) as broker:
        try:
            parties = [_start(name, keys_dir, tmp_path, webs[name]) for name in PARTIES]
            for proc in parties:
                _wait_for_log(proc, "event=party-connected")
            parties.append(_start_site(bergen, tmp_path / "bergen-site.log"))
            _wait_for_log(
                parties[0], f"event=web-listening who=alpha url=http://127.0.0.1:{alpha_port}/"
            )
            _wait_for_log(parties[1], f"url=https://127.0.0.1:{beta_port}/")
            assert "event=web-listening" not in parties[2].log_path.read_text()
            assert _get(alpha_port, "/healthz") == (200, "ok: party alpha, broker connected\n")

            with Statuses(keys_dir, [job.id]) as seen:  # the analyst's view of the job
                _publish(keys_dir, job)
                up = _upload(keys_dir, "oslo", _data(tmp_path, "oslo"), job.id)
                assert up.returncode == 0, up.stderr
                _wait_for_log(parties[3], "event=upload-complete job=web-sum")
                # oslo again with other data, as a new upload: every party refuses to mix sharings
                other = tmp_path / "oslo-other.npy"
                other.write_bytes(_data(tmp_path, "bergen").read_bytes())
                up = _upload_as(keys_dir, "oslo", other, job.id, keep=tmp_path / "other-keep")
                assert up.returncode != 0 and "already uploaded set" in up.stderr, up.stderr
                _wait_until(lambda: all(_holds(seen, p, job.id, "bergen") for p in PARTIES))
                _publish(keys_dir, _closing(seen, job, ("oslo", "bergen")))
                for name in PARTIES:
                    seen.wait(name, job.id, "done", 90)
            _publish(keys_dir, _job("web-refused", t=0))  # below every party's min_threshold
            _wait_until(lambda: "<td>web-refused</td>" in _get(alpha_port, "/")[1])

            # The page, in a real browser: the job, its state and sites, the rejection.
            dom = _chromium(f"http://127.0.0.1:{alpha_port}/", "--dump-dom", tmp=tmp_path)
            page = dom.stdout.decode()
            assert "smpc computing party alpha" in page, dom.stderr.decode()[-2000:]
            row = next(r for r in page.split("<tr>") if "<td>web-sum</td>" in r)
            assert "<td>sum</td><td>done</td><td>analyst</td><td>bergen, oslo</td>" in row
            assert "<td>oslo, bergen</td>" in row  # closed with, in the close's order
            row = next(r for r in page.split("<tr>") if "<td>web-refused</td>" in r)
            assert "<td>refused</td>" in row
            assert "threshold 0 is below this party's minimum 1" in row
            assert "site 'oslo' already uploaded set" in page
            assert "broker link" in page and ">connected<" in page
            screenshot = tmp_path / "operator-page.png"
            shot = _chromium(
                f"http://127.0.0.1:{alpha_port}/", f"--screenshot={screenshot}", tmp=tmp_path
            )
            assert screenshot.is_file(), shot.stderr.decode()[-2000:]
            assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if not DOC_SCREENSHOT.exists():  # once, for docs/deployment.md
                DOC_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(screenshot, DOC_SCREENSHOT)

            # /metrics: what the test did, through prometheus-client's own parser.
            status, text = _get(alpha_port, "/metrics")
            assert status == 200
            metrics = _metrics(text)
            for site in ("oslo", "bergen"):
                assert metrics[("smpc_shares_stored_total", (("site", site),))] == 1
            assert ("smpc_shares_stored_total", (("site", "tromso"),)) not in metrics
            rejected = {k[1]: v for k, v in metrics.items() if k[0] == "smpc_shares_rejected_total"}
            assert rejected == {(("reason", "conflict"),): 1}, rejected
            assert metrics[("smpc_mpyc_session_seconds_count", (("outcome", "done"),))] == 1
            assert metrics[("smpc_mpyc_session_seconds_sum", (("outcome", "done"),))] > 0
            assert metrics[("smpc_jobs", (("state", "done"),))] == 1
            assert metrics[("smpc_jobs", (("state", "refused"),))] == 1
            assert metrics[("smpc_jobs", (("state", "open"),))] == 0
            shares = sum(p.stat().st_size for p in (tmp_path / "store" / "alpha").rglob("*.share"))
            assert metrics[("smpc_store_bytes", (("part", "shares"),))] == shares
            assert metrics[("smpc_upload_received_bytes_total", ())] > shares
            assert metrics[("smpc_broker_connected", ())] == 1
            audit = (tmp_path / "store" / "alpha" / "audit.jsonl").read_text().splitlines()
            assert metrics[("smpc_audit_entries", ())] == len(audit)
            assert audit[-1].split('"hash":"')[1][:64] in page  # the chain head

            # No key, share or seed on the page or in /metrics.
            status, raw_page = _get(alpha_port, "/")
            assert status == 200
            for what, needle in _secrets(keys_dir, tmp_path / "store" / "alpha"):
                for name, shown in (("page", raw_page), ("dom", page), ("metrics", text)):
                    assert needle not in shown.encode(), f"{what} appears on the {name}"

            # Only GET and HEAD of the three paths.
            assert _get(alpha_port, "/nothing")[0] == 404
            assert _get(alpha_port, "/", method="POST")[0] == 405
            assert _get(alpha_port, "/metrics", method="HEAD") == (200, "")

            # beta's page: a federation-CA client certificate or nothing.
            analyst = keys_dir / "kits" / "analyst" / "tls"
            status, body = _tls_get(
                beta_port, keys_dir, (analyst / "client.crt", analyst / "client.key")
            )
            assert status == 200 and "smpc computing party beta" in body
            other_ca = keys_dir / "kits" / "gamma" / ".config"  # a party-CA certificate
            for client in (None, (other_ca / "party_2.crt", other_ca / "party_2.key")):
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    _tls_get(beta_port, keys_dir, client)
            with socket.create_connection(("127.0.0.1", beta_port), timeout=10) as plain:
                plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert b"smpc" not in plain.recv(65536)

            def refused() -> list[str]:
                lines = parties[1].log_path.read_text().splitlines()
                return [line for line in lines if "event=web-refused who=beta" in line]

            _wait_until(lambda: len(refused()) >= 3)  # none, the party CA's, plain HTTP
            assert len(refused()) == 3, refused()
            assert all("peer=127.0.0.1:" in line for line in refused())
            first, other, plain_http = refused()
            assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in first
            assert "CERTIFICATE_VERIFY_FAILED" in other
            assert "HTTP_REQUEST" in plain_http or "WRONG_VERSION" in plain_http, plain_http

            # bergen's agent: its page and counters say it uploaded the job, and nothing more.
            status, site_page = _get(bergen_port, "/")
            assert status == 200 and "smpc site bergen" in site_page
            row = next(r for r in site_page.split("<tr>") if "<td>web-sum</td>" in r)
            assert "<td>sum</td><td>uploaded</td>" in row
            site_metrics = _metrics(_get(bergen_port, "/metrics")[1])
            assert site_metrics[("smpc_site_jobs_total", (("outcome", "uploaded"),))] == 1
            assert site_metrics[("smpc_site_jobs_total", (("outcome", "failed"),))] == 0
            assert site_metrics[("smpc_site_upload_sent_bytes_total", ())] > 0
            assert site_metrics[("smpc_site_answered_jobs", ())] == 1
            assert _get(bergen_port, "/healthz") == (200, "ok: site bergen, broker connected\n")
            for what, needle in _secrets(keys_dir, tmp_path / "store" / "beta"):
                assert needle not in site_page.encode(), f"{what} appears on bergen's page"

            # /healthz once the broker is gone: 503 with the reason.
            broker.stop()
            deadline = time.monotonic() + 30
            while _get(alpha_port, "/healthz")[0] != 503 and time.monotonic() < deadline:
                time.sleep(0.2)
            status, reason = _get(alpha_port, "/healthz")
            assert status == 503 and reason.startswith("party alpha: broker not connected: ")
            _wait_until(lambda: _get(bergen_port, "/healthz")[0] == 503)
            assert _get(bergen_port, "/healthz")[1].startswith("site bergen: broker not connected")
        finally:
            _stop(parties)
    for proc in parties:
        assert proc.returncode == 0
        assert "Traceback" not in proc.log_path.read_text()


# -- the page server on its own, in-process: strict about what it answers ------------------


def _serve_once(routes, raw: bytes, hosts: tuple[str, ...] = ()) -> bytes:
    """Send ``raw`` to a page server with ``routes``; what it answered."""

    async def run() -> bytes:
        config = WebConfig(listen=f"127.0.0.1:{free_port()}", hosts=hosts)
        server = await start_web(config, routes, None, "test")
        try:
            reader, writer = await asyncio.open_connection(config.host, config.port)
            writer.write(raw)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return answer
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


async def _page() -> Response:
    return Response(200, b"<p>hello</p>", "text/html; charset=utf-8")


async def _broken() -> Response:
    raise RuntimeError("secret detail")


ROUTES = {"/": _page, "/broken": _broken}


def test_the_page_server_answers_get_and_head_of_its_paths_only():
    answer = _serve_once(ROUTES, b"GET /?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"<p>hello</p>"
    for header in (
        b"Content-Length: 12", b"Cache-Control: no-store", b"Connection: close",
        b"Content-Security-Policy: default-src 'none'", b"X-Content-Type-Options: nosniff",
    ):  # fmt: skip
        assert header in head, header
    assert _serve_once(ROUTES, b"HEAD / HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\n")
    cases = {
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi": b"405",
        b"GET /other HTTP/1.1\r\n\r\n": b"404",
        b"GET / HTTP/2.0\r\n\r\n": b"400",
        b"GET http://elsewhere/ HTTP/1.1\r\n\r\n": b"400",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n": b"400",
        b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n": b"400",
        b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n": b"400",
        b"\x16\x03\x01\x02\x00garbage\r\n": b"400",
    }
    for raw, status in cases.items():
        answer = _serve_once(ROUTES, raw)
        assert answer.startswith(b"HTTP/1.1 " + status + b" "), (raw[:40], answer[:60])
        assert b"hello" not in answer


def test_the_page_answers_only_to_addresses_localhost_and_its_configured_names():
    """A browser tab on a rebound DNS name sends that name as Host: no page for it."""
    for host in (b"127.0.0.1:9464", b"localhost", b"[::1]:9464", b"10.0.0.5", b"Party-0.smpc"):
        answer = _serve_once(ROUTES, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
                             hosts=("party-0.smpc",))  # fmt: skip
        assert answer.startswith(b"HTTP/1.1 200 "), (host, answer[:40])
    for host in (b"attacker.example", b"attacker.example:9464", b"party-0.smpc.attacker.example"):
        answer = _serve_once(ROUTES, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
                             hosts=("party-0.smpc",))  # fmt: skip
        assert answer.startswith(b"HTTP/1.1 421 ") and b"hello" not in answer, host
    twice = b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: attacker.example\r\n\r\n"
    assert _serve_once(ROUTES, twice).startswith(b"HTTP/1.1 400 ")


def test_a_handler_that_raises_gives_500_without_its_details(caplog):
    answer = _serve_once(ROUTES, b"GET /broken HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert b"secret detail" not in answer and b"RuntimeError" not in answer
    assert "event=web-error who=test path=/broken" in caplog.text


def test_web_config_listen_and_a_site_page_behind_client_certificates_needs_a_certificate(
    keys_dir,
):
    assert (WebConfig().host, WebConfig().port) == ("127.0.0.1", 9464)
    assert WebConfig(listen="[::1]:80").host == "::1"
    for bad in ("9464", "localhost", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:http"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            WebConfig(listen=bad)
    with socket.socket() as taken:  # a port in use: the daemon says so and does not start
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = WebConfig(listen=f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(UserError, match=f"web: cannot listen on {busy.listen}: "):
            asyncio.run(start_web(busy, ROUTES, None, "test"))
    keys = SimpleNamespace(kit=kit(keys_dir, "oslo"))
    with pytest.raises(UserError, match="client_ca needs cert and key"):
        asyncio.run(
            start_site_web(
                WebConfig(listen=f"127.0.0.1:{free_port()}", client_ca=True),
                keys=keys,
                activity=SiteActivity(set()),
                broker=BrokerState(),
                stopping=lambda: False,
            )
        )


def test_rejection_reasons_become_bounded_kinds():
    assert reason_kind("envelope is for party 2") == "wrong-party"
    assert reason_kind("site 'tromso' is not part of job j") == "site-not-in-job"
    assert reason_kind("job j: site 'oslo' already uploaded set 1a; refusing ...") == "conflict"
    assert reason_kind("internal error at this party: OSError: disk full") == "internal-error"
    assert reason_kind("share envelope (job=j): the bytes are no envelope") == "invalid-envelope"
    assert (
        reason_kind("share envelope (site=x): site 'x' is not in the federation's site directory")
        == "unknown-site"
    )
