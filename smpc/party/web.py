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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from smpc.net.http import Response, Routes, WebConfig, server_tls_context, start_web
from smpc.net.webpage import BrokerState, age, document, health, table
from smpc.party.metrics import PartyMetrics

__all__ = ["PartyPage", "StoreReader", "page_html", "start_party_web"]

JOB_STATES = ("open", "computing", "done", "failed", "refused")
RECENT_REJECTIONS = 20
SHOWN = 200  # jobs on the page, the most recent first (with their holdings)


@dataclass(frozen=True)
class Snapshot:
    """What the page and the scrape show of the store, read at one moment."""

    jobs: list[dict[str, Any]]
    holdings: list[dict[str, Any]]
    rejections: list[dict[str, Any]]
    rejected_total: int
    store_bytes: dict[str, int]
    jobs_total: int


class StoreReader:
    """Reads a party store's metadata over a read-only connection (one per read)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _connect(self) -> sqlite3.Connection:
        uri = f"{(self.root / 'store.sqlite').resolve().as_uri()}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=5.0)

    def snapshot(self) -> Snapshot:
        """What the page shows: the last jobs, holdings and rejections, and the totals."""
        db = self._connect()
        try:
            return self._read(db)
        finally:
            db.close()

    def totals(self) -> tuple[dict[str, int], dict[str, int]]:
        """What a scrape reads: jobs by state and store bytes (two small queries)."""
        db = self._connect()
        try:
            return dict(db.execute(_STATES).fetchall()), self._store_bytes(db)
        finally:
            db.close()

    def _store_bytes(self, db: sqlite3.Connection) -> dict[str, int]:
        (share_bytes,) = db.execute("SELECT coalesce(sum(size), 0) FROM shares").fetchone()
        database = sum(p.stat().st_size for p in self.root.glob("store.sqlite*") if p.is_file())
        audit = self.root / "audit.jsonl"
        return {
            "shares": int(share_bytes),
            "database": database,
            "audit": audit.stat().st_size if audit.exists() else 0,
        }

    def _read(self, db: sqlite3.Connection) -> Snapshot:
        held: dict[str, list[str]] = {}
        holdings = []
        for job, site, inputs, size, last in db.execute(_HOLDINGS, (SHOWN,)):
            held.setdefault(job, []).append(site)
            holdings.append(
                {"job": job, "site": site, "inputs": sorted(str(inputs).split("\x1f")),
                 "bytes": size, "last": last}
            )  # fmt: skip
        jobs = []
        for job_id, received, status, analyst, protocol, closed, reason in db.execute(
            _JOBS, (SHOWN,)
        ):
            jobs.append(
                {
                    "job": job_id, "status": status, "analyst": analyst, "received": received,
                    "protocol": str(protocol or "?"),
                    "sites": sorted(held.get(job_id, [])),
                    "closed": _names(closed) if closed is not None else None,
                    "reason": str(reason or ""),
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
        (jobs_total,) = db.execute("SELECT count(*) FROM jobs").fetchone()
        return Snapshot(
            jobs, holdings, rejections, int(rejected_total), self._store_bytes(db), jobs_total
        )


# Only public fields of the signed messages the store holds are read, inside SQLite.
_JOBS = """
SELECT id, received, status, analyst,
       json_extract(CAST(message AS TEXT), '$.payload.protocol'),
       json_extract(CAST(closed AS TEXT), '$.payload.close'),
       (SELECT json_extract(CAST(body AS TEXT), '$.payload.reason') FROM releases
        WHERE releases.job = jobs.id AND position = 0)
FROM jobs ORDER BY received DESC LIMIT ?
"""
_HOLDINGS = """
SELECT job, site, group_concat(input, char(31)), sum(size), max(stored) FROM shares
WHERE job IN (SELECT id FROM jobs ORDER BY received DESC LIMIT ?)
GROUP BY job, site ORDER BY job, site
"""
_STATES = "SELECT status, count(*) FROM jobs GROUP BY status"


def _names(value: str) -> list[str]:
    """The site names of a close, as ``json_extract`` gives the array."""
    try:
        names = json.loads(value)
    except ValueError:
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


class _StoreCollector(Collector):
    """Gauges read at scrape time: jobs by state, store bytes, broker link, audit entries."""

    def __init__(self, page: PartyPage) -> None:
        self.page = page

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states, store_bytes = self.page.reader.totals()
        jobs = GaugeMetricFamily("smpc_jobs", "Jobs this party knows, by state", labels=["state"])
        for state, count in {**dict.fromkeys(JOB_STATES, 0), **states}.items():
            jobs.add_metric([state], count)
        yield jobs
        store = GaugeMetricFamily(
            "smpc_store_bytes", "Bytes in the party's store directory", labels=["part"]
        )
        for part, size in store_bytes.items():
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
        return page_html(self, snap, time.time())

    async def scrape(self) -> Response:
        body = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return Response(200, body, CONTENT_TYPE_LATEST)

    async def healthz(self) -> Response:
        """200 while the loop answers and the broker is connected; 503 with the reason."""
        return health(f"party {self.party}", self.broker, self.stopping)


def page_html(page: PartyPage, snap: Snapshot, now: float) -> Response:
    """The status page: metadata only (names, states, counts, sizes, reasons, one hash)."""
    federation = page.federation()
    entries, head = page.audit_head()
    sites = ", ".join(s.name for s in federation.sites)
    store = ", ".join(f"{k} {v} bytes" for k, v in snap.store_bytes.items())
    facts = (
        ("party", html.escape(f"{page.party} (MPyC index {page.index})")),
        ("federation", html.escape(
            f"{federation.name}: parties {', '.join(federation.party_names)}; sites {sites}; "
            f"threshold t = {federation.threshold}"
        )),
        ("broker", html.escape(f"{federation.broker.host}:{federation.broker.port}")),
        ("broker link", page.broker.html(now)),
        ("audit chain", f"{entries} entries, head <code>{html.escape(head)}</code>"),
        ("store", html.escape(store)),
    )  # fmt: skip
    jobs = [
        (
            j["job"], j["protocol"], j["status"], j["analyst"],
            ", ".join(j["sites"]) or "none",
            "-" if j["closed"] is None else ", ".join(j["closed"]),
            age(now - j["received"]), j["reason"] or "-",
        )
        for j in snap.jobs
    ]  # fmt: skip
    holdings = [
        (h["job"], h["site"], ", ".join(h["inputs"]), h["bytes"], age(now - h["last"]))
        for h in snap.holdings
    ]
    rejections = [
        (age(now - r["at"]), r["job"] or "-", r["site"] or "-", r["input"] or "-", r["reason"])
        for r in snap.rejections
    ]
    shown = f", the last {len(jobs)}" if snap.jobs_total > len(jobs) else ""
    sections = (
        table(
            f"Jobs ({snap.jobs_total}{shown})",
            ("job", "protocol", "state", "analyst", "sites with shares", "closed with",
             "age", "reason"),
            jobs, "no job yet",
        ),
        table(
            "Shares held, per job and site",
            ("job", "site", "inputs", "bytes", "last stored"), holdings, "no share held",
        ),
        table(
            f"Recent rejections (last {len(rejections)} of {snap.rejected_total})",
            ("age", "job", "site", "input", "reason"), rejections, "none",
        ),
    )  # fmt: skip
    return document(f"smpc computing party {page.party}", facts, sections, now)


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
