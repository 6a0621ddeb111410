"""Multi-round federated training over secure FedAvg: the Python API.

A spec with ``protocol: fedavg`` and ``rounds: R`` runs R jobs, ``<run>-r0`` …
``<run>-r<R-1>``. Job k carries the global model of round k-1 (round 0: the
analyst's initial model, or none) in the clear; every site answering it calls its
**trainer** on that model and shares ``num_examples · local model`` and
``num_examples`` as in one-round fedavg; the parties add the shares; the analyst
opens the weighted average, which becomes the next round's global model.

Each round closes when every site has uploaded to every party, or at its deadline
(``round_timeout`` seconds after the job is published) with the sites every party
holds, if at least ``min_sites`` did; fewer and training stops with that reason.
A site that missed a round's deadline simply answers the next round.

What is revealed: every round's global model (the weighted average of the local
models of that round's sites) and the total number of examples are public to the
sites, the parties and the analyst. No site's local model is opened.

Analyst side: :func:`train` (``smpc run`` and ``smpc local`` call it for
``rounds > 1``). Site side: :func:`answer_round` (``smpc site serve`` with
``trainer:`` in its config calls it for every fedavg job). A trainer is any
callable ``trainer(global_model, round) -> (local_model, num_examples)``; one that
takes a ``site`` keyword argument is given the site's name.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import inspect
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from smpc import log
from smpc.config.federation import Federation
from smpc.errors import UserError
from smpc.pki.kit import Kit
from smpc.wire.messages import Job, decode_model

logger = logging.getLogger("smpc.fl")

Model = dict[str, np.ndarray]
Trainer = Callable[[Model | None, int], tuple[Model, int]]


def load_trainer(
    ref: str, *, site: str | None = None, args: Mapping[str, Any] | None = None
) -> Trainer:
    """The trainer named ``module:function`` or ``path/to/file.py:function``.

    ``args`` are bound as keyword arguments; ``site`` is passed as ``site=`` when the
    function accepts it (so one function serves every site, each on its own data).
    """
    module_ref, sep, name = ref.rpartition(":")
    if not sep or not module_ref or not name:
        raise UserError(f"trainer {ref!r}: expected module:function or file.py:function")
    try:
        if module_ref.endswith(".py"):
            path = Path(module_ref).resolve()
            if not path.exists():
                raise UserError(f"trainer {ref!r}: no such file {path}")
            mod_name = f"smpc_trainer_{path.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            assert spec is not None and spec.loader is not None  # a .py path always has both
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_ref)
    except ImportError as exc:
        raise UserError(f"trainer {ref!r}: cannot import {module_ref}: {exc}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"trainer {ref!r}: {module_ref} has no function {name!r}")
    kwargs = dict(args or {})
    if site is not None and _accepts(function, "site"):
        kwargs["site"] = site
    return functools.partial(function, **kwargs) if kwargs else function


def _accepts(function: Callable, name: str) -> bool:
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


# -- site side -------------------------------------------------------------------------------


def local_update(job: Job, trainer: Trainer, site: str):
    """Run the trainer on the job's global model; the statistics the site shares."""
    from smpc.protocols.linear import fedavg_statistics
    from smpc.site.service import SiteData

    if job.protocol != "fedavg":
        raise UserError(f"job {job.id}: a trainer answers fedavg jobs, not {job.protocol}")
    model = None if job.model is None else decode_model(job.model)
    try:
        result = trainer(model, job.round)
    except UserError:
        raise
    except Exception as exc:
        logger.exception("trainer of site %s failed on job %s", site, job.id)
        raise UserError(f"site {site}: the trainer failed on {job.id}: {exc!r}") from None
    try:
        arrays, num_examples = result
        num_examples = int(num_examples)
    except (TypeError, ValueError):
        raise UserError(
            f"site {site}: the trainer must return (dict of arrays, num_examples), "
            f"got {type(result).__name__}"
        ) from None
    names = [i.name.removesuffix(".weighted") for i in job.inputs if i.name != "num_examples"]
    clip = (job.spec.get("dp") or {}).get("clip")
    stats = fedavg_statistics(
        names, arrays, num_examples, f"site {site}, trainer of {job.id}", clip=clip, base=model
    )
    return SiteData(stats, num_examples)


async def answer_round(
    kit: Kit, federation: Federation, job: Job, trainer: Trainer, *, timeout: float | None = None
):
    """Train on the job's global model (in a thread) and upload the update to every party."""
    from smpc.site.service import upload

    started = time.monotonic()
    data = await asyncio.to_thread(local_update, job, trainer, kit.name)
    log.event(
        logger, "local-update", job=job.id, round=job.round, site=kit.name,
        examples=data.records, seconds=f"{time.monotonic() - started:.2f}",
    )  # fmt: skip
    window = timeout if timeout is not None else float(job.spec.get("round_timeout", 120.0))
    return await upload(kit, federation, job, lambda _job: data, timeout=window)


# -- analyst side ----------------------------------------------------------------------------


async def train(
    kit: Kit,
    federation: Federation,
    spec: Any,
    *,
    initial_model: Mapping[str, np.ndarray] | None = None,
    out: Path | None = None,
    run_id: str | None = None,
    on_round: Callable[[int, Any], None] | None = None,
) -> tuple[Model, list[dict[str, Any]]]:
    """Run ``spec.rounds`` rounds of secure FedAvg; return the final model and the history.

    Round k is job ``<run_id>-r<k>`` with upload window ``spec.round_timeout`` and
    overall limit ``spec.timeout`` (each round). With ``out``, writes
    ``out/model.npz`` (the final global model), ``out/rounds/model-r<k>.npz`` and
    ``out/history.json`` (per round: job, sites, total examples, seconds).
    """
    from smpc.analyst.jobs import build_job, new_job_id, run_job
    from smpc.io.modelfile import write_model
    from smpc.protocols.linear import fedavg_model, noise_summary

    if spec.protocol != "fedavg":
        raise UserError(f"{spec.name}: multi-round training needs protocol fedavg")
    model = None if initial_model is None else {k: np.asarray(v) for k, v in initial_model.items()}
    if not spec.inputs:
        if model is None:
            raise UserError(
                f"{spec.name}: list the model's parameter arrays in the spec (inputs: [...]) "
                "or start from an initial model"
            )
        spec = spec.model_copy(update={"inputs": tuple(sorted(model))})
    run_id = run_id or new_job_id(spec)
    history: list[dict[str, Any]] = []
    if out is not None:
        (out / "rounds").mkdir(parents=True, exist_ok=True)
    for k in range(spec.rounds):
        started = time.monotonic()
        job = build_job(spec, kit, federation, job_id=f"{run_id}-r{k}", round=k, model=model)
        try:
            outcome = await run_job(
                kit, federation, job, upload_window=spec.round_timeout, timeout=spec.timeout
            )
        except UserError as exc:
            raise type(exc)(f"round {k + 1} of {spec.rounds}: {exc}") from None
        model, examples = fedavg_model(spec, outcome.opened, sites=len(outcome.sites), base=model)
        entry: dict[str, Any] = {
            "round": k,
            "job": job.id,
            "sites": list(outcome.sites),
            "num_examples": examples,
            "seconds": round(time.monotonic() - started, 3),
        }
        history.append(entry)
        log.event(logger, "round-done", **{**entry, "sites": ",".join(entry["sites"])})
        if out is not None:
            write_model(out / "rounds" / f"model-r{k}.npz", model)
        if on_round is not None:
            on_round(k, entry)
    assert model is not None  # spec.rounds >= 1
    if out is not None:
        write_model(out / "model.npz", model)
        write_model(out / "model.safetensors", model)
        summary = {"rounds": history, "arrays": {k: list(v.shape) for k, v in model.items()}}
        if spec.dp is not None:  # the accountant covers all rounds of the run
            summary["dp"] = noise_summary(spec, outcome.opened, job.n, job.t)
        (out / "history.json").write_text(json.dumps(summary, indent=2) + "\n")
    return model, history
