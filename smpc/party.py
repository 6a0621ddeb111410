"""The computing-party daemon: ``smpc party serve --config parties/<party>.yaml``.

:class:`PartyService` is the party's logic without a network: it takes a job
message or an upload envelope and returns what to answer. :func:`serve` wires
it to the broker (:mod:`smpc.transport`): it subscribes to the federation's jobs
and to the uploads addressed to this party, and publishes a signed ack for every
envelope it stored or rejected.

An envelope is accepted only if, in this order: its routing part parses and
names this party; its job is known; its signature verifies against the
federation's key for the named site (and the site is one the job asks); it
decrypts with this party's key; its header agrees with the job (input, scheme,
t, n, modulus, fixed-point bits, element layout). It is then stored durably
(:mod:`smpc.store`) and only then acknowledged. Anything else is rejected with
a logged reason and leaves the stored data as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from smpc import log
from smpc.aio import until
from smpc.dp import NoisePlan, skellam
from smpc.dp import plan as noise_plan
from smpc.encoding import words_to_bytes
from smpc.envelope import EnvelopeError, Route, ShareHeader, envelope_id, peek_route, seal
from smpc.errors import UserError
from smpc.field import MERSENNE61, field_for
from smpc.keys import Kit, load_kit
from smpc.messages import (
    Ack,
    Job,
    JobInput,
    MessageError,
    OpenedOutput,
    PartyResult,
    Status,
    sign,
    verify_job,
)
from smpc.mpc.launch import session_command
from smpc.mpc.task import GwasSession, SecType, SessionTask, ShareRef, TaskInput
from smpc.packaging import InputShare, open_share
from smpc.spec.federation import (
    Federation,
    load_federation,
    read_yaml_mapping,
    user_error_from_validation,
)
from smpc.spec.protocol import parse_spec
from smpc.store import PartyStore, ShareConflict, StoredShare
from smpc.transport import Connection, Topics, TransportError

logger = logging.getLogger("smpc.party")


class Policy(BaseModel):
    """What this party agrees to compute, whatever the analyst asks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocols: tuple[str, ...] = ("sum", "fedavg", "gwas")  # allowed protocols
    min_threshold: int = 0  # refuse jobs whose collusion threshold is lower
    min_sites: int = 1  # refuse jobs that may open results of fewer sites
    # Disclosure control, on the record counts sites declare in their signed headers:
    min_records: int = 0  # refuse a site's share summarising fewer records
    min_cell: int = 0  # refuse to compute a result over fewer records in all
    refuse_differencing: bool = True  # refuse a site set one site away from an earlier job's


class PartyConfig(BaseModel):
    """``parties/<party>.yaml``: where a party's kit, federation file and store are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kit: Path
    store: Path
    federation: Path | None = None  # default: the copy in the kit (public/federation.yaml)
    log_level: str = "info"
    policy: Policy = Policy()


def load_party_config(path: Path) -> PartyConfig:
    """Read a party config; relative paths are relative to the config file."""
    from pydantic import ValidationError

    data = read_yaml_mapping(path)
    try:
        config = PartyConfig.model_validate(data)
    except ValidationError as exc:
        raise user_error_from_validation(path, exc, PartyConfig) from None
    base = Path(path).resolve().parent
    resolved = {
        k: (base / v if not Path(v).is_absolute() else Path(v))
        for k, v in (
            ("kit", config.kit),
            ("store", config.store),
            ("federation", config.federation),
        )
        if v is not None
    }
    return config.model_copy(update=resolved)


@dataclass(frozen=True)
class Reply:
    """What to publish after handling an upload: a signed ack for one site."""

    site: str
    ack: Ack
    message: bytes


@dataclass(frozen=True)
class JobReply:
    """What to publish after handling a job message: a status, and result envelopes.

    ``session`` is set for ``deliver: parties``: the MPyC session this party must run
    (with the others) to open the outputs, before it can publish its result.
    """

    status: bytes | None
    results: tuple[tuple[str, bytes | bytearray], ...] = ()  # (output, envelope to the analyst)
    session: SessionTask | None = None


class PartyService:
    """One computing party's handling of jobs and upload envelopes."""

    def __init__(
        self, kit: Kit, federation: Federation, store: PartyStore, policy: Policy | None = None
    ) -> None:
        if kit.role != "party" or kit.party_index is None or kit.encryption_key is None:
            raise UserError(f"kit {kit.path} is not a computing party's kit")
        self.kit = kit
        self.federation = federation
        self.store = store
        self.policy = policy or Policy()
        self.index = kit.party_index
        directory = kit.directory
        self._site_keys = {site: directory.verify_key(site) for site in directory.sites}
        self._jobs: dict[str, Job] = {}
        for stored in store.jobs():  # a restart recovers every job it had accepted
            self._jobs[stored.id] = verify_job(stored.message, directory)[1]

    @classmethod
    def from_config(cls, config: PartyConfig) -> PartyService:
        kit = load_kit(config.kit)
        federation = load_federation(config.federation or kit.federation_file)
        return cls(kit, federation, PartyStore(config.store), config.policy)

    # -- jobs -------------------------------------------------------------------------------
    def handle_job(self, data: bytes) -> JobReply | None:
        """Accept or refuse a signed job; once it is closed, compute its result shares."""
        try:
            analyst, job = verify_job(data, self.kit.directory)
        except MessageError as exc:
            log.event(logger, "job-ignored", logging.WARNING, reason=exc)
            return None
        refusal = self.refusal(job)
        if refusal:
            log.event(logger, "job-refused", logging.WARNING, job=job.id, reason=refusal)
            return JobReply(self._status(job.id, "refused", reason=refusal))
        known = self.store.job(job.id)
        if known is None:
            self.store.put_job(job.id, data)
            log.event(logger, "job-accepted", job=job.id, analyst=analyst, protocol=job.protocol)
        elif known.message != data:
            self.store.update_job(job.id, data)
        self._jobs[job.id] = job
        if job.close is None:
            return JobReply(self._status(job.id, "accepted", sites=self.complete_sites(job)))
        if known is not None and known.status == "done" and known.message == data:
            return None  # re-delivery of a job already answered
        return self.compute(job)

    def refusal(self, job: Job) -> str:
        """Why this party's policy refuses the job ("" if it accepts)."""
        parties = len(self.federation.parties)
        if job.n != parties:
            return f"job is for {job.n} parties, the federation has {parties}"
        if job.protocol not in self.policy.protocols:
            allowed = ", ".join(self.policy.protocols)
            return f"protocol {job.protocol!r} is not allowed here (only {allowed})"
        if job.t < self.policy.min_threshold:
            return f"threshold {job.t} is below this party's minimum {self.policy.min_threshold}"
        if job.min_sites < self.policy.min_sites:
            return (
                f"min_sites {job.min_sites} is below this party's minimum {self.policy.min_sites}"
            )
        if job.close is not None and len(job.close) < max(job.min_sites, self.policy.min_sites):
            return f"only {len(job.close)} sites, fewer than min_sites {job.min_sites}"
        if job.deliver == "analyst" and job.analyst not in self.kit.directory.analysts:
            return f"results would go to {job.analyst!r}, who is not an analyst of the federation"
        return ""

    def complete_sites(self, job: Job) -> tuple[str, ...]:
        """Sites this party holds every input of, for ``job``."""
        held: dict[str, set[str]] = {}
        for share in self.store.shares(job.id):
            held.setdefault(share.site, set()).add(share.input)
        wanted = {spec.name for spec in job.inputs}
        return tuple(sorted(site for site, inputs in held.items() if inputs >= wanted))

    def compute(self, job: Job) -> JobReply:
        """Sum the shares of the agreed sites per input; seal each sum to the analyst."""
        shares = self._held(job)
        missing = [
            f"{i.name}@{site}"
            for site in job.close
            for i in job.inputs
            if (i.name, site) not in shares
        ]
        if missing:
            reason = f"this party lacks shares of the agreed sites: {', '.join(missing)}"
            return self._failed(job, reason)
        disclosure = self._disclosure_problem(job, shares)
        if disclosure:
            return self._failed(job, disclosure)
        if job.protocol == "gwas" and job.input("site") is not None:
            return self.compute_gwas(job, shares)  # else a Newton round: plain sums
        if job.protocol == "gwas" and job.deliver == "parties":  # ... or its step in MPyC
            return self.compute_newton(job, shares)
        try:
            noise = self.noise_plan(job, shares)
        except UserError as exc:
            return self._failed(job, str(exc))
        if job.deliver == "parties" or (noise is not None and job.scheme == "shamir"):
            # Shamir noise is an MPyC input of every party, so it needs a session even
            # when the analyst opens the result.
            return JobReply(None, session=self.session_task(job, shares, noise))
        own_noise = None if noise is None else {
            i.name: skellam(noise.per_party, self._shape(job, shares, i.name))
            for i in job.inputs if i.noised
        }  # fmt: skip
        return self.seal_results(job, shares, own_noise)

    def compute_gwas(self, job: Job, shares: dict) -> JobReply:
        """Align the sites' GWAS statistics on shares and add them (smpc.protocols.gwas).

        ``reveal: aggregates`` seals the pooled statistics to the analyst; ``statistics``
        hands them to this party's MPyC session, which opens only the printed values.
        """
        from smpc.protocols.gwas.protocol import combine, phenotype_problem, statistics_mode

        field = field_for(job.modulus)
        spec = parse_spec(job.spec, f"job {job.id}", self.federation)

        def share_of(name: str, site: str) -> np.ndarray:
            return self.share_values(shares[(name, site)])

        def pooled() -> Iterator[tuple[str, np.ndarray]]:
            try:
                for name, values in combine(job, field, share_of):
                    if name == "alignment":  # the sites' phenotype: refuse before any sum
                        summary = json.loads(words_to_bytes(field.to_signed(values)))
                        problem = phenotype_problem(spec, summary["phenotype"])
                        if problem:
                            raise UserError(problem)
                    yield name, values
            except (ValueError, KeyError, IndexError) as exc:
                logger.exception("job %s: the sites' statistics do not combine", job.id)
                raise UserError(f"the sites' statistics do not combine: {exc}") from None

        if not statistics_mode(spec) or job.input("counts") is None:
            outputs = {o.name: o for o in job.delivered}
            return self.seal_outputs(job, ((outputs[n], v) for n, v in pooled()))
        workdir = self.store.root / "sessions" / job.id
        workdir.mkdir(parents=True, exist_ok=True)
        arrays = {}
        try:
            for name, values in pooled():
                arrays[name] = values
        except UserError as exc:
            return self._failed(job, str(exc))
        summary = json.loads(words_to_bytes(field.to_signed(arrays["alignment"])))
        quantitative = summary["phenotype"] != "case/control"
        np.save(workdir / "alignment.npy", field.to_signed(arrays["alignment"]))
        (workdir / "counts.bin").write_bytes(field.to_bytes(arrays["counts"].reshape(-1, 24)))
        alleles = job.input("alleles")
        if alleles is not None:
            big = field_for(alleles.modulus)
            (workdir / "alleles.bin").write_bytes(big.to_bytes(arrays["alleles"]))
        from smpc.protocols.gwas.protocol import assoc_modulus, regression_sessions

        regression = regression_sessions(spec, job, arrays, workdir)

        modulus, bits = assoc_modulus() if alleles is not None else (None, None)
        task = SessionTask(
            job=job.id,
            party=self.index,
            sectype=SecType(kind="int", bit_length=MERSENNE61.bit_length() - 32, prime=job.modulus),
            compute="gwas",
            gwas=GwasSession(
                variants=int(arrays["counts"].shape[0]),
                samples=self._declared_records(job, shares),
                tests=list(spec.tests),
                a1_side=summary.get("a1_side", ""),
                counts="counts.bin",
                alleles="alleles.bin" if alleles is not None else None,
                assoc_modulus=modulus,
                assoc_field_bits=bits,
                geno=spec.filters.geno if spec.filters else None,
                maf=spec.filters.maf if spec.filters else None,
                hwe=spec.filters.hwe if spec.filters else None,
                quantitative=quantitative,
                regression=regression,
            ),
        )
        return JobReply(None, session=task)

    def compute_newton(self, job: Job, shares: dict) -> JobReply:
        """A logistic Newton round with ``reveal: statistics``: add the sites' gradients and
        Hessians and hand them to the MPyC session, which opens only the step."""
        from smpc.protocols.gwas.logistic import pooled_round

        workdir = self.store.root / "sessions" / job.id
        workdir.mkdir(parents=True, exist_ok=True)

        def share_of(name: str, site: str) -> np.ndarray:
            return self.share_values(shares[(name, site)])

        newton = pooled_round(job, share_of, workdir)
        task = SessionTask(
            job=job.id,
            party=self.index,
            sectype=SecType(kind="int", bit_length=MERSENNE61.bit_length() - 32, prime=job.modulus),
            compute="newton",
            newton=newton,
        )
        return JobReply(None, session=task)

    def _declared_records(self, job: Job, shares: dict) -> int:
        """The records the agreed sites declare in all (their envelope headers)."""
        first = job.inputs[0].name
        records = [
            ShareHeader.from_json(shares[(first, site)].header.encode()).meta.get("records", 0)
            for site in job.close
        ]
        return sum(r for r in records if isinstance(r, int))

    def _held(self, job: Job) -> dict:
        """This party's stored shares of ``job`` by (input, site)."""
        return {(s.input, s.site): s for s in self.store.shares(job.id)}

    def _shape(self, job: Job, shares: dict, name: str) -> tuple[int, ...]:
        return ShareHeader.from_json(shares[(name, job.close[0])].header.encode()).shape

    def noise_plan(self, job: Job, shares: dict) -> NoisePlan | None:
        """The dp noise this party adds for ``job``, or None without dp (smpc.dp)."""
        dp = job.spec.get("dp")
        if not dp:
            return None
        spec = parse_spec(job.spec, f"job {job.id}", self.federation)
        noised = [i for i in job.inputs if i.noised]
        plan = noise_plan(
            spec.dp,
            [self._shape(job, shares, i.name) for i in noised],
            parties=job.n,
            threshold=job.t,
            frac_bits=noised[0].frac_bits if noised else 0,
            compositions=spec.rounds,
        )
        log.event(logger, "dp-noise", job=job.id, mu=plan.mu, per_party=plan.per_party)
        return plan

    def seal_results(
        self, job: Job, shares: dict, noise: dict[str, np.ndarray] | None = None
    ) -> JobReply:
        """Sum the agreed sites' shares per input, add this party's noise share, seal.

        ``noise`` maps a noised input to this party's share of the noise: its own draw
        (additive) or its share of every party's MPyC-shared draw (Shamir).
        """
        field = field_for(job.modulus)

        def totals() -> Iterator[tuple[JobInput, np.ndarray]]:
            for spec in job.inputs:
                total = None  # a running sum: one site's share in memory at a time
                for site in job.close:
                    values = self.share_values(shares[(spec.name, site)])
                    if total is not None and values.shape != total.shape:
                        shapes = f"{values.shape} and {total.shape}"
                        raise UserError(f"sites sent {spec.name!r} in different shapes {shapes}")
                    total = values.copy() if total is None else field.add(total, values)
                    del values
                if noise and spec.name in noise:
                    total = field.add(total, field.from_int(noise[spec.name]))
                yield spec, total

        return self.seal_outputs(job, totals())

    def share_values(self, stored: StoredShare) -> np.ndarray:
        """A stored share as field elements (a seed expanded)."""
        header = ShareHeader.from_json(stored.header.encode())
        return InputShare(header, self.store.read_share(stored)).values()

    def seal_outputs(self, job: Job, outputs: Iterable[tuple[JobInput, np.ndarray]]) -> JobReply:
        """Seal this party's share of every output to the analyst (one at a time)."""
        field = field_for(job.modulus)
        analyst_key = self.kit.directory.analyst_encryption_key(job.analyst)
        results = []
        try:
            for spec, total in outputs:
                header = ShareHeader(
                    job=job.id, input=spec.name, site=self.kit.name, party=self.index,
                    scheme=job.scheme, t=job.t, n=job.n, modulus=job.modulus,
                    frac_bits=spec.frac_bits, dtype=field.dtype_tag, shape=total.shape,
                )  # fmt: skip
                body = field.to_bytes(total)
                results.append((spec.name, seal(header, body, analyst_key, self.kit.signing_key)))
                del total, body
        except UserError as exc:
            return self._failed(job, str(exc))
        self.store.set_job_status(job.id, "done")
        log.event(logger, "job-computed", job=job.id, sites=len(job.close), outputs=len(results))
        return JobReply(self._status(job.id, "done", sites=job.close), tuple(results))

    def _disclosure_problem(self, job: Job, shares: dict) -> str:
        """Minimum cell count and differencing, before anything is computed."""
        if self.policy.min_cell:
            total = self._declared_records(job, shares)
            if total < self.policy.min_cell:
                return (
                    f"the agreed sites declare {total} records in all, fewer than this party's "
                    f"minimum cell count {self.policy.min_cell}"
                )
        if self.policy.refuse_differencing:
            inputs = {i.name for i in job.inputs}
            for earlier in self.store.jobs():
                if earlier.id == job.id or earlier.status != "done":
                    continue
                other = verify_job(earlier.message, self.kit.directory)[1]
                if other.protocol != job.protocol or {i.name for i in other.inputs} != inputs:
                    continue
                if other.model != job.model:
                    # Training rounds start from different global models: subtracting two
                    # rounds' results does not isolate one site's update.
                    continue
                if len(set(other.close or ()) ^ set(job.close)) == 1:
                    (site,) = set(other.close or ()) ^ set(job.close)
                    return (
                        f"its sites differ from job {other.id} on the same inputs by one site "
                        f"({site}): the two results together would reveal that site's data"
                    )
        return ""

    def session_task(self, job: Job, shares: dict, noise: NoisePlan | None = None) -> SessionTask:
        """The MPyC task opening the sum of the agreed sites' shares of every output.

        With dp noise and ``deliver: analyst`` the session only shares the noise: it
        returns this party's noise shares, which :meth:`seal_results` adds.
        """
        bits = MERSENNE61.bit_length() - 32  # the widest SecInt MPyC allows in GF(2^61 - 1)
        return SessionTask(
            job=job.id,
            party=self.index,
            sectype=SecType(kind="int", bit_length=bits, prime=job.modulus),
            scheme=job.scheme,
            compute="noise" if noise is not None and job.deliver == "analyst" else "sum",
            noise_mu=0.0 if noise is None else noise.per_party,
            noised=[i.name for i in job.inputs if i.noised] if noise is not None else [],
            inputs=[
                TaskInput(
                    name=spec.name,
                    shape=ShareHeader.from_json(
                        shares[(spec.name, job.close[0])].header.encode()
                    ).shape,
                    shares=[
                        ShareRef(
                            site=site,
                            path=shares[(spec.name, site)].path.resolve(),
                            seed=shares[(spec.name, site)].seed,
                        )
                        for site in job.close
                    ],
                )
                for spec in job.inputs
            ],
        )

    def session_addresses(self, job: Job) -> list[tuple[str, int]]:
        """Every party's host and the port it listens on for this job.

        Each party takes the port at the same offset of its own range, derived from
        the job id, so all parties agree without another message.
        """
        offset = int.from_bytes(hashlib.sha256(job.id.encode()).digest()[:8], "big")
        return [
            (p.host, p.mpyc_ports.low + offset % len(p.mpyc_ports)) for p in self.federation.parties
        ]

    def run_session(self, job: Job, task: SessionTask, timeout: float = 120.0) -> JobReply:
        """Run this party's MPyC session (blocking) and sign what it opened."""
        workdir = self.store.root / "sessions" / job.id
        workdir.mkdir(parents=True, exist_ok=True)
        task_path, result_path = workdir / "task.json", workdir / "result.json"
        task.write(task_path)
        cmd = session_command(
            kit=self.kit.path.resolve(), task=task_path, result=result_path,
            addresses=self.session_addresses(job), index=self.index,
            threshold=0 if job.scheme == "additive" else job.t, timeout=timeout,
        )  # fmt: skip
        log.event(
            logger, "session-start", job=job.id, port=self.session_addresses(job)[self.index][1]
        )
        try:
            limit = max(2 * timeout, float(job.spec.get("timeout", 0)))  # the job's own limit
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return self._failed(job, f"MPyC session did not finish within {limit:g} s")
        if run.returncode != 0:
            lines = run.stderr.strip().splitlines()
            return self._failed(
                job, f"MPyC session failed: {lines[-1] if lines else run.returncode}"
            )
        if task.compute == "noise":
            noise = json.loads(result_path.read_text())["noise"]
            noise_shares = {name: np.load(workdir / file) for name, file in noise.items()}
            reply = self.seal_results(job, self._held(job), noise_shares)
            for file in noise.values():
                (workdir / file).unlink(missing_ok=True)
            return reply
        opened = json.loads(result_path.read_text())["outputs"]
        if task.compute == "gwas":  # the alignment is public: every party computed the same
            words = np.load(workdir / "alignment.npy")
            opened["alignment"] = {"shape": list(words.shape), "values": words.tolist()}
            opened = {**self._unread_outputs(job, task), **opened}  # opened values win
        problem = outputs_problem(job, opened)
        if problem:
            return self._failed(job, problem)
        result = PartyResult(
            job=job.id,
            party=self.index,
            outputs={
                name: OpenedOutput(shape=tuple(o["shape"]), values=tuple(o["values"]))
                for name, o in opened.items()
            },
        )
        self.store.set_job_status(job.id, "done")
        log.event(logger, "job-computed", job=job.id, sites=len(job.close), opened="mpyc")
        message = sign("result", result, self.kit.name, self.kit.signing_key)
        return JobReply(self._status(job.id, "done", sites=job.close), (("", message),))

    def _unread_outputs(self, job: Job, task: SessionTask) -> dict[str, dict[str, Any]]:
        """The announced GWAS outputs the sites' phenotype does not read, as empty arrays
        (:func:`.protocols.gwas.protocol.unread_outputs`)."""
        from smpc.protocols.gwas.protocol import unread_outputs

        spec = parse_spec(job.spec, f"job {job.id}", self.federation)
        kind = "quantitative" if task.gwas.quantitative else "case/control"
        return {name: {"shape": [0], "values": []} for name in unread_outputs(spec, kind)}

    def _failed(self, job: Job, reason: str) -> JobReply:
        self.store.set_job_status(job.id, "failed")
        log.event(logger, "job-failed", logging.ERROR, job=job.id, reason=reason)
        return JobReply(self._status(job.id, "failed", reason=reason))

    def _status(self, job_id: str, state: str, *, sites=(), reason: str = "") -> bytes:
        status = Status(
            job=job_id, party=self.index, state=state, sites=tuple(sites), reason=reason
        )
        return sign("status", status, self.kit.name, self.kit.signing_key)

    def holding_status(self, job_id: str) -> bytes | None:
        """The party's current holdings of an open job (sent after every stored share)."""
        job = self._jobs.get(job_id)
        if job is None or job.close is not None:
            return None
        return self._status(job_id, "holding", sites=self.complete_sites(job))

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    # -- uploads ----------------------------------------------------------------------------
    def handle_upload(self, data: bytes) -> Reply | None:
        """Verify, check, store and acknowledge one envelope (see module docstring).

        Returns the ack to publish, or None when there is nobody to answer: the
        bytes are not an envelope, or its job is not known yet (the site
        re-publishes until it hears back, so a job announced late still works).
        """
        try:
            route = peek_route(data)
            eid = envelope_id(data)
        except EnvelopeError as exc:
            self._reject(str(exc), job=None, input=None, site=None)
            return None
        job = self._jobs.get(route.job)
        if job is None:
            log.event(
                logger, "upload-deferred", job=route.job, site=route.site, reason="unknown job"
            )
            return None
        context = {"job": route.job, "input": route.input, "site": route.site}

        def rejected(reason: str, digest: str = "") -> Reply:
            return self._reply_rejected(reason, route=route, envelope=eid, digest=digest)

        stored = self.store.share(job.id, route.input, route.site)
        if route.party == self.index and stored is not None and stored.envelope_id == eid:
            # The very envelope stored before (a site re-publishing while the ack was on
            # its way): same signed id, so acknowledge again without decrypting it.
            log.event(logger, "share-duplicate", **context)
            ack = Ack(
                job=job.id, input=route.input, site=route.site, party=self.index,
                digest=stored.digest, envelope_id=eid, status="stored",
            )  # fmt: skip
            return Reply(route.site, ack, self._sign(ack))

        if route.party != self.index:
            return rejected(f"envelope is for party {route.party}")
        if job.sites is not None and route.site not in job.sites:
            return rejected(f"site {route.site!r} is not part of job {job.id}")
        try:
            share = open_share(data, self.kit.encryption_key, self._site_keys, party=self.index)
        except EnvelopeError as exc:
            return rejected(str(exc))
        header = share.header
        problem = header_problem(header, job) or self._too_few_records(header)
        if problem:
            return rejected(problem, header.digest)
        try:
            outcome = self.store.put_share(
                job=header.job,
                input=header.input,
                site=header.site,
                digest=header.digest,
                envelope_id=eid,
                seed=header.seed,
                header=header.to_json().decode(),
                body=share.body,
            )
        except ShareConflict as exc:
            return rejected(str(exc), header.digest)
        log.event(logger, f"share-{outcome}", **context, bytes=len(share.body), seed=header.seed)
        ack = Ack(
            job=header.job, input=header.input, site=header.site, party=self.index,
            digest=header.digest, envelope_id=eid, status="stored",
        )  # fmt: skip
        return Reply(header.site, ack, self._sign(ack))

    def _too_few_records(self, header: ShareHeader) -> str:
        records = header.meta.get("records")
        if self.policy.min_records and (
            not isinstance(records, int) or records < self.policy.min_records
        ):
            return (
                f"site {header.site} declares {records} records, fewer than this party's "
                f"minimum of {self.policy.min_records} per site"
            )
        return ""

    def _reply_rejected(self, reason: str, *, route: Route, envelope: str, digest: str) -> Reply:
        self._reject(reason, job=route.job, input=route.input, site=route.site)
        ack = Ack(
            job=route.job, input=route.input, site=route.site, party=self.index,
            digest=digest, envelope_id=envelope, status="rejected", reason=reason,
        )  # fmt: skip
        return Reply(route.site, ack, self._sign(ack))

    def _reject(self, reason: str, *, job: str | None, input: str | None, site: str | None) -> None:
        self.store.reject(reason, job=job, input=input, site=site)
        log.event(
            logger,
            "share-rejected",
            logging.WARNING,
            job=job,
            input=input,
            site=site,
            reason=reason,
        )

    def _sign(self, ack: Ack) -> bytes:
        return sign("ack", ack, self.kit.name, self.kit.signing_key)


def outputs_problem(job: Job, opened: Mapping[str, Any]) -> str:
    """Why a session's opened outputs are not exactly those the job names ("" if they are):
    a party fails the job with this reason rather than deliver a partial result."""
    named = {o.name for o in job.delivered}
    missing, unexpected = sorted(named - set(opened)), sorted(set(opened) - named)
    problems = []
    if missing:
        problems.append(f"the MPyC session opened none of {', '.join(missing)}")
    if unexpected:
        problems.append(f"it opened outputs the job does not name: {', '.join(unexpected)}")
    return "; ".join(problems)


def header_problem(header: ShareHeader, job: Job) -> str:
    """Why an envelope header does not fit its job ("" if it does)."""
    spec = job.input(header.input)
    if spec is None:
        return f"job {job.id} has no input {header.input!r}"
    expected = {
        "scheme": "shamir" if spec.public else job.scheme,
        "t": 0 if spec.public else job.t,
        "n": job.n,
        "modulus": spec.modulus or job.modulus,
        "frac_bits": spec.frac_bits,
        "dtype": field_for(spec.modulus or job.modulus).dtype_tag,
    }
    for name, want in expected.items():
        got = getattr(header, name)
        if got != want:
            return f"header {name} is {got!r}, job {job.id} says {want!r}"
    if header.seed and not job.compact:
        return f"job {job.id} asks for full shares, got a seed"
    return ""


def _return_freed_memory() -> None:
    """Make glibc give large freed buffers back to the OS.

    A party handles many 80 MB bodies in worker threads. With glibc's per-thread
    arenas and its adaptive mmap threshold, freed buffers stay in the heap and the
    resident size grows toward the sum of everything received; a fixed 1 MiB mmap
    threshold and two arenas keep it near what is in use.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_arena_max, m_mmap_threshold = -8, -3  # from <malloc.h>
    libc.mallopt(m_arena_max, 2)
    libc.mallopt(m_mmap_threshold, 1 << 20)


async def serve(config: PartyConfig, stop: asyncio.Event, *, reconnect_max: float = 30.0) -> None:
    """Run the party until ``stop`` is set: reconnect to the broker whenever it goes away.

    The broker session is persistent (a fixed client id, QoS 1), so what was
    published while the party was down or disconnected is delivered when it
    comes back; anything it did not acknowledge is re-published by the site.
    """
    _return_freed_memory()
    service = PartyService.from_config(config)
    name = service.kit.name
    topics = Topics(service.federation.name)
    federation = service.federation
    backoff = 0.5
    log.event(logger, "party-start", party=name, index=service.index, store=config.store)
    try:
        while not stop.is_set():
            try:
                # Large uploads are reassembled on disk, so memory stays bounded
                # however many sites upload at once.
                async with Connection.from_kit(
                    service.kit, federation, spool_dir=Path(config.store) / "spool"
                ) as conn:
                    await conn.subscribe(topics.jobs())
                    await conn.subscribe(topics.uploads_for(name))
                    log.event(logger, "party-connected", party=name, broker=federation.broker.host)
                    backoff = 0.5
                    async for message in until(conn.messages(), stop):
                        await _dispatch(service, topics, conn, message)
            except TransportError as exc:
                log.event(logger, "broker-lost", logging.WARNING, party=name, reason=exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(2 * backoff, reconnect_max)
    finally:
        service.store.close()
        log.event(logger, "party-stop", party=name)


async def _dispatch(service: PartyService, topics: Topics, conn: Connection, message) -> None:
    try:
        kind, _ = topics.parse(message.topic)
    except ValueError:
        return
    name = service.kit.name
    if kind == "job":
        answer = await asyncio.to_thread(service.handle_job, message.body)
        if answer is None:
            return
        job_id = topics.parse(message.topic).fields["job"]
        if answer.session is not None:  # deliver: parties — open inside MPyC first
            job = service.job(job_id)
            answer = await asyncio.to_thread(service.run_session, job, answer.session)
        for _, envelope in answer.results:
            await conn.publish_body(topics.result(job_id, name), envelope)
        if answer.status is not None:
            await conn.publish(topics.status(job_id, name), answer.status)
    elif kind == "upload":
        # Decryption and fsync run off the event loop so the broker link stays alive.
        reply = await asyncio.to_thread(service.handle_upload, message.body)
        if reply is not None:
            await conn.publish(topics.ack(reply.site, name), reply.message)
            status = service.holding_status(reply.ack.job)
            if status is not None and reply.ack.status == "stored":
                await conn.publish(topics.status(reply.ack.job, name), status)
