"""Trainers: loading a site's trainer and running it on a round's global model.

A trainer is any callable ``trainer(global_model, round) -> (local_model, num_examples)``;
one that takes a ``site`` keyword argument is given the site's name. ``smpc site serve``
with ``trainer:`` in its config runs it for every fedavg job
(:meth:`.protocol.FedavgProtocol.site_data`); the Python API of training is
:mod:`smpc.fl`.
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
from smpc.errors import UserError

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


def run_trainer(
    trainer: Trainer, model: Model | None, round: int, site: str, job_id: str
) -> tuple[Model, int]:
    """The trainer's local model and number of examples for one round, checked."""
    started = time.monotonic()
    try:
        result = trainer(model, round)
    except UserError:
        raise
    except Exception as exc:
        logger.exception("trainer of site %s failed on job %s", site, job_id)
        raise UserError(f"site {site}: the trainer failed on {job_id}: {exc!r}") from None
    try:
        arrays, num_examples = result
        num_examples = int(num_examples)
    except (TypeError, ValueError):
        raise UserError(
            f"site {site}: the trainer must return (dict of arrays, num_examples), "
            f"got {type(result).__name__}"
        ) from None
    log.event(
        logger, "local-update", job=job_id, round=round, site=site,
        examples=num_examples, seconds=f"{time.monotonic() - started:.2f}",
    )  # fmt: skip
    return arrays, num_examples
