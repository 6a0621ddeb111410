"""Federated learning from Python: train through the federation, answer a round.

A spec with ``protocol: fedavg`` and ``rounds: R`` trains over R jobs
(:mod:`smpc.protocols.fedavg.protocol`). :func:`train` runs them as the analyst, through
the one analyst driver (:mod:`smpc.analyst.driver`), exactly as ``smpc run`` and
``smpc local`` do; :func:`answer_round` answers one round as a site, as ``smpc site
serve`` with ``trainer:`` in its config does for every round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from smpc.analyst.driver import run_spec
from smpc.config.federation import Federation
from smpc.errors import UserError
from smpc.pki.kit import Kit
from smpc.protocols.base import RunContext, SiteSource
from smpc.protocols.fedavg.training import Model, Trainer
from smpc.protocols.registry import parse_spec, protocol
from smpc.site.upload import UploadReport, upload
from smpc.wire.messages import Job


async def train(
    kit: Kit,
    federation: Federation,
    spec: Any,
    *,
    initial_model: Mapping[str, np.ndarray] | None = None,
    out: Path | None = None,
    on_round: Callable[[int, Any], None] | None = None,
) -> tuple[Model, list[dict[str, Any]]]:
    """Run ``spec.rounds`` rounds of secure FedAvg; return the final model and the history.

    Round k is job ``<run>-r<k>`` with upload window ``spec.round_timeout`` and overall
    limit ``spec.timeout`` (each round). With ``out``, writes ``out/model.npz`` (the final
    global model), ``out/rounds/model-r<k>.npz`` and ``out/history.json`` (per round: job,
    sites, total examples, seconds).
    """
    if not protocol(spec.protocol).trains:
        raise UserError(f"{spec.name}: multi-round training needs protocol fedavg")
    context = RunContext(initial_model=initial_model, training=True, out=out, on_round=on_round)
    run = await run_spec(kit, federation, spec, context=context, out=out)
    return run.result.model, run.result.history


async def answer_round(
    kit: Kit, federation: Federation, job: Job, trainer: Trainer, *, timeout: float | None = None
) -> UploadReport:
    """Train on the job's global model and upload the update to every party."""
    spec = parse_spec(job.spec, f"job {job.id}", federation)
    family = protocol(job.protocol)
    source = SiteSource(site=kit.name, trainer=trainer)
    window = timeout if timeout is not None else spec.round_timeout
    return await upload(
        kit, federation, job, lambda job: family.site_data(spec, job, source), timeout=window
    )
