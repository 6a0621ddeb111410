"""Federated averaging: ``protocol: fedavg``, one round or many.

A site's .npz holds named parameter arrays and a scalar ``num_examples`` (Flower's name).
The site shares ``<array>.weighted`` = num_examples · array for every array, and
``num_examples``; the analyst opens both sums and divides: the weighted average of the
models, as FedAvg.

A spec with ``rounds: R`` (or a run with a trainer) trains: R jobs ``<run>-r0`` …
``<run>-r<R-1>``, job k carrying the global model of round k-1 in the clear (round 0: the
analyst's initial model, or none). Every site answering it calls its trainer on that
model (:mod:`.training`) and shares as above; the opened average becomes the next
round's global model. Each round closes when every site has uploaded to every party, or
at its deadline (``round_timeout`` seconds after the job is published) with the sites
every party holds, if at least ``min_sites`` did; fewer and training stops with that
reason. A site that missed a round's deadline simply answers the next round.

Revealed: to the analyst the pooled weighted parameter sums and the total number of
examples; in training, every round's global model to the sites, the parties and the
analyst. Nothing per site.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from smpc import log
from smpc.config.federation import Federation
from smpc.config.spec import SpecFile
from smpc.core.dp import clip_update
from smpc.errors import UserError
from smpc.io.modelfile import read_model, write_model
from smpc.protocols.base import Outcome, Payload, Plan, RunContext, SiteData, SiteSource, Step
from smpc.protocols.fedavg.training import run_trainer
from smpc.protocols.linear import COUNT_BITS, LinearProtocol, LinearSpec, reader
from smpc.wire.messages import MAX_MODEL_BYTES, Job, JobInput, decode_model, encode_model

logger = logging.getLogger("smpc.fl")

NUM_EXAMPLES = "num_examples"
"""The scalar every fedavg site sends as its weight; never a model array."""


class FedavgSpec(LinearSpec):
    """A resolved ``protocol: fedavg`` spec; ``inputs`` None: every array of the site's
    model file but ``num_examples``."""

    protocol: Literal["fedavg"]
    rounds: int = 1

    @property
    def rounds_of_noise(self) -> int:
        return self.rounds


class FedavgPayload(Payload):
    """A fedavg job's round index and the previous round's global model (public): base64
    of an .npz, at most MAX_MODEL_BYTES (None in round 0 without an initial model)."""

    round: int = Field(default=0, ge=0)
    model: str | None = Field(default=None, max_length=4 * ((MAX_MODEL_BYTES + 2) // 3))

    def arrays(self) -> dict[str, np.ndarray] | None:
        return None if self.model is None else decode_model(self.model)


@dataclass
class Training:
    """A training run's result: the final global model, the rounds, the last outcome."""

    model: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    last: Outcome


class FedavgProtocol(LinearProtocol):
    name: ClassVar[str] = "fedavg"
    spec_model = FedavgSpec
    payload_model = FedavgPayload
    reveals = ("model",)
    default_reveal = ("model",)
    uses = frozenset({"inputs", "dp", "rounds"})
    extra_inputs = (NUM_EXAMPLES,)
    trains = True

    def local_problem(self, spec: Any, trainer: bool) -> str:
        if spec.rounds > 1 and not trainer:
            return (
                f"{spec.name}: rounds: {spec.rounds} needs a trainer (--trainer module:function) "
                "that trains each site's model on the previous round's global model"
            )
        return ""

    def resolve(
        self,
        raw: SpecFile,
        common: dict[str, Any],
        federation: Federation | None,
        problem: Callable[[str, str], None],
    ) -> dict[str, Any]:
        inputs: tuple[str, ...] | None = None
        if raw.inputs is not None:
            if not raw.inputs:
                problem(
                    "inputs",
                    "empty: list the model arrays to average, or drop inputs to average every "
                    f"array of the site's .npz except {NUM_EXAMPLES}",
                )
            elif NUM_EXAMPLES in raw.inputs:
                problem(
                    "inputs",
                    f"{NUM_EXAMPLES} is each site's weight and is always sent: remove it from "
                    "inputs",
                )
            else:
                inputs = tuple(raw.inputs)
        return {
            "inputs": inputs,
            "rounds": raw.rounds or 1,
            **self.resolve_linear(raw, common, federation, problem),
        }

    def complete_spec(self, spec: Any, context: RunContext) -> Any:
        """Without ``inputs``: the arrays of the initial model, or of the first site's file."""
        if spec.inputs:
            return spec
        if context.initial_model is not None:
            return spec.model_copy(update={"inputs": tuple(sorted(context.initial_model))})
        if context.site_files:
            names = tuple(sorted(read_model(context.site_files[0])[0]))
            return spec.model_copy(update={"inputs": names})
        if self.is_training(spec, context):
            raise UserError(
                f"{spec.name}: list the model's parameter arrays in the spec (inputs: [...]) "
                "or start from an initial model"
            )
        return spec

    def is_training(self, spec: Any, context: RunContext) -> bool:
        return spec.rounds > 1 or context.training

    def jobs_per_run(self, spec: Any) -> int:
        return spec.rounds

    # --- analyst ------------------------------------------------------------------------

    def job_inputs(self, spec: Any) -> tuple[JobInput, ...]:
        if not spec.inputs:
            raise UserError("fedavg: the job needs the parameter names (spec key inputs)")
        f, b = spec.encoding.frac_bits, spec.encoding.int_bits
        dp = spec.dp is not None  # the weighted sums get noise; the weights stay exact
        weighted = [
            JobInput(name=f"{a}.weighted", frac_bits=f, int_bits=b, noised=dp) for a in spec.inputs
        ]
        return (*weighted, JobInput(name=NUM_EXAMPLES, frac_bits=0, int_bits=COUNT_BITS))

    def plan(self, spec: Any, context: RunContext) -> Plan:
        if not self.is_training(spec, context):
            only = yield Step(inputs=self.job_inputs(spec), payload=FedavgPayload())
            return only
        model = context.initial_model
        model = None if model is None else {k: np.asarray(v) for k, v in model.items()}
        history: list[dict[str, Any]] = []
        if context.out is not None:
            (context.out / "rounds").mkdir(parents=True, exist_ok=True)
        outcome: Outcome | None = None
        for k in range(spec.rounds):
            started = time.monotonic()
            outcome = yield Step(
                inputs=self.job_inputs(spec),
                payload=FedavgPayload(
                    round=k, model=None if model is None else encode_model(model)
                ),
                suffix=f"-r{k}",
                upload_window=spec.round_timeout,
                label=f"round {k + 1} of {spec.rounds}",
            )
            model, examples = self.average(
                spec, outcome.opened, sites=len(outcome.sites), base=model
            )
            entry: dict[str, Any] = {
                "round": k,
                "job": outcome.job.id,
                "sites": list(outcome.sites),
                "num_examples": examples,
                "seconds": round(time.monotonic() - started, 3),
            }
            history.append(entry)
            log.event(logger, "round-done", **{**entry, "sites": ",".join(entry["sites"])})
            if context.out is not None:
                write_model(context.out / "rounds" / f"model-r{k}.npz", model)
            if context.on_round is not None:
                context.on_round(k, entry)
        assert model is not None and outcome is not None  # spec.rounds >= 1
        return Training(model, history, outcome)

    def finalize(self, spec: Any, result: Outcome | Training, out: Path) -> dict[str, Any]:
        """``model.npz`` and ``model.safetensors``; ``result.json`` for one job, or
        ``history.json`` (every round) for training."""
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(result, Training):
            write_model(out / "model.npz", result.model)
            write_model(out / "model.safetensors", result.model)
            summary = {
                "rounds": result.history,
                "arrays": {k: list(v.shape) for k, v in result.model.items()},
                **self.dp_summary(spec, result.last),  # the accountant covers every round
            }
            (out / "history.json").write_text(json.dumps(summary, indent=2) + "\n")
            return summary
        model, n = self.average(spec, result.opened, sites=len(result.sites))
        write_model(out / "model.npz", model)
        write_model(out / "model.safetensors", model)
        summary = {
            "num_examples": n,
            "arrays": {k: list(v.shape) for k, v in model.items()},
            **self.dp_summary(spec, result),
        }
        (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def average(
        self,
        spec: Any,
        opened: dict[str, np.ndarray],
        *,
        sites: int | None = None,
        base: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], int]:
        """The weighted average of the sites' models, and the total number of examples.

        With dp the sites' (noised, clipped) updates are averaged over the ``sites`` and
        added to the round's global model ``base``.
        """
        n = int(opened[NUM_EXAMPLES])
        if n <= 0:
            raise UserError("fedavg: the sites reported no training examples")
        if spec.dp is None:
            return {name: opened[f"{name}.weighted"] / n for name in spec.inputs}, n
        if not sites:
            raise UserError("fedavg with dp: the number of sites in the result is needed")
        model = {name: opened[f"{name}.weighted"] / sites for name in spec.inputs}
        if base is not None:
            model = {k: np.asarray(base[k], np.float64) + v for k, v in model.items()}
        return model, n

    # --- site ---------------------------------------------------------------------------

    def site_data(self, spec: Any, job: Job, source: SiteSource) -> SiteData:
        if source.trainer is None:
            return super().site_data(spec, job, source)
        payload = self.payload(job)
        base = payload.arrays()
        arrays, n = run_trainer(source.trainer, base, payload.round, source.site, job.id)
        names = [i.name.removesuffix(".weighted") for i in job.inputs if i.name != NUM_EXAMPLES]
        clip = None if spec.dp is None else spec.dp.clip
        where = f"site {source.site}, trainer of {job.id}"
        stats = fedavg_statistics(names, arrays, n, where, clip=clip, base=base)
        return SiteData(stats, n)

    def statistics(
        self, spec: Any, job: Job, source: Path | Mapping[str, str]
    ) -> dict[str, np.ndarray]:
        base = self.payload(job).arrays()
        clip = None if spec.dp is None else spec.dp.clip
        read, sources, where = reader(source)
        if sources:
            arrays = {name: read(name) for name in spec.inputs}
            weight = read(NUM_EXAMPLES)
            if weight.size != 1 or (weight.dtype.kind not in "iu" and weight.flat[0] % 1):
                raise UserError(f"{sources[NUM_EXAMPLES]}: num_examples must be one integer")
            return fedavg_statistics(
                spec.inputs, arrays, int(weight.flat[0]), where, clip=clip, base=base
            )
        assert isinstance(source, Path)
        arrays, n = read_model(source)  # .npz, .safetensors or a PyTorch state dict
        if n is None:
            raise UserError(f"{source}: no scalar num_examples (the site's weight)")
        return fedavg_statistics(spec.inputs, arrays, n, str(source), clip=clip, base=base)

    def declared_records(self, spec: Any, stats: dict[str, np.ndarray]) -> int:
        return int(stats[NUM_EXAMPLES])


def fedavg_statistics(
    names: Any,
    arrays: Any,
    num_examples: int,
    source: str,
    *,
    clip: float | None = None,
    base: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """What a site shares for fedavg: ``num_examples · array`` per parameter, and the count.

    With dp (``clip``) every site weighs 1 and shares its update from the global model
    ``base`` (the model itself in a first round), clipped to L2 norm ``clip``.
    """
    n = int(num_examples)
    if n < 0:
        raise UserError(f"{source}: num_examples must be one non-negative integer")
    if n >= 2**COUNT_BITS:
        raise UserError(
            f"{source}: num_examples {n:.3g} is not a number of examples (below 2^{COUNT_BITS})"
        )
    stats: dict[str, np.ndarray] = {NUM_EXAMPLES: np.array(n, dtype=np.int64)}
    values = {}
    for name in names:
        if name not in arrays:
            raise UserError(f"{source}: no parameter array {name!r}")
        value = np.asarray(arrays[name])
        if value.dtype.kind not in "biuf" or not np.all(np.isfinite(value)):
            raise UserError(f"{source}: parameter {name!r} must be finite numbers")
        values[name] = value
    if clip is None:
        for name, value in values.items():
            stats[f"{name}.weighted"] = value.astype(np.float64) * n
        return stats
    if base is not None:
        values = {k: v - np.asarray(base[k], np.float64) for k, v in values.items()}
    for name, value in clip_update(values, clip).items():
        stats[f"{name}.weighted"] = value
    return stats
