"""A computing party's logic without a network: :class:`PartyService` takes a job
message or an upload envelope and returns what to answer.

An envelope is accepted only if, in this order: its routing part parses and
names this party; its job is known; its signature verifies against the
federation's key for the named site (and the site is one the job asks); it
decrypts with this party's key; its header agrees with the job (input, scheme,
t, n, modulus, fixed-point bits, element layout). It is then stored durably
(:mod:`smpc.party.store`) and only then acknowledged. Anything else is rejected with
a logged reason and leaves the stored data as it was. The daemon that wires it to the
broker is :mod:`smpc.party.daemon`; on SIGHUP it calls :meth:`PartyService.reload`, so a
site removed from the directory is refused from then on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from smpc import log
from smpc.config.federation import (
    Federation,
    load_federation,
)
from smpc.errors import UserError
from smpc.party.audit import AuditLog
from smpc.party.compute import Computation
from smpc.party.config import PartyConfig, Policy
from smpc.party.metrics import PartyMetrics
from smpc.party.replies import JobReply
from smpc.party.store import PartyStore, StoredJob
from smpc.party.uploads import Uploads
from smpc.pki.kit import Kit, Reloaded, load_kit, reload_kit
from smpc.protocols.registry import parse_spec, protocol
from smpc.wire.messages import (
    Job,
    MessageError,
    StatusState,
    read_stored_job,
    verify_job,
)

logger = logging.getLogger("smpc.party")


class PartyService(Computation, Uploads):
    """One computing party's handling of jobs and upload envelopes."""

    def __init__(
        self,
        kit: Kit,
        federation: Federation,
        store: PartyStore,
        policy: Policy | None = None,
        *,
        federation_file: Path | None = None,
    ) -> None:
        if kit.role != "party" or kit.party_index is None or kit.encryption_key is None:
            raise UserError(f"kit {kit.path} is not a computing party's kit")
        self.kit = kit
        self.federation = federation
        self.store = store
        self.policy = policy or Policy()
        self.index = kit.party_index
        self.federation_file = federation_file  # None: the kit's copy
        directory = kit.directory
        self._site_keys = {site: directory.verify_key(site) for site in directory.sites}
        self._jobs: dict[str, Job] = {}
        self._job_digests: dict[str, str] = {}  # job id -> Job.digest, computed once
        self.audit = AuditLog(store.root)
        self.metrics = PartyMetrics()  # /metrics of the operator page (smpc.party.web)
        for stored in store.jobs():  # a restart recovers every job it had accepted
            self._jobs[stored.id] = read_stored_job(stored.closed or stored.message)[1]
            if stored.status == "computing":  # interrupted: never computed (or noised) twice
                self.failed(self._jobs[stored.id], "the party restarted while computing")
        self._fail_orphans()

    @classmethod
    def from_config(cls, config: PartyConfig) -> PartyService:
        kit = load_kit(config.kit)
        federation = load_federation(config.federation or kit.federation_file)
        store = PartyStore(config.store)
        return cls(kit, federation, store, config.policy, federation_file=config.federation)

    def reload(self) -> Reloaded:
        """Read the kit's public directory and the federation file again (SIGHUP).

        From then on, envelopes are verified against the new directory: a site removed
        from it is refused (``site 'S' is not in the federation's site directory``), and
        so is a close that names it. UserError, and nothing changes, if the new files
        are not a usable update (:func:`smpc.pki.kit.reload_kit`).
        """
        reloaded = reload_kit(self.kit, self.federation_file)
        directory = reloaded.kit.directory
        self._site_keys = {site: directory.verify_key(site) for site in directory.sites}
        self.kit, self.federation = reloaded.kit, reloaded.federation
        self._fail_orphans()
        return reloaded

    def _fail_orphans(self) -> None:
        """Fail the unfinished jobs whose analyst has left the directory: nobody could
        close them or open their results. Their records stay (ids, differencing checks)."""
        analysts = set(self.kit.directory.analysts)
        for stored in self.store.jobs():
            if stored.status in ("open", "computing") and stored.analyst not in analysts:
                reason = f"its analyst {stored.analyst!r} is no longer in the federation"
                self.failed(self._jobs[stored.id], reason)

    # -- jobs -------------------------------------------------------------------------------
    def handle_job(
        self, data: bytes, topic_job: str | None = None, topic_analyst: str | None = None
    ) -> JobReply | None:
        """Accept or refuse a signed job; once it is closed, compute its result shares.

        The job lifecycle (``docs/security.md``): the first accepted message of a job id
        is kept with its signer; a later message with that id must come from the same
        analyst and equal it in every field but ``close``, which is set once. A
        re-delivered close is answered with the bytes published the first time; a job is
        never computed twice. Anything else is refused and logged as what it is.
        ``topic_job`` and ``topic_analyst`` name the topic it arrived on, which must be the
        job's own: its id, under its analyst (the broker lets an analyst publish only there).
        """
        try:
            analyst, job = verify_job(data, self.kit.directory)
        except MessageError as exc:
            log.event(logger, "job-ignored", logging.WARNING, reason=exc)
            return None
        if (topic_job is not None and topic_job != job.id) or (
            topic_analyst is not None and topic_analyst != analyst
        ):
            topic = f"{topic_analyst}/{topic_job}"
            log.event(logger, "job-ignored", logging.WARNING, job=job.id, topic=topic)
            return None
        known = self.store.job(job.id)
        if known is not None:
            return self._known_job(known, analyst, job, data)
        refusal = self.refusal(job, analyst)
        self.store.put_job(job.id, data, analyst)  # every id seen is remembered, refused too
        if refusal:
            log.event(logger, "job-refused", logging.WARNING, job=job.id, reason=refusal)
            self._audit_job("job-refused", job, analyst, refusal)
            status = self._status(job.id, "refused", reason=refusal)
            self.store.release(job.id, "refused", status)
            return JobReply(status)
        self._jobs[job.id] = job
        log.event(logger, "job-accepted", job=job.id, analyst=analyst, protocol=job.protocol)
        self._audit_job("job-accepted", job, analyst)
        if job.close is None:
            return JobReply(self._holding(job, "accepted"))
        return self._close(job, data)

    def _known_job(self, known: StoredJob, analyst: str, job: Job, data: bytes) -> JobReply | None:
        """A message for a job id this party has seen: a re-delivery, or refused."""

        def refused(event: str, reason: str) -> JobReply | None:
            log.event(logger, event, logging.WARNING, job=job.id, signer=analyst, reason=reason)
            self._audit_job("job-refused", job, analyst, f"{event}: {reason}")
            return None

        if analyst != known.analyst:
            return refused("job-takeover", f"job {job.id} belongs to analyst {known.analyst!r}")
        first = read_stored_job(known.message)[1]
        if job.unclosed() != first.unclosed():
            return refused("job-changed", "a job is immutable once accepted; only close may be set")
        released = self.store.released(job.id)
        if known.status == "refused":
            return None if released is None else JobReply(released.status)
        if known.closed is None:
            if job.close is None:  # the open message again (QoS 1, a restart)
                return JobReply(self._holding(job, "accepted"))
            return self._close(job, data)
        closed = read_stored_job(known.closed)[1]
        if (job.close, job.uploads, job.parties) != (closed.close, closed.uploads, closed.parties):
            return refused(
                "job-reclose",
                f"job {job.id} was closed with {', '.join(closed.close or ())}"
                f"{_among(closed.parties)}; another close is a differencing attempt",
            )
        if job.close is None:
            return refused("job-replayed", f"job {job.id} is closed already")
        if released is None:
            return None  # still computing: its result is published when it is done
        log.event(logger, "job-redelivered", job=job.id, results=len(released.results))
        return JobReply(released.status, released.results)

    def _close(self, job: Job, data: bytes) -> JobReply | None:
        """The first close of an accepted job: record it, then compute once."""
        if not self.store.close_job(job.id, data):
            return None  # closed meanwhile by the same message
        self._jobs[job.id] = job
        self.audit.append(
            "job-closed", job=job.id, analyst=job.analyst, sites=list(job.close or ()),
            uploads=job.uploads, parties=list(job.parties or self.federation.party_names),
        )  # fmt: skip
        problem = self.close_refusal(job)
        if problem:
            return self.failed(job, problem)
        return self.compute(job)

    def _audit_job(self, event: str, job: Job, analyst: str, reason: str | None = None) -> None:
        self.audit.append(
            event, job=job.id, analyst=analyst, protocol=job.protocol, digest=job.digest(),
            closing=job.close is not None, reason=reason,
        )  # fmt: skip

    def refusal(self, job: Job, analyst: str | None = None) -> str:
        """Why this party's policy refuses the job ("" if it accepts)."""
        problem = self.spec_problem(job)
        if problem:
            return problem
        parties = len(self.federation.parties)
        if analyst is not None and job.analyst != analyst:
            return f"job names analyst {job.analyst!r} but is signed by {analyst!r}"
        stale = self._staleness(job)
        if stale:
            return stale
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
        if self.policy.min_parties is not None and job.quorum < self.policy.min_parties:
            return (
                f"min_parties {job.quorum} is below this party's minimum {self.policy.min_parties}"
            )
        if job.close is not None and len(job.close) < max(job.min_sites, self.policy.min_sites):
            return f"only {len(job.close)} sites, fewer than min_sites {job.min_sites}"
        if job.analyst not in self.kit.directory.analysts:
            return f"results would go to {job.analyst!r}, who is not an analyst of the federation"
        return ""

    def spec_problem(self, job: Job) -> str:
        """Why the protocol spec a job carries is not a valid spec here ("" if it is).

        The spec is checked with its types before anything is stored or computed, so a
        signed job with a malformed field (``timeout: "60"``) is refused with the field's
        name instead of failing later inside a computation.
        """
        try:
            protocol(job.protocol).payload(job)
            source = f"job {job.id}: spec"
            spec = parse_spec(job.spec, source, self.federation) if job.spec else None
        except UserError as exc:
            return "; ".join(str(exc).splitlines())
        if spec is not None and spec.min_parties != job.quorum:
            return f"the job's min_parties {job.quorum} is not its spec's {spec.min_parties}"
        return ""

    def _staleness(self, job: Job, now: float | None = None) -> str:
        """Why the job's issue time or deadline is outside this party's window ("" if not)."""
        now = time.time() if now is None else now
        skew, window = self.policy.clock_skew, self.policy.job_window
        if not job.issued or not job.deadline:
            return "the job carries no issue time and deadline (sign it with this version)"
        if job.issued > now + skew:
            return f"the job is issued {job.issued - now:.0f} s in the future"
        if now - job.issued > window or job.deadline - job.issued > window:
            return f"the job was issued more than {window:g} s ago or lasts longer: refused"
        if now > job.deadline + skew:
            return f"the job's deadline passed {now - job.deadline:.0f} s ago"
        return ""

    def close_refusal(self, job: Job) -> str:
        """Why a close of an accepted job cannot be computed ("" if it can)."""
        assert job.close is not None
        if time.time() > job.deadline + self.policy.clock_skew:
            return "the job was closed after its deadline"
        if len(job.close) < max(job.min_sites, self.policy.min_sites):
            least = max(job.min_sites, self.policy.min_sites)
            return f"only {len(job.close)} sites, fewer than the minimum {least}"
        if job.uploads is None:
            return "the close names no upload ids (sign it with this version)"
        gone = [site for site in job.close if site not in self._site_keys]
        if gone:
            return f"the close names {', '.join(gone)}, no longer in the federation's directory"
        return self._parties_refusal(job)

    def _parties_refusal(self, job: Job) -> str:
        """Why the parties a close names cannot compute it here ("" if this party does)."""
        if job.parties is None:  # every party takes part
            return ""
        names = self.federation.party_names
        unknown = [p for p in job.parties if p not in names]
        if unknown:
            return f"the close names {', '.join(unknown)}, not computing parties here"
        if self.kit.name not in job.parties:
            return (
                f"party {self.kit.name} is not among the parties the job was closed with "
                f"({', '.join(job.parties)}): nothing computed"
            )
        missing = [p for p in names if p not in job.parties]
        why = job.needs_all_parties()
        if missing and why:
            return f"the close leaves out {', '.join(missing)}, but {why}"
        least = max(job.quorum, self.policy.min_parties or 0)
        if len(job.parties) < least:
            return f"the close names {len(job.parties)} parties, fewer than the minimum {least}"
        return ""

    def complete_sites(self, job: Job) -> dict[str, str]:
        """The sites this party holds every input of, for ``job``, with their upload ids."""
        held: dict[str, set[str]] = {}
        uploads: dict[str, str] = {}
        for share in self.store.shares(job.id):
            held.setdefault(share.site, set()).add(share.input)
            uploads[share.site] = share.upload
        wanted = {spec.name for spec in job.inputs}
        return {site: uploads[site] for site in sorted(held) if held[site] >= wanted}

    def _holding(self, job: Job, state: StatusState) -> bytes:
        held = self.complete_sites(job)
        return self._status(job.id, state, sites=tuple(held), uploads=held)

    def holding_status(self, job_id: str) -> bytes | None:
        """The party's current holdings of an open job (sent after every stored share)."""
        job = self._jobs.get(job_id)
        if job is None or job.close is not None:
            return None
        return self._holding(job, "holding")

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)


def _among(parties: tuple[str, ...] | None) -> str:
    return "" if parties is None else f" among {', '.join(parties)}"
