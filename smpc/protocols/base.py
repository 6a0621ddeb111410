"""The protocol interface: what a protocol family declares, hook by hook.

A protocol family (``sum``, ``fedavg``, ``gwas``) is one subclass of :class:`Protocol`,
registered in :mod:`smpc.protocols.registry`. The daemons never ask which protocol a job
runs: they look it up and call its hooks, each in the process that runs it:

- the **spec** hooks validate a spec file's protocol fields (:meth:`Protocol.resolve`);
- the **analyst** drives a run: :meth:`Protocol.plan` yields the run's jobs one after
  the other (one job, FedAvg rounds, a GWAS's alignment, scan and Newton rounds) and is
  sent each job's outcome, so the next job can depend on it; :meth:`Protocol.finalize`
  writes the output files (:mod:`smpc.analyst.driver` runs both);
- a **site** computes what it shares for a job (:meth:`Protocol.site_data`);
- a **party** combines the stored shares of the agreed sites (:meth:`Protocol.combine`)
  through the party's own operations (:class:`PartyContext`), and post-processes what
  its MPyC session opened (:meth:`Protocol.session_openings`);
- the **MPyC session process** computes and opens (:meth:`Protocol.session`).

A job's protocol-specific fields travel in ``Job.payload``, a JSON object that the
protocol's :attr:`Protocol.payload_model` types (a round index, a model, a variant list
each have their own field).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal
from typing import Protocol as Interface

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from smpc.config.federation import Federation
from smpc.config.spec import SpecBase, SpecFile
from smpc.errors import UserError
from smpc.mpc.task import SessionTask
from smpc.wire.messages import Job, JobInput, MessageError


class SkipJob(UserError):
    """This site does not answer the job; the message says why (``event=job-skipped``)."""


@dataclass(frozen=True)
class SiteData:
    """What a site shares for a job: the arrays, and how many records they summarise."""

    arrays: Mapping[str, np.ndarray]
    records: int | None = None


@dataclass(frozen=True)
class SiteSource:
    """What a site answers jobs from: its data file, its named inputs (``NAME: SOURCE``),
    its trainer (``trainer(global_model, round) -> (local_model, num_examples)``), and
    the folder it writes its own result files into (a GWAS's ``.eigenvec``)."""

    site: str
    data: Path | None = None
    out: Path | None = None
    inputs: Mapping[str, str] | None = None
    trainer: Callable[..., Any] | None = None


class Payload(BaseModel):
    """A job's protocol-specific fields (``Job.payload``): strict and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoPayload(Payload):
    """A protocol whose jobs carry nothing besides their inputs."""


@dataclass(frozen=True)
class Step:
    """One job of a run, as the protocol plans it; the analyst's driver publishes it.

    ``deliver`` None keeps the spec's; ``suffix`` extends the run's job id (``-r3``);
    ``upload_window`` None keeps the driver's; ``label`` prefixes its errors.
    """

    inputs: tuple[JobInput, ...]
    outputs: tuple[JobInput, ...] | None = None
    deliver: Literal["analyst", "parties"] | None = None
    payload: Payload | None = None
    suffix: str = ""
    upload_window: float | None = None
    label: str = ""


@dataclass
class Outcome:
    """A finished job: the job as closed, the sites in its result, the opened outputs, and
    each party's audit chain head as it signed it with its result."""

    job: Job
    sites: tuple[str, ...]
    opened: dict[str, np.ndarray]
    audit: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunContext:
    """What the analyst gives a run besides its spec."""

    initial_model: Mapping[str, np.ndarray] | None = None
    training: bool = False  # fedavg: train (history, one model per round) even for 1 round
    out: Path | None = None  # where a run writes files as it goes (a model per round)
    on_round: Callable[[int, Any], None] | None = None
    site_files: tuple[Path, ...] = ()  # a local run: the sites' data files


Plan = Generator[Step, Outcome, Any]
"""A run: yields each job's :class:`Step`, is sent its :class:`Outcome`, returns the
result that :meth:`Protocol.finalize` writes."""


class PartyContext(Interface):
    """The operations of a computing party that a protocol's :meth:`Protocol.combine`
    uses (:class:`smpc.party.service.PartyService` provides them)."""

    index: int
    federation: Federation

    def share_values(self, stored: Any) -> np.ndarray: ...

    def declared_records(self, job: Job, shares: dict) -> int: ...

    def session_dir(self, job: Job) -> Path: ...

    def sum_shares(self, job: Job, spec: SpecBase, shares: dict) -> Any: ...

    def seal_outputs(self, job: Job, outputs: Iterable[tuple[JobInput, np.ndarray]]) -> Any: ...

    def session(self, task: SessionTask) -> Any: ...

    def failed(self, job: Job, reason: str) -> Any: ...


class Protocol(ABC):
    """A protocol family. Subclasses set the class attributes and fill in the hooks."""

    name: ClassVar[str]
    spec_model: ClassVar[type[SpecBase]]
    payload_model: ClassVar[type[Payload]] = NoPayload
    multiplies: ClassVar[bool] = False  # the session multiplies shares: Shamir N >= 2t+1
    reveals: ClassVar[tuple[str, ...]]  # what ``reveal`` may list, in canonical order
    default_reveal: ClassVar[tuple[str, ...]]
    uses: ClassVar[frozenset[str]]  # the optional spec-file keys this protocol reads
    trains: ClassVar[bool] = False  # sites may answer its jobs with a trainer

    # --- spec ---------------------------------------------------------------------------

    @abstractmethod
    def resolve(
        self,
        raw: SpecFile,
        common: dict[str, Any],
        federation: Federation | None,
        problem: Callable[[str, str], None],
    ) -> dict[str, Any]:
        """This protocol's spec fields from a spec file (``common``: the resolved common
        fields); each problem goes to ``problem(field, message)``."""

    def unused_problem(self, key: str, value: Any, users: list[str]) -> str:
        """Why a spec of this protocol may not set ``key``, which only ``users`` read."""
        if key == "rounds" and value == 1:  # one round is every protocol's default
            return ""
        if key == "rounds":
            return f"{value}: only protocol {', '.join(users)} runs several rounds; drop rounds"
        return f"only protocol {', '.join(users)} uses {key}; drop it (protocol is {self.name})"

    def reveal_problem(self, items: list[str]) -> str:
        """Why a valid-looking ``reveal`` list is not allowed ("" if it is)."""
        return ""

    def complete_spec(self, spec: Any, context: RunContext) -> Any:
        """The spec with what the run's context tells (an initial model, the sites'
        files in a local run) filled in."""
        return spec

    def local_problem(self, spec: Any, trainer: bool) -> str:
        """Why ``smpc local`` cannot run ``spec`` (with or without a trainer); "" if it can."""
        return ""

    # --- analyst ------------------------------------------------------------------------

    def jobs_per_run(self, spec: Any) -> int:
        """How many jobs one run publishes (more than one: sites answer as daemons)."""
        return 1

    @abstractmethod
    def plan(self, spec: Any, context: RunContext) -> Plan:
        """The run's jobs, one at a time (see :data:`Plan`)."""

    @abstractmethod
    def finalize(self, spec: Any, result: Any, out: Path) -> dict[str, Any]:
        """Write the run's output files into ``out``; return the summary."""

    def exact_openings(self, job: Job) -> bool:
        """True if what parties open inside MPyC are exact integers, not fixed point."""
        return False

    def payload(self, job: Job) -> Any:
        """The job's typed payload; a malformed one is a MessageError."""
        try:
            return self.payload_model.model_validate(job.payload)
        except ValidationError as exc:
            raise MessageError(
                f"job {job.id}: its {self.name} payload is invalid: {exc.errors()[0]['msg']}"
            ) from None

    # --- site ---------------------------------------------------------------------------

    @abstractmethod
    def site_data(self, spec: Any, job: Job, source: SiteSource) -> SiteData:
        """What a site shares for ``job`` (raise SkipJob when it cannot answer it)."""

    # --- party --------------------------------------------------------------------------

    @abstractmethod
    def combine(self, party: PartyContext, job: Job, spec: Any, shares: dict) -> Any:
        """A party's answer to a closed job: its sealed outputs, or an MPyC session."""

    def session_openings(
        self, party: PartyContext, job: Job, spec: Any, task: SessionTask, opened: dict
    ) -> dict:
        """What the party signs from its session's openings (default: them as they are)."""
        return opened

    # --- MPyC session process -------------------------------------------------------------

    @abstractmethod
    async def session(self, mpc: Any, task: SessionTask, workdir: Path) -> dict[str, Any]:
        """Compute and open, inside the MPyC runtime ``mpc``; the session's result."""
