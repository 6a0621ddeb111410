"""What the linear protocols (secure sum, federated averaging) share.

Both need no secure multiplication, so they never go through MPyC one object per
element: every site shares its local sufficient statistics, every party adds the shares
of the agreed sites in GF(2^61 − 1) and sends its one summed share per output to the
analyst, who reconstructs (:meth:`LinearProtocol.combine`). An MPyC session runs only to
open the sums inside MPyC (``deliver: parties``) or to share the parties' dp noise
(:meth:`LinearProtocol.session`). The families: :mod:`smpc.protocols.sum.protocol` and
:mod:`smpc.protocols.fedavg.protocol`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

from smpc.config.federation import Federation
from smpc.config.spec import DP, SpecBase, SpecFile, summands_problem
from smpc.core.dp import plan as dp_plan
from smpc.core.dp import skellam
from smpc.core.field import PrimeField
from smpc.io.inputs import read_input
from smpc.mpc.task import SessionTask, load_input
from smpc.protocols.base import (
    Outcome,
    Plan,
    Protocol,
    RunContext,
    SiteData,
    SiteSource,
    SkipJob,
    Step,
)
from smpc.wire.messages import Job, JobInput

COUNT_BITS = 40  # record counts below 2^40
LARGE = 10_000  # arrays with more elements go to .npy files next to result.json


class LinearSpec(SpecBase):
    """The fields of a linear protocol's spec besides the common ones."""

    inputs: tuple[str, ...] | None
    dp: DP | None = None

    @property
    def rounds_of_noise(self) -> int:
        """How many releases the dp accountant composes (one per round)."""
        return 1


class LinearProtocol(Protocol):
    """Sum or average the sites' local statistics; subclasses say which statistics."""

    def resolve_linear(
        self,
        raw: SpecFile,
        common: dict[str, Any],
        federation: Federation | None,
        problem: Callable[[str, str], None],
    ) -> dict[str, Any]:
        """The fields every linear spec resolves alike: dp, and sums that must fit."""
        encoding_problem = summands_problem(common["encoding"], federation)
        if encoding_problem:
            problem("encoding", encoding_problem)
        return {"dp": raw.dp}

    # --- analyst ------------------------------------------------------------------------

    def plan(self, spec: Any, context: RunContext) -> Plan:
        outcome = yield Step(inputs=self.job_inputs(spec))
        return outcome

    def job_inputs(self, spec: Any) -> tuple[JobInput, ...]:
        """The shared arrays every site uploads for this spec."""
        raise NotImplementedError

    def noise_summary(self, spec: Any, opened: dict[str, np.ndarray], parties: int, t: int) -> dict:
        """The dp guarantee and noise of the opened outputs, for result.json."""
        noised = [v for i, v in opened.items() if i.endswith((".sum", ".weighted"))]
        plan = dp_plan(
            spec.dp, [np.shape(v) for v in noised], parties=parties, threshold=t,
            frac_bits=spec.encoding.frac_bits, compositions=spec.rounds_of_noise,
        )  # fmt: skip
        return plan.summary()

    def dp_summary(self, spec: Any, outcome: Outcome) -> dict[str, Any]:
        """``{"dp": ...}`` for result.json when the spec adds noise, else ``{}``."""
        if spec.dp is None:
            return {}
        return {"dp": self.noise_summary(spec, outcome.opened, outcome.job.n, outcome.job.t)}

    # --- site ---------------------------------------------------------------------------

    def site_data(self, spec: Any, job: Job, source: SiteSource) -> SiteData:
        if source.inputs is not None and source.data is None:
            return self.named_inputs(spec, job, source.inputs)
        if source.data is None:
            raise SkipJob(f"no data file for {self.name} jobs in the site config")
        stats = self.statistics(spec, job, source.data)
        return SiteData(stats, self.declared_records(spec, stats))

    def named_inputs(self, spec: Any, job: Job, sources: Mapping[str, str]) -> SiteData:
        """Inputs from a site's ``NAME: SOURCE`` assignments (``inputs:``, ``--input``).

        The names are the spec's inputs (``age``, ``bmi``; a fedavg model's arrays and
        ``num_examples``); the protocol computes its local statistics from them
        (``age.sum``, ``age.count``).
        """
        wanted = list(spec.inputs or ()) + list(self.extra_inputs)
        missing = [name for name in wanted if name not in sources]
        if missing:
            raise SkipJob(
                f"its spec's inputs {', '.join(missing)} are not among this site's inputs "
                f"({', '.join(sources) or 'none'})"
            )
        stats = self.statistics(spec, job, {name: sources[name] for name in wanted})
        return SiteData(stats, self.declared_records(spec, stats))

    extra_inputs: tuple[str, ...] = ()
    """Named inputs a site gives besides the spec's (fedavg's weight)."""

    def statistics(
        self, spec: Any, job: Job, source: Path | Mapping[str, str]
    ) -> dict[str, np.ndarray]:
        """A site's local sufficient statistics from one data file or one source per input."""
        raise NotImplementedError

    def declared_records(self, spec: Any, stats: dict[str, np.ndarray]) -> int:
        """How many records a site's statistics summarise (declared to the parties)."""
        raise NotImplementedError

    # --- party and session ----------------------------------------------------------------

    def combine(self, party: Any, job: Job, spec: Any, shares: dict) -> Any:
        return party.sum_shares(job, spec, shares)

    async def session(self, mpc: Any, task: SessionTask, workdir: Path) -> dict[str, Any]:
        return await open_sums(mpc, task, workdir)


async def open_sums(mpc: Any, task: SessionTask, workdir: Path) -> dict[str, Any]:
    """Open every input's sum (``sum``), or share the parties' dp noise (``noise``)."""
    sectype = task.sectype
    field = sectype.field
    stype = _secure_type(mpc, task)
    outputs: dict = {}
    noise_files: dict[str, str] = {}
    for spec in task.inputs:
        if task.step == "noise":
            if spec.name in task.noised:
                share = await noise_share(mpc, task, stype, field, spec.shape)
                file = f"noise-{mpc.pid}-{len(noise_files)}.npy"
                np.save(workdir / file, share)
                noise_files[spec.name] = file
            continue
        values = load_input(spec, field)
        if spec.name in task.noised:
            if task.scheme == "additive":  # this party's own draw is its share of the noise
                own = skellam(task.noise_mu, spec.shape)
                values = field.add(values, field.from_int(own))
            else:
                values = field.add(values, await noise_share(mpc, task, stype, field, spec.shape))
        if task.scheme == "additive":
            # Every party sends its summed share to every other over the party-CA TLS
            # links; the sum of all N is the secret.
            everyone = await mpc.transfer(values)
            signed = field.to_signed(
                field.sum([np.asarray(v, dtype=field.dtype) for v in everyone])
            )
        else:
            field_array = stype.field.array(np.asarray(values, dtype=object))
            if sectype.kind == "int":
                secure = stype.array(field_array)
            else:
                secure = stype.array(field_array, integral=False)
            opened = await mpc.output(secure, raw=True)
            signed = field.to_signed(np.asarray(opened.value, dtype=object).reshape(spec.shape))
        outputs[spec.name] = {
            "shape": list(spec.shape),
            "frac_bits": sectype.frac_bits,
            "values": [int(v) for v in np.asarray(signed, dtype=object).reshape(-1)],
        }
    if task.step == "noise":
        return {"job": task.job, "party": mpc.pid, "noise": noise_files}
    return {"job": task.job, "party": mpc.pid, "outputs": outputs}


def _secure_type(mpc: Any, task: SessionTask) -> Any:
    sectype = task.sectype
    if sectype.kind == "int":
        return mpc.SecInt(sectype.bit_length, p=sectype.prime)
    return mpc.SecFxp(sectype.bit_length, sectype.frac_bits, p=sectype.prime)


async def noise_share(
    mpc: Any, task: SessionTask, stype: Any, field: PrimeField, shape: tuple[int, ...]
) -> np.ndarray:
    """This party's Shamir share of the sum of every party's Skellam draw (smpc.core.dp).

    Each party inputs its own draw; MPyC shares it with a random polynomial of degree
    t, party i holding the evaluation at i+1 like the sites' shares, so the sum of the
    inputs adds to the summed site shares and opens with them.
    """
    own = skellam(task.noise_mu, shape)
    secure = stype.array(stype.field.array(np.asarray(own, dtype=object) % field.modulus))
    inputs = mpc.input(secure, senders=list(range(len(mpc.parties))))
    total = inputs[0]
    for other in inputs[1:]:
        total = total + other
    share = await mpc.gather(total)
    return field.from_int(np.asarray(share.value, dtype=object).reshape(shape))


def reader(source: Path | Mapping[str, str]) -> tuple[Callable[..., np.ndarray], dict, str]:
    """``read(name, **options)`` over one data file or one source per input; the per-input
    sources and the place to name in messages."""
    if isinstance(source, Mapping):
        sources = dict(source)
        where = ", ".join(sorted({s.rpartition(":")[0] or s for s in sources.values()}))
    else:
        sources = {}
        where = str(source)

    def read(name: str, **kwargs: Any) -> np.ndarray:
        return read_input(sources.get(name, where), name, **kwargs)

    return read, sources, where


def result_value(value: np.ndarray, path: Path) -> Any:
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
