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
import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from smpc import log
from smpc.aio import until
from smpc.envelope import EnvelopeError, Route, ShareHeader, envelope_id, peek_route
from smpc.errors import UserError
from smpc.field import field_for
from smpc.keys import Kit, load_kit
from smpc.messages import Ack, Job, MessageError, sign, verify_job
from smpc.packaging import open_share
from smpc.spec.federation import (
    Federation,
    load_federation,
    read_yaml_mapping,
    user_error_from_validation,
)
from smpc.store import PartyStore, ShareConflict
from smpc.transport import Connection, Topics, TransportError

logger = logging.getLogger("smpc.party")


class PartyConfig(BaseModel):
    """``parties/<party>.yaml``: where a party's kit, federation file and store are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kit: Path
    store: Path
    federation: Path | None = None  # default: the copy in the kit (public/federation.yaml)
    log_level: str = "info"


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


class PartyService:
    """One computing party's handling of jobs and upload envelopes."""

    def __init__(self, kit: Kit, federation: Federation, store: PartyStore) -> None:
        if kit.role != "party" or kit.party_index is None or kit.encryption_key is None:
            raise UserError(f"kit {kit.path} is not a computing party's kit")
        self.kit = kit
        self.federation = federation
        self.store = store
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
        return cls(kit, federation, PartyStore(config.store))

    # -- jobs -------------------------------------------------------------------------------
    def handle_job(self, data: bytes) -> Job | None:
        """Record a signed job; None (and a logged reason) if it is not acceptable."""
        try:
            analyst, job = verify_job(data, self.kit.directory)
        except MessageError as exc:
            log.event(logger, "job-refused", logging.WARNING, reason=exc)
            return None
        if job.n != len(self.federation.parties) or job.modulus < 3:
            log.event(
                logger, "job-refused", logging.WARNING, job=job.id,
                reason=f"job is for {job.n} parties, federation has {len(self.federation.parties)}",
            )  # fmt: skip
            return None
        if self.store.put_job(job.id, data):
            log.event(logger, "job-accepted", job=job.id, analyst=analyst, protocol=job.protocol)
        self._jobs[job.id] = job
        return job

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

        if route.party != self.index:
            return rejected(f"envelope is for party {route.party}")
        if job.sites is not None and route.site not in job.sites:
            return rejected(f"site {route.site!r} is not part of job {job.id}")
        try:
            share = open_share(data, self.kit.encryption_key, self._site_keys, party=self.index)
        except EnvelopeError as exc:
            return rejected(str(exc))
        header = share.header
        problem = header_problem(header, job)
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


def header_problem(header: ShareHeader, job: Job) -> str:
    """Why an envelope header does not fit its job ("" if it does)."""
    spec = job.input(header.input)
    if spec is None:
        return f"job {job.id} has no input {header.input!r}"
    expected = {
        "scheme": job.scheme,
        "t": job.t,
        "n": job.n,
        "modulus": job.modulus,
        "frac_bits": spec.frac_bits,
        "dtype": field_for(job.modulus).dtype_tag,
    }
    for name, want in expected.items():
        got = getattr(header, name)
        if got != want:
            return f"header {name} is {got!r}, job {job.id} says {want!r}"
    if header.seed and not job.compact:
        return f"job {job.id} asks for full shares, got a seed"
    return ""


async def serve(config: PartyConfig, stop: asyncio.Event, *, reconnect_max: float = 30.0) -> None:
    """Run the party until ``stop`` is set: reconnect to the broker whenever it goes away.

    The broker session is persistent (a fixed client id, QoS 1), so what was
    published while the party was down or disconnected is delivered when it
    comes back; anything it did not acknowledge is re-published by the site.
    """
    service = PartyService.from_config(config)
    name = service.kit.name
    topics = Topics(service.federation.name)
    federation = service.federation
    backoff = 0.5
    log.event(logger, "party-start", party=name, index=service.index, store=config.store)
    try:
        while not stop.is_set():
            try:
                async with Connection.from_kit(service.kit, federation) as conn:
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
    if kind == "job":
        await asyncio.to_thread(service.handle_job, message.body)
    elif kind == "upload":
        # Decryption and fsync run off the event loop so the broker link stays alive.
        reply = await asyncio.to_thread(service.handle_upload, message.body)
        if reply is not None:
            await conn.publish(topics.ack(reply.site, service.kit.name), reply.message)
