"""A site agent's operator page: ``/`` (HTML status), ``/metrics`` and ``/healthz``.

Served by :func:`smpc.net.http.start_web` when the site config has a ``web:`` block. It
shows the site, its federation, the broker link, and the jobs the agent handled with
their outcome and reason (uploaded, skipped, failed) and the ids it answered. It never
shows the site's data, its shares or envelopes, or a key.
"""

from __future__ import annotations

import asyncio
import html
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from smpc.errors import UserError
from smpc.net.http import Response, Routes, WebConfig, server_tls_context, start_web
from smpc.net.webpage import BrokerState, age, document, health, table

__all__ = ["OUTCOMES", "SiteActivity", "start_site_web"]

OUTCOMES = ("uploaded", "skipped", "failed")
RECENT = 50


class SiteActivity:
    """What the site agent did, job by job: counters and the last :data:`RECENT` jobs."""

    def __init__(self, answered: set[str]) -> None:
        self.answered = answered  # the daemon's own set (ids only)
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = Counter(
            "smpc_site_jobs", "Jobs this site agent handled, by outcome", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        for outcome in OUTCOMES:
            self.jobs.labels(outcome=outcome)
        self.bytes_sent = Counter(
            "smpc_site_upload_sent_bytes", "Bytes of envelopes this site published",
            registry=self.registry,
        )  # fmt: skip
        self.recent: deque[tuple[float, str, str, str, str]] = deque(maxlen=RECENT)
        self._lock = threading.Lock()

    def record(self, job: str, protocol: str, outcome: str, reason: str = "") -> None:
        self.jobs.labels(outcome=outcome).inc()
        with self._lock:
            self.recent.append((time.time(), job, protocol, outcome, reason))

    def sent(self, size: int) -> None:
        self.bytes_sent.inc(size)

    def rows(self) -> list[tuple[float, str, str, str, str]]:
        with self._lock:
            return list(reversed(self.recent))


class _Gauges(Collector):
    def __init__(self, activity: SiteActivity, broker: BrokerState) -> None:
        self.activity, self.broker = activity, broker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "smpc_site_answered_jobs", "Job ids this site has answered (kept in its state file)",
            value=len(self.activity.answered),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "smpc_broker_connected", "1 while the agent is connected to the broker",
            value=int(self.broker.connected),
        )  # fmt: skip


async def start_site_web(
    config: WebConfig | None,
    *,
    keys: Any,
    activity: SiteActivity,
    broker: BrokerState,
    stopping: Callable[[], bool],
) -> asyncio.Server | None:
    """The site's page as the config's ``web:`` block says (None: no block, the default).

    ``keys`` holds the site's current ``kit`` and ``federation`` (replaced on SIGHUP).
    """
    if config is None:
        return None
    context = None
    if config.client_ca:
        if config.cert is None or config.key is None:
            raise UserError(
                "web: client_ca needs cert and key: a site has no server certificate of its "
                "own (give the page's certificate and key for its host name)"
            )
        context = server_tls_context(config.cert, config.key, client_ca=keys.kit.tls.ca)
    name = keys.kit.name
    activity.registry.register(_Gauges(activity, broker))

    async def index() -> Response:
        now, federation = time.time(), keys.federation
        facts = (
            ("site", html.escape(name)),
            ("federation", html.escape(
                f"{federation.name}: parties {', '.join(federation.party_names)}; "
                f"threshold t = {federation.threshold}"
            )),
            ("broker", html.escape(f"{federation.broker.host}:{federation.broker.port}")),
            ("broker link", broker.html(now)),
            ("jobs answered", html.escape(", ".join(sorted(activity.answered)) or "none")),
        )  # fmt: skip
        rows = [
            (age(now - at), job, protocol, outcome, reason or "-")
            for at, job, protocol, outcome, reason in activity.rows()
        ]
        section = table(
            f"Jobs handled since the agent started (last {len(rows)})",
            ("age", "job", "protocol", "outcome", "reason"), rows, "no job yet",
        )  # fmt: skip
        return document(f"smpc site {name}", facts, [section], now)

    async def scrape() -> Response:
        body = await asyncio.to_thread(generate_latest, activity.registry)
        return Response(200, body, CONTENT_TYPE_LATEST)

    async def healthz() -> Response:
        return health(f"site {name}", broker, stopping)

    routes: Routes = {"/": index, "/metrics": scrape, "/healthz": healthz}
    return await start_web(config, routes, context, name)
