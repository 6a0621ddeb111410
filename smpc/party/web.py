"""A party's operator page: ``/`` (HTML status), ``/metrics`` (Prometheus) and ``/healthz``.

Served by :func:`smpc.net.http.start_web` when the party config has a ``web:`` block. The
page shows the party, its federation, the broker connection, every job with its state,
sites, age and reason, the shares held per job and site, the last rejections with their
reasons and the audit chain head. It shows metadata only: it never reads a share file,
a key or a released result body; what it reads of the store it reads through a
read-only SQLite connection of its own, in a worker thread, so the daemon's message loop
and its store connection are never held up by a page view or a scrape.
"""

from __future__ import annotations

import asyncio
import html
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from smpc.net.http import Response, Routes, WebConfig, server_tls_context, start_web
from smpc.party.metrics import PartyMetrics

__all__ = ["BrokerState", "PartyPage", "StoreReader", "page_html", "start_party_web"]

JOB_STATES = ("open", "computing", "done", "failed", "refused")
RECENT_REJECTIONS = 20


@dataclass
class BrokerState:
    """What the daemon knows of its broker link (set from its message loop)."""

    connected: bool = False
    since: float = field(default_factory=time.time)
    reason: str = "not connected yet"

    def up(self) -> None:
        self.connected, self.since, self.reason = True, time.time(), ""

    def down(self, reason: str) -> None:
        if self.connected or reason != self.reason:
            self.since = time.time()
        self.connected, self.reason = False, reason


@dataclass(frozen=True)
class Snapshot:
    """What the page and the scrape show of the store, read at one moment."""

    jobs: list[dict[str, Any]]
    holdings: list[dict[str, Any]]
    rejections: list[dict[str, Any]]
    rejected_total: int
    store_bytes: dict[str, int]


class StoreReader:
    """Reads a party store's metadata over a read-only connection (one per read)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _connect(self) -> sqlite3.Connection:
        uri = f"{(self.root / 'store.sqlite').resolve().as_uri()}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=5.0)

    def snapshot(self) -> Snapshot:
        db = self._connect()
        try:
            return self._read(db)
        finally:
            db.close()

    def _read(self, db: sqlite3.Connection) -> Snapshot:
        reasons = {
            job: _status_reason(body)
            for job, body in db.execute("SELECT job, body FROM releases WHERE position = 0")
        }
        held: dict[tuple[str, str], dict[str, Any]] = {}
        rows = db.execute("SELECT job, site, input, size, stored FROM shares ORDER BY job, site")
        for job, site, input_, size, stored in rows:
            row = held.setdefault(
                (job, site), {"job": job, "site": site, "inputs": [], "bytes": 0, "last": 0.0}
            )
            row["inputs"].append(input_)
            row["bytes"] += size
            row["last"] = max(row["last"], stored)
        sites: dict[str, list[str]] = {}
        for job, site in held:
            sites.setdefault(job, []).append(site)
        jobs = []
        for job_id, message, received, status, analyst, closed in db.execute(
            "SELECT id, message, received, status, analyst, closed FROM jobs ORDER BY received"
        ):
            payload = _payload(message)
            jobs.append(
                {
                    "job": job_id, "status": status, "analyst": analyst, "received": received,
                    "protocol": str(payload.get("protocol", "?")),
                    "sites": sites.get(job_id, []),
                    "closed": list(_payload(closed).get("close") or ()) if closed else None,
                    "reason": reasons.get(job_id, ""),
                }
            )  # fmt: skip
        rejections = [
            dict(zip(("at", "job", "input", "site", "reason"), r, strict=True))
            for r in db.execute(
                "SELECT at, job, input, site, reason FROM rejections ORDER BY id DESC LIMIT ?",
                (RECENT_REJECTIONS,),
            )
        ]
        (rejected_total,) = db.execute("SELECT count(*) FROM rejections").fetchone()
        (share_bytes,) = db.execute("SELECT coalesce(sum(size), 0) FROM shares").fetchone()
        database = sum(
            p.stat().st_size for p in self.root.glob("store.sqlite*") if p.is_file()
        )  # fmt: skip
        audit = self.root / "audit.jsonl"
        store_bytes = {
            "shares": int(share_bytes),
            "database": database,
            "audit": audit.stat().st_size if audit.exists() else 0,
        }
        return Snapshot(jobs, list(held.values()), rejections, int(rejected_total), store_bytes)


def _payload(message: bytes | None) -> dict[str, Any]:
    """The payload of a signed message the store holds (only its public fields are shown)."""
    try:
        payload = json.loads(message or b"{}").get("payload", {})
    except (ValueError, AttributeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _status_reason(body: bytes) -> str:
    return str(_payload(body).get("reason") or "")


class _StoreCollector(Collector):
    """Gauges read at scrape time: jobs by state, store bytes, broker link, audit entries."""

    def __init__(self, page: PartyPage) -> None:
        self.page = page

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.page.reader.snapshot()
        jobs = GaugeMetricFamily("smpc_jobs", "Jobs this party knows, by state", labels=["state"])
        counts = dict.fromkeys(JOB_STATES, 0)
        for job in snap.jobs:
            counts[job["status"]] = counts.get(job["status"], 0) + 1
        for state, count in counts.items():
            jobs.add_metric([state], count)
        yield jobs
        store = GaugeMetricFamily(
            "smpc_store_bytes", "Bytes in the party's store directory", labels=["part"]
        )
        for part, size in snap.store_bytes.items():
            store.add_metric([part], size)
        yield store
        yield GaugeMetricFamily(
            "smpc_broker_connected", "1 while the daemon is connected to the broker",
            value=int(self.page.broker.connected),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "smpc_audit_entries", "Entries in the party's audit log",
            value=self.page.audit_head()[0],
        )  # fmt: skip


class PartyPage:
    """The routes of one party daemon's operator page."""

    def __init__(
        self,
        *,
        party: str,
        index: int,
        federation: Callable[[], Any],
        store: Path,
        metrics: PartyMetrics,
        broker: BrokerState,
        audit_head: Callable[[], tuple[int, str]],
        stopping: Callable[[], bool],
    ) -> None:
        self.party, self.index, self.federation = party, index, federation
        self.reader = StoreReader(store)
        self.metrics, self.broker, self.audit_head = metrics, broker, audit_head
        self.stopping = stopping
        metrics.registry.register(_StoreCollector(self))

    def routes(self) -> Routes:
        return {"/": self.index_page, "/metrics": self.scrape, "/healthz": self.healthz}

    async def index_page(self) -> Response:
        snap = await asyncio.to_thread(self.reader.snapshot)
        body = page_html(self, snap, time.time())
        return Response(200, body.encode(), "text/html; charset=utf-8")

    async def scrape(self) -> Response:
        body = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return Response(200, body, CONTENT_TYPE_LATEST)

    async def healthz(self) -> Response:
        """200 while the loop answers and the broker is connected; 503 with the reason."""
        if self.stopping():
            return Response(503, f"party {self.party}: stopping\n".encode())
        if not self.broker.connected:
            reason = self.broker.reason or "not connected"
            return Response(503, f"party {self.party}: broker not connected: {reason}\n".encode())
        return Response(200, f"ok: party {self.party}, broker connected\n".encode())


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]], empty: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    if not rows:
        body = f'<tr><td colspan="{len(columns)}" class="none">{html.escape(empty)}</td></tr>'
    else:
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
            for row in rows
        )
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin-bottom:.2em} h2{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top} th{background:#f0f0f0} .none{color:#888}
.up{color:#06702f;font-weight:bold} .down{color:#b00020;font-weight:bold}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em} dt{font-weight:bold}
code{font-size:.95em} td:first-child{white-space:nowrap}
"""


def page_html(page: PartyPage, snap: Snapshot, now: float) -> str:
    """The status page: metadata only (names, states, counts, sizes, reasons, one hash)."""
    federation = page.federation()
    broker = page.broker
    link = (
        f'<span class="up">connected</span> for {_age(now - broker.since)}'
        if broker.connected
        else f'<span class="down">not connected</span> for {_age(now - broker.since)}: '
        f"{html.escape(broker.reason)}"
    )
    entries, head = page.audit_head()
    facts = (
        ("party", f"{page.party} (MPyC index {page.index})"),
        ("federation", f"{federation.name}: parties {', '.join(federation.party_names)}; "
                       f"sites {', '.join(s.name for s in federation.sites)}; "
                       f"threshold t = {federation.threshold}"),
        ("broker", f"{federation.broker.host}:{federation.broker.port}"),
    )  # fmt: skip
    summary = "".join(f"<dt>{k}</dt><dd>{html.escape(v)}</dd>" for k, v in facts)
    summary += f"<dt>broker link</dt><dd>{link}</dd>"
    summary += (
        f"<dt>audit chain</dt><dd>{entries} entries, head <code>{html.escape(head)}</code></dd>"
    )
    jobs = [
        (
            j["job"], j["protocol"], j["status"], j["analyst"],
            ", ".join(j["sites"]) or "none",
            "-" if j["closed"] is None else ", ".join(j["closed"]),
            _age(now - j["received"]), j["reason"] or "-",
        )
        for j in reversed(snap.jobs)
    ]  # fmt: skip
    holdings = [
        (h["job"], h["site"], ", ".join(h["inputs"]), h["bytes"], _age(now - h["last"]))
        for h in snap.holdings
    ]
    rejections = [
        (_age(now - r["at"]), r["job"] or "-", r["site"] or "-", r["input"] or "-", r["reason"])
        for r in snap.rejections
    ]
    sections = (
        _table(
            f"Jobs ({len(jobs)})",
            ("job", "protocol", "state", "analyst", "sites with shares", "closed with",
             "age", "reason"),
            jobs, "no job yet",
        ),
        _table(
            "Shares held, per job and site",
            ("job", "site", "inputs", "bytes", "last stored"), holdings, "no share held",
        ),
        _table(
            f"Recent rejections (last {len(rejections)} of {snap.rejected_total})",
            ("age", "job", "site", "input", "reason"), rejections, "none",
        ),
    )  # fmt: skip
    store = ", ".join(f"{k} {v} bytes" for k, v in snap.store_bytes.items())
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>smpc party {html.escape(page.party)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>smpc computing party {html.escape(page.party)}</h1>"
        f"<dl>{summary}<dt>store</dt><dd>{html.escape(store)}</dd></dl>"
        + "".join(sections)
        + f'<p class="none">read-only; generated {generated};'
        ' <a href="/metrics">metrics</a> · <a href="/healthz">health</a></p></body></html>'
    )


async def start_party_web(
    config: WebConfig | None, service: Any, broker: BrokerState, stopping: Callable[[], bool]
) -> asyncio.Server | None:
    """The operator page of ``service`` (a :class:`smpc.party.service.PartyService`) as the
    config's ``web:`` block says; None when the block is absent (the default)."""
    if config is None:
        return None
    kit = service.kit
    context = None
    if config.client_ca:
        # the party's MPyC certificate is its one certificate for server authentication
        cert, key = config.cert or kit.mpyc.cert, config.key or kit.mpyc.key
        context = server_tls_context(cert, key, client_ca=kit.tls.ca)
    page = PartyPage(
        party=kit.name, index=service.index, federation=lambda: service.federation,
        store=service.store.root, metrics=service.metrics, broker=broker,
        audit_head=lambda: (service.audit.count, service.audit.head), stopping=stopping,
    )  # fmt: skip
    return await start_web(config, page.routes(), context, kit.name)
