"""Training with secure FedAvg: trainers at the sites, and the analyst's Python API.

A trainer is any callable ``trainer(global_model, round) -> (local_model, num_examples)``;
one that takes a ``site`` keyword argument is given the site's name. Site side:
:func:`local_update` (``smpc site serve`` with ``trainer:`` in its config runs it for
every fedavg job, through :meth:`.protocol.FedavgProtocol.site_data`) and
:func:`answer_round`. Analyst side: :func:`train`, which runs the rounds through the one
analyst driver (:mod:`smpc.analyst.driver`), as ``smpc run`` and ``smpc local`` do. The
rounds themselves are :meth:`.protocol.FedavgProtocol.plan`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
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
from smpc.pki.keys import Kit
from smpc.protocols.base import SiteData
from smpc.wire.messages import Job

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


def local_update(job: Job, payload: Any, spec: Any, trainer: Trainer, site: str) -> SiteData:
    """Run the trainer on the job's global model; the statistics the site shares."""
    from smpc.protocols.fedavg.protocol import fedavg_statistics

    started = time.monotonic()
    model = payload.arrays()
    try:
        result = trainer(model, payload.round)
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
    clip = None if spec.dp is None else spec.dp.clip
    stats = fedavg_statistics(
        names, arrays, num_examples, f"site {site}, trainer of {job.id}", clip=clip, base=model
    )
    log.event(
        logger, "local-update", job=job.id, round=payload.round, site=site,
        examples=num_examples, seconds=f"{time.monotonic() - started:.2f}",
    )  # fmt: skip
    return SiteData(stats, num_examples)


# -- analyst side ----------------------------------------------------------------------------


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
    from smpc.analyst.driver import run_spec
    from smpc.protocols.base import RunContext

    if spec.protocol != "fedavg":
        raise UserError(f"{spec.name}: multi-round training needs protocol fedavg")
    context = RunContext(initial_model=initial_model, training=True, out=out, on_round=on_round)
    run = await run_spec(kit, federation, spec, context=context, out=out)
    return run.result.model, run.result.history


async def answer_round(
    kit: Kit, federation: Federation, job: Job, trainer: Trainer, *, timeout: float | None = None
) -> Any:
    """Train on the job's global model and upload the update to every party (a site's
    answer to one round from Python; ``smpc site serve`` does the same for every round)."""
    from smpc.protocols.base import SiteSource
    from smpc.protocols.registry import parse_spec, protocol
    from smpc.site.service import upload

    spec = parse_spec(job.spec, f"job {job.id}", federation)
    family = protocol(job.protocol)
    source = SiteSource(site=kit.name, trainer=trainer)
    window = timeout if timeout is not None else spec.round_timeout
    return await upload(
        kit, federation, job, lambda job: family.site_data(spec, job, source), timeout=window
    )
