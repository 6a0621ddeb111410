"""What every daemon's operator page shares: the broker link's state, ``/healthz``, and
the HTML pieces (every value escaped; no script, no resource from elsewhere)."""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from smpc.net.http import Response

__all__ = ["BrokerState", "age", "document", "health", "table"]


@dataclass
class BrokerState:
    """What a daemon knows of its broker link (set from its message loop)."""

    connected: bool = False
    since: float = field(default_factory=time.time)
    reason: str = "not connected yet"

    def up(self) -> None:
        self.connected, self.since, self.reason = True, time.time(), ""

    def down(self, reason: str) -> None:
        if self.connected or reason != self.reason:
            self.since = time.time()
        self.connected, self.reason = False, reason

    def html(self, now: float) -> str:
        if self.connected:
            return f'<span class="up">connected</span> for {age(now - self.since)}'
        return (
            f'<span class="down">not connected</span> for {age(now - self.since)}: '
            f"{html.escape(self.reason)}"
        )


def health(who: str, broker: BrokerState, stopping: Callable[[], bool]) -> Response:
    """``/healthz``: 200 while the daemon's loop answers (this runs on it) and its broker
    is connected; 503 naming why not."""
    if stopping():
        return Response(503, f"{who}: stopping\n".encode())
    if not broker.connected:
        reason = broker.reason or "not connected"
        return Response(503, f"{who}: broker not connected: {reason}\n".encode())
    return Response(200, f"ok: {who}, broker connected\n".encode())


def age(seconds: float) -> str:
    """``12 s``, ``5 min``, ``3.2 h``, ``2.0 d``."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def table(title: str, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]], empty: str) -> str:
    """A titled table; every cell escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    if not body:
        body = f'<tr><td colspan="{len(columns)}" class="none">{html.escape(empty)}</td></tr>'
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


def document(
    title: str, facts: Iterable[tuple[str, str]], sections: Iterable[str], now: float
) -> Response:
    """The whole page: a heading, ``facts`` (name, HTML already escaped) and ``sections``."""
    summary = "".join(f"<dt>{html.escape(k)}</dt><dd>{v}</dd>" for k, v in facts)
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><dl>{summary}</dl>"
        + "".join(sections)
        + f'<p class="none">read-only; generated {generated};'
        ' <a href="/metrics">metrics</a> · <a href="/healthz">health</a></p></body></html>'
    )
    return Response(200, page.encode(), "text/html; charset=utf-8")
