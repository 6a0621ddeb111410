"""What a party holds, for operators: ``smpc party status`` and ``smpc jobs``.

Both read the party's store only (no broker, no keys), so they work while the
daemon runs and after it stopped.
"""

from __future__ import annotations

import json
from collections import defaultdict

from rich.console import Console
from rich.table import Table

from smpc.party.store import PartyStore


def holdings(store: PartyStore) -> list[dict]:
    """One row per (job, site): the inputs stored, their bytes, the last arrival."""
    rows: dict[tuple[str, str], dict] = {}
    for share in store.shares():
        row = rows.setdefault(
            (share.job, share.site),
            {"job": share.job, "site": share.site, "inputs": [], "bytes": 0, "last_stored": 0.0},
        )
        row["inputs"].append(share.input)
        row["bytes"] += share.size
        row["last_stored"] = max(row["last_stored"], share.stored)
    return list(rows.values())


def jobs(store: PartyStore) -> list[dict]:
    """One row per job: its status and how many sites sent shares."""
    sites: dict[str, set[str]] = defaultdict(set)
    for share in store.shares():
        sites[share.job].add(share.site)
    rejected: dict[str, int] = defaultdict(int)
    for rejection in store.rejections():
        rejected[str(rejection["job"] or "-")] += 1
    return [
        {
            "job": job.id,
            "status": job.status,
            "received": job.received,
            "protocol": json.loads(job.message)["payload"]["protocol"],
            "sites": sorted(sites[job.id]),
            "rejected": rejected[job.id],
        }
        for job in store.jobs()
    ]


def print_rows(rows: list[dict], title: str, as_json: bool, console: Console | None = None) -> None:
    """A table for people, or JSON for scripts."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    console = console or Console()
    table = Table(title=title)
    columns = list(rows[0]) if rows else ["(nothing stored)"]
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(", ".join(v) if isinstance(v, list) else str(v) for v in row.values()))
    console.print(table)
