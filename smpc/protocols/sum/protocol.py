"""Secure sum, with count and mean: ``protocol: sum``.

For every input (a CSV column, or an .npy/.npz array whose first axis is the records),
a site shares ``<input>.sum`` (Σ over its records; an empty CSV cell is missing and left
out) and ``<input>.count`` (its records with a value). The analyst opens the pooled sum
and count and derives the mean.

Revealed to the analyst: the pooled sums and counts; nothing per site. The parties see
only shares.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from smpc.config.federation import Federation
from smpc.config.spec import SpecFile
from smpc.core.dp import clip_rows
from smpc.errors import UserError
from smpc.io.inputs import exceeds
from smpc.protocols.base import Outcome
from smpc.protocols.linear import COUNT_BITS, LinearProtocol, LinearSpec, reader, result_value
from smpc.wire.messages import Job, JobInput


class SumSpec(LinearSpec):
    """A resolved ``protocol: sum`` spec: ``inputs`` names the columns to add up."""

    protocol: Literal["sum"]
    inputs: tuple[str, ...]


class SumProtocol(LinearProtocol):
    name: ClassVar[str] = "sum"
    spec_model = SumSpec
    reveals = ("sum", "count", "mean")
    default_reveal = ("sum", "count", "mean")
    uses = frozenset({"inputs", "dp"})

    def resolve(
        self,
        raw: SpecFile,
        common: dict[str, Any],
        federation: Federation | None,
        problem: Callable[[str, str], None],
    ) -> dict[str, Any]:
        inputs: tuple[str, ...] = ()
        if raw.inputs is None:
            problem(
                "inputs",
                "required for protocol sum: list the columns (or .npz/.npy arrays) to add up, "
                "e.g. inputs: [age, bmi]",
            )
        elif not raw.inputs:
            problem("inputs", "empty: list at least one column or array to add up")
        else:
            inputs = tuple(raw.inputs)
        return {"inputs": inputs, **self.resolve_linear(raw, common, federation, problem)}

    def job_inputs(self, spec: Any) -> tuple[JobInput, ...]:
        f, b = spec.encoding.frac_bits, spec.encoding.int_bits
        dp = spec.dp is not None  # the sums get noise; counts stay exact
        out = []
        for name in spec.inputs:
            out += [JobInput(name=f"{name}.sum", frac_bits=f, int_bits=b, noised=dp)]
            out += [JobInput(name=f"{name}.count", frac_bits=0, int_bits=COUNT_BITS)]
        return tuple(out)

    def statistics(
        self, spec: Any, job: Job, source: Path | Mapping[str, str]
    ) -> dict[str, np.ndarray]:
        read, sources, where = reader(source)
        clip = None if spec.dp is None else spec.dp.clip
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

    def declared_records(self, spec: Any, stats: dict[str, np.ndarray]) -> int:
        return max(int(np.max(stats[f"{name}.count"], initial=0)) for name in spec.inputs)

    def finalize(self, spec: Any, result: Outcome, out: Path) -> dict[str, Any]:
        """``result.json``: per input the revealed sum, count and mean (large ones as .npy)."""
        out.mkdir(parents=True, exist_ok=True)
        opened = result.opened
        summary: dict[str, Any] = {}
        for name in spec.inputs:
            total, count = opened[f"{name}.sum"], opened[f"{name}.count"]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
            stats = {"sum": total, "count": count, "mean": mean}
            summary[name] = {
                stat: result_value(value, out / f"{spec.name}.{name}.{stat}.npy")
                for stat, value in stats.items()
                if stat in spec.reveal
            }
        summary.update(self.dp_summary(spec, result))
        (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
