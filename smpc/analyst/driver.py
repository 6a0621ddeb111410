"""The one analyst driver: a whole run of a spec, whatever its protocol.

``smpc run``, ``smpc local`` and :func:`smpc.fl.train` all call
:func:`run_spec`. It asks the spec's protocol for its plan (:meth:`.Protocol.plan`), runs
each job the plan yields through :func:`smpc.analyst.jobs.run_job` and sends the outcome
back, so one job, FedAvg rounds and Newton rounds are one loop; then the protocol writes
the output files (:meth:`.Protocol.finalize`). Every job of a run shares the run's id:
``<run>`` plus the step's suffix (``-r3``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smpc.analyst.jobs import build_job, new_job_id, run_job
from smpc.config.federation import Federation
from smpc.errors import UserError
from smpc.pki.kit import Kit
from smpc.protocols.base import Outcome, RunContext
from smpc.protocols.registry import protocol
from smpc.wire.messages import Job


@dataclass
class Run:
    """A finished run: its spec (as completed), the protocol's result, every job's outcome,
    and the summary ``finalize`` returned (None without an output folder)."""

    id: str
    spec: Any
    result: Any
    outcomes: list[Outcome] = field(default_factory=list)
    summary: dict[str, Any] | None = None

    @property
    def sites(self) -> tuple[str, ...]:
        """Every site in any of the run's results, in the order they first appear."""
        return tuple(dict.fromkeys(s for o in self.outcomes for s in o.sites))


async def run_spec(
    kit: Kit,
    federation: Federation,
    spec: Any,
    *,
    out: Path | None = None,
    context: RunContext | None = None,
    upload_window: float = 120.0,
    timeout: float | None = None,
    on_job: Callable[[Job], Awaitable[None]] | None = None,
) -> Run:
    """Run ``spec`` through the federation; with ``out``, write its output files there.

    ``upload_window``: how long each job waits for uploads unless its step says
    otherwise; ``timeout`` (default the spec's): each job's limit. ``on_job`` is awaited
    with every job before it is published (``smpc local`` starts the uploads there).
    """
    family = protocol(spec.protocol)
    context = context or RunContext()
    spec = family.complete_spec(spec, context)
    run = Run(id=new_job_id(spec), spec=spec, result=None)
    plan = family.plan(spec, context)
    try:
        step = next(plan)
        while True:
            job = build_job(spec, kit, federation, step, job_id=run.id + step.suffix)
            if on_job is not None:
                await on_job(job)
            try:
                outcome = await run_job(
                    kit, federation, job,
                    upload_window=step.upload_window or upload_window,
                    timeout=spec.timeout if timeout is None else timeout,
                )  # fmt: skip
            except UserError as exc:
                if not step.label:
                    raise
                raise type(exc)(f"{step.label}: {exc}") from None
            run.outcomes.append(outcome)
            step = plan.send(outcome)
    except StopIteration as stop:
        run.result = stop.value
    if out is not None:
        run.summary = family.finalize(spec, run.result, out)
        _record_parties(out / "result.json", run)
    return run


def _record_parties(path: Path, run: Run) -> None:
    """Name in ``result.json`` the parties behind each job and the audit chain head each
    signed with its result: a party's log rewritten later no longer matches its head."""
    if not path.exists():
        return
    summary = json.loads(path.read_text())
    if not isinstance(summary, dict):
        return
    summary["parties"] = list(dict.fromkeys(p for o in run.outcomes for p in o.audit))
    summary["audit"] = {o.job.id: o.audit for o in run.outcomes}
    path.write_text(json.dumps(summary, indent=2) + "\n")
    if run.summary is not None:
        run.summary.update(parties=summary["parties"], audit=summary["audit"])


def write_outputs(spec: Any, result: Any, out: Path) -> dict[str, Any]:
    """The output files of a run's result (for one job: its :class:`Outcome`)."""
    return protocol(spec.protocol).finalize(spec, result, out)
