"""Linear protocols: secure sum (with count and mean) and federated averaging.

Both need no secure multiplication, so they never go through MPyC one object
per element: every site shares its local sufficient statistics, every party
adds the shares of the agreed sites in GF(2^61 − 1) and sends its one summed
share per output to the analyst, who reconstructs. What each side computes:

``sum`` — for every input (a CSV column, or an .npy/.npz array whose first axis
is the records), the site shares ``<input>.sum`` (Σ over its records; an empty
CSV cell is missing and left out) and ``<input>.count`` (its records with a
value). The analyst opens the pooled sum and count and derives the mean.

``fedavg`` — a site's .npz holds named parameter arrays and a scalar
``num_examples`` (Flower's name). The site shares ``<array>.weighted`` =
num_examples · array for every array, and ``num_examples``; the analyst opens
both sums and divides: the weighted average of the models, as FedAvg.

Revealed to the analyst: the pooled sums and counts (``sum``), the pooled
weighted parameter sums and the total number of examples (``fedavg``); nothing
per site. The parties see only shares.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

from smpc.core.dp import clip_rows, clip_update
from smpc.core.dp import plan as dp_plan
from smpc.errors import UserError
from smpc.io.inputs import exceeds, read_input
from smpc.io.modelfile import read_model, write_model
from smpc.wire.messages import JobInput

COUNT_BITS = 40  # record counts below 2^40
LARGE = 10_000  # arrays with more elements go to .npy files next to result.json


def job_inputs(spec: Any) -> tuple[JobInput, ...]:
    """The shared arrays every site uploads for this spec."""
    f, b = spec.encoding.frac_bits, spec.encoding.int_bits
    dp = spec.dp is not None  # the sums get noise; counts and weights stay exact
    if spec.protocol == "sum":
        out = []
        for name in spec.inputs:
            out += [JobInput(name=f"{name}.sum", frac_bits=f, int_bits=b, noised=dp)]
            out += [JobInput(name=f"{name}.count", frac_bits=0, int_bits=COUNT_BITS)]
        return tuple(out)
    if spec.protocol == "fedavg":
        if not spec.inputs:
            raise UserError("fedavg: the job needs the parameter names (spec key inputs)")
        weighted = [
            JobInput(name=f"{a}.weighted", frac_bits=f, int_bits=b, noised=dp) for a in spec.inputs
        ]
        return (*weighted, JobInput(name="num_examples", frac_bits=0, int_bits=COUNT_BITS))
    raise UserError(f"protocol {spec.protocol!r} is not a linear protocol")


def fedavg_parameter_names(path: Path) -> tuple[str, ...]:
    """The parameter arrays of a site's model file (everything but num_examples)."""
    return tuple(sorted(read_model(path)[0]))


def site_statistics(
    spec: Any, source: Path | Mapping[str, str], base: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """A site's local sufficient statistics for the spec, from its data file.

    ``source`` is one data file (a CSV with the spec's columns, a model file), or one
    source per spec input (``FILE.csv:COLUMN``, ``FILE.npz:ARRAY``, as a site's
    ``inputs:`` or ``smpc upload --input`` name them; fedavg's weight is the input
    ``num_examples``). ``base`` is the round's global model (fedavg): with dp the site
    shares its clipped update from it (:mod:`smpc.core.dp`).
    """
    clip = None if spec.dp is None else spec.dp.clip
    if isinstance(source, Mapping):
        sources = dict(source)
        where = ", ".join(sorted({s.rpartition(":")[0] or s for s in sources.values()}))
    else:
        sources = {}
        where = str(source)

    def read(name: str, **kwargs: Any) -> np.ndarray:
        return read_input(sources.get(name, where), name, **kwargs)

    if spec.protocol == "sum":
        stats = {}
        bound = 2.0**spec.encoding.int_bits
        for name in spec.inputs:
            # a value beyond the encoding's range is refused at its row (dp clips it instead)
            values = read(name, missing_ok=True, bound=bound if clip is None else None)
            if values.ndim == 0:
                values = values.reshape(1)
            present = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(values.shape, bool)
            values = np.where(present, values, 0)
            if clip is not None:  # one record moves the sum by at most clip (L2)
                values = clip_rows(values, clip)
            stats[f"{name}.sum"] = values.sum(axis=0)
            if np.any(np.abs(stats[f"{name}.sum"]) >= bound):
                total = float(np.max(np.abs(stats[f"{name}.sum"])))
                where_ = sources.get(name, where)
                raise UserError(f"{where_}: input {name!r}: the sum {exceeds(total, bound)}")
            stats[f"{name}.count"] = present.sum(axis=0).astype(np.int64)
        return stats
    if spec.protocol == "fedavg" and sources:
        arrays = {name: read(name) for name in spec.inputs}
        weight = read("num_examples")
        if weight.size != 1 or (weight.dtype.kind not in "iu" and weight.flat[0] % 1):
            raise UserError(f"{sources['num_examples']}: num_examples must be one integer")
        return fedavg_statistics(
            spec.inputs, arrays, int(weight.flat[0]), where, clip=clip, base=base
        )
    if spec.protocol == "fedavg":
        assert not isinstance(source, Mapping)  # per-input sources were answered above
        arrays, n = read_model(source)  # .npz, .safetensors or a PyTorch state dict
        if n is None:
            raise UserError(f"{source}: no scalar num_examples (the site's weight)")
        return fedavg_statistics(spec.inputs, arrays, n, str(source), clip=clip, base=base)
    raise UserError(f"protocol {spec.protocol!r} is not a linear protocol")


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
    stats: dict[str, np.ndarray] = {"num_examples": np.array(n, dtype=np.int64)}
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


def declared_records(spec: Any, stats: dict[str, np.ndarray]) -> int:
    """How many records a site's statistics summarise (declared to the parties)."""
    if spec.protocol == "sum":
        return max(int(np.max(stats[f"{name}.count"], initial=0)) for name in spec.inputs)
    return int(stats["num_examples"])


def noise_summary(spec: Any, opened: dict[str, np.ndarray], parties: int, t: int) -> dict:
    """The dp guarantee and noise of the opened outputs, for result.json."""
    noised = [v for i, v in opened.items() if i.endswith((".sum", ".weighted"))]
    plan = dp_plan(
        spec.dp,
        [np.shape(v) for v in noised],
        parties=parties,
        threshold=t,
        frac_bits=spec.encoding.frac_bits,
        compositions=spec.rounds,
    )
    return plan.summary()


def finalize(
    spec: Any,
    opened: dict[str, np.ndarray],
    out: Path,
    *,
    sites: int | None = None,
    dp: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn the opened pooled statistics into the output files; return the summary.

    ``sites`` is the number of sites in the result (dp fedavg averages over sites);
    ``dp`` the noise summary (:func:`noise_summary`) that result.json reports.
    """
    out.mkdir(parents=True, exist_ok=True)
    extra = {} if dp is None else {"dp": dp}
    if spec.protocol == "sum":
        result: dict[str, Any] = {}
        for name in spec.inputs:
            total, count = opened[f"{name}.sum"], opened[f"{name}.count"]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
            stats = {"sum": total, "count": count, "mean": mean}
            result[name] = {
                stat: _value(value, out / f"{spec.name}.{name}.{stat}.npy")
                for stat, value in stats.items()
                if stat in spec.reveal
            }
        result.update(extra)
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        return result
    model, n = fedavg_model(spec, opened, sites=sites)
    write_model(out / "model.npz", model)
    write_model(out / "model.safetensors", model)
    summary = {"num_examples": n, "arrays": {k: list(v.shape) for k, v in model.items()}, **extra}
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def fedavg_model(
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
    n = int(opened["num_examples"])
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


def _value(value: np.ndarray, path: Path) -> Any:
    """Small results inline in result.json; large ones as .npy, named in result.json."""
    value = np.asarray(value)
    if value.size > LARGE:
        np.save(path, value)
        return {"file": path.name, "shape": list(value.shape)}
    if value.dtype.kind in "iu":
        return value.tolist()
    nan_as_none = cast(Any, None)  # numpy's stubs take no None as a choice of np.where
    return np.where(np.isnan(value), nan_as_none, value).tolist() if value.ndim else _scalar(value)


def _scalar(value: np.ndarray) -> float | None:
    return None if np.isnan(value) else float(value)
