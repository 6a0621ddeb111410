"""A party's handling of upload envelopes: verify, check against the job, store, ack."""

from __future__ import annotations

import errno
import logging
import math
import sqlite3
from typing import Any

from smpc import log
from smpc.config.federation import Federation
from smpc.core.field import field_for
from smpc.net.reassembly import DEFAULT_MAX_BODY
from smpc.party.audit import AuditLog
from smpc.party.config import Policy
from smpc.party.metrics import PartyMetrics
from smpc.party.replies import Reply
from smpc.party.store import PartyStore, ShareConflict
from smpc.pki.kit import Kit
from smpc.wire.envelope_errors import EnvelopeError
from smpc.wire.header import ShareHeader
from smpc.wire.layout import Route, envelope_id, peek_route
from smpc.wire.messages import (
    Ack,
    Job,
    sign,
)
from smpc.wire.packaging import open_share

logger = logging.getLogger("smpc.party")


class Uploads:
    """The upload half of :class:`smpc.party.service.PartyService` (a mixin)."""

    kit: Kit
    federation: Federation
    store: PartyStore
    policy: Policy
    index: int
    _jobs: dict[str, Job]
    _job_digests: dict[str, str]
    audit: AuditLog
    metrics: PartyMetrics
    _site_keys: dict[str, Any]

    # -- uploads ----------------------------------------------------------------------------
    def handle_upload(self, data: bytes, sender: str | None = None) -> Reply | None:
        """Verify, check, store and acknowledge one envelope (see module docstring).

        ``sender`` is the site named by the topic it arrived on (the broker lets a site
        publish only on its own): it must be the envelope's signer.

        Returns the ack to publish, or None when there is nobody to answer: the
        bytes are not an envelope, or its job is not known yet (the site
        re-publishes until it hears back, so a job announced late still works).
        """
        self.metrics.received(len(data))
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
        context: dict[str, Any] = {"job": route.job, "input": route.input, "site": route.site}

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
        if sender is not None and sender != route.site:
            return rejected(f"envelope of site {route.site!r} arrived on {sender!r}'s topic")
        if job.sites is not None and route.site not in job.sites:
            return rejected(f"site {route.site!r} is not part of job {job.id}")
        assert self.kit.encryption_key is not None  # every party kit has one
        try:
            share = open_share(data, self.kit.encryption_key, self._site_keys, party=self.index)
        except EnvelopeError as exc:
            return rejected(str(exc))
        header = share.header
        problem = header_problem(header, job, self._job_digest(job)) or self._too_few_records(
            header
        )
        upload = header.meta.get("upload")
        if not problem and not (isinstance(upload, str) and upload):
            problem = "the envelope carries no upload id (share it with this version)"
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
                upload=str(upload),
            )
            if outcome == "stored":
                self.metrics.stored(header.site)
                self.audit.append(
                    "share-stored", **context, digest=header.digest, upload=str(upload),
                    envelope=eid,
                )  # fmt: skip
        except ShareConflict as exc:
            return rejected(str(exc), header.digest)
        except (OSError, sqlite3.Error) as exc:
            if not _disk_full(exc):
                raise
            # Not stored, and not rejected either: a rejection is final for the site, but
            # this share is fine. Without an ack the site re-sends it until space is freed.
            log.event(
                logger, "share-refused", logging.ERROR, **context,
                reason=f"no space left on the device of {self.store.root}; not acknowledged, "
                "the site re-sends it",
            )  # fmt: skip
            return None
        log.event(logger, f"share-{outcome}", **context, bytes=len(share.body), seed=header.seed)
        ack = Ack(
            job=header.job, input=header.input, site=header.site, party=self.index,
            digest=header.digest, envelope_id=eid, status="stored",
        )  # fmt: skip
        return Reply(header.site, ack, self._sign(ack))

    def _job_digest(self, job: Job) -> str:
        if job.id not in self._job_digests:
            self._job_digests[job.id] = job.digest()
        return self._job_digests[job.id]

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
        self._reject(reason, job=route.job, input=route.input, site=route.site, digest=digest)
        ack = Ack(
            job=route.job, input=route.input, site=route.site, party=self.index,
            digest=digest, envelope_id=envelope, status="rejected", reason=reason,
        )  # fmt: skip
        return Reply(route.site, ack, self._sign(ack))

    def _reject(
        self, reason: str, *, job: str | None, input: str | None, site: str | None, digest=""
    ) -> None:
        self.store.reject(reason, job=job, input=input, site=site)
        self.metrics.rejected(reason)
        self.audit.append(
            "share-rejected", job=job, input=input, site=site, digest=digest or None, reason=reason
        )
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


def header_problem(header: ShareHeader, job: Job, digest: str) -> str:
    """Why an envelope header does not fit its job, whose :meth:`Job.digest` is ``digest``
    ("" if it does)."""
    sealed_for = header.meta.get("job")
    if sealed_for != digest:
        # a site that read another version of this job id (another analyst's message
        # with the same id, say) vetted other inputs and another analyst
        return (
            f"the shares were sealed for another version of job {job.id} (job digest "
            f"{str(sealed_for)[:12]}, this party holds {digest[:12]}); fetch the job again"
        )
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
    if header.seed:  # 32 bytes that would expand to any declared shape when computed
        expanded = math.prod(header.shape) * field_for(header.modulus).element_size
        if expanded > DEFAULT_MAX_BODY:
            return (
                f"a seed share declares shape {header.shape} ({expanded} bytes expanded), more "
                f"than the {DEFAULT_MAX_BODY} bytes a full share may carry"
            )
    return ""


def _disk_full(exc: BaseException) -> bool:
    """Whether storing failed because the store's file system is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
