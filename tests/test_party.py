"""The party's handling of jobs and envelopes, and its durable store (no network here)."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest

from smpc.config.federation import load_federation
from smpc.core.encoding import FixedPoint
from smpc.core.field import FAST, field_for, mpyc_modulus
from smpc.core.sharing import reconstruct
from smpc.party.service import PartyService
from smpc.party.store import PartyStore
from smpc.party.uploads import header_problem
from smpc.pki.kit import load_kit
from smpc.wire.messages import (
    Job,
    JobInput,
    MessageError,
    sign,
    stamp_job,
    verify_ack,
    verify_status,
)
from smpc.wire.packaging import seal_shares

ENCODING = FixedPoint(16, 20)
ISSUED = time.time()  # one issue time for every job of this module, so _job() is reproducible


@pytest.fixture
def kits(keys_dir):
    names = ["alpha", "beta", "gamma", "oslo", "bergen", "tromso", "analyst", "eve"]
    return {name: load_kit(keys_dir / "kits" / name) for name in names}


def _job(**changes) -> Job:
    fields = dict(
        id="job-1", inputs=(JobInput(name="x", frac_bits=16, int_bits=20),), t=1, n=3,
        modulus=FAST.modulus, analyst="analyst",
    )  # fmt: skip
    fields.update(changes)
    job = Job(**fields)
    return job if job.issued else stamp_job(job, 20_000, now=ISSUED)


def _close(job: Job, sites: tuple[str, ...]) -> Job:
    """``job`` closed with ``sites``, each with the upload id :func:`_envelopes` gives it."""
    return job.model_copy(update={"close": sites, "uploads": {s: f"u-{s}" for s in sites}})


def _publish(job: Job, kits) -> bytes:
    return sign("job", job, "analyst", kits["analyst"].signing_key)


def _party(kits, tmp_path, name="beta", job: Job | None = None) -> PartyService:
    kit = kits[name]
    service = PartyService(kit, load_federation(kit.federation_file), PartyStore(tmp_path / name))
    service.handle_job(_publish(job or _job(), kits))
    return service


def _envelopes(kits, site="oslo", values=None, job="job-1", field=FAST, encoding=ENCODING, **kw):
    directory = kits["alpha"].directory
    # sealed for the job _job(id=job) gives, as a site that read it would
    kw["meta"] = {"upload": f"u-{site}", "job": _job(id=job).digest(), **kw.get("meta", {})}
    return seal_shares(
        np.arange(6.0) if values is None else values, encoding, field, job=job, input="x",
        site=site, t=1, recipients=[directory.party_encryption_key(i) for i in range(3)],
        signer=kits[site].signing_key, **kw,
    )  # fmt: skip


def _state(service: PartyService):
    return [(s.job, s.input, s.site, s.digest) for s in service.store.shares()], sorted(
        p.name for p in (service.store.root / "shares").rglob("*.share")
    )


def test_share_is_stored_then_acknowledged_and_redelivery_is_stored_once(kits, tmp_path):
    party = _party(kits, tmp_path)
    envelope = _envelopes(kits)[1]
    first = party.handle_upload(envelope)
    assert first.ack.status == "stored" and first.site == "oslo"
    signer, ack = verify_ack(first.message, kits["oslo"].directory)
    assert signer == "beta" and ack == first.ack
    again = party.handle_upload(envelope)
    assert again.ack.status == "stored" and again.ack.digest == first.ack.digest
    shares = party.store.shares("job-1")
    assert len(shares) == 1
    assert party.store.read_share(shares[0]) == shares[0].path.read_bytes()
    assert shares[0].path.stat().st_mode & 0o777 == 0o600


def test_restart_recovers_jobs_and_shares(kits, tmp_path):
    party = _party(kits, tmp_path)
    for site in ("oslo", "bergen"):
        assert party.handle_upload(_envelopes(kits, site)[1]).ack.status == "stored"
    before = _state(party)
    party.store.close()
    kit = kits["beta"]
    again = PartyService(kit, load_federation(kit.federation_file), PartyStore(tmp_path / "beta"))
    assert again.job("job-1") == _job()
    assert _state(again) == before


def _without(kit, name: str):
    """``kit`` as after a directory update that removed participant ``name``."""
    entries = {k: v for k, v in kit.directory.entries.items() if k != name}
    return dataclasses.replace(kit, directory=dataclasses.replace(kit.directory, entries=entries))


def test_a_removed_analysts_jobs_fail_and_the_party_starts_and_still_refuses_differencing(
    kits, tmp_path
):
    """After an analyst leaves the directory, a restart neither stops on its stored jobs
    (they were verified when they arrived) nor forgets them: its open job fails with the
    reason, and its finished job still counts in the differencing check."""
    party = _party(kits, tmp_path)  # job-1 by analyst: open
    for job in (_job(id="eve-1", analyst="eve"), _job(id="eve-2", analyst="eve")):
        assert party.handle_job(sign("job", job, "eve", kits["eve"].signing_key)) is not None
    done = _close(_job(id="eve-2", analyst="eve"), ("oslo", "bergen", "tromso"))
    party.store.close_job("eve-2", sign("job", done, "eve", kits["eve"].signing_key))
    party.store.set_job_status("eve-2", "done")  # as if computed and released
    party.store.close()

    kit = _without(kits["beta"], "eve")
    again = PartyService(kit, load_federation(kit.federation_file), PartyStore(tmp_path / "beta"))
    statuses = {j.id: j.status for j in again.store.jobs()}
    assert statuses == {"job-1": "open", "eve-1": "failed", "eve-2": "done"}
    released = again.store.released("eve-1")
    assert released is not None
    reason = verify_status(released.status, kit.directory)[1].reason
    assert reason == "its analyst 'eve' is no longer in the federation"
    audit = [
        json.loads(line) for line in (tmp_path / "beta" / "audit.jsonl").read_text().splitlines()
    ]
    assert {"event": "job-failed", "job": "eve-1"}.items() <= audit[-1].items()

    job = _job(id="job-2")
    again.handle_job(_publish(job, kits))
    for site in ("oslo", "bergen"):
        assert again.handle_upload(_envelopes(kits, site, job="job-2")[1]).ack.status == "stored"
    reply = again.handle_job(_publish(_close(job, ("oslo", "bergen")), kits))
    assert reply is not None and not reply.results
    refused = verify_status(reply.status, kit.directory)[1]
    assert refused.state in ("refused", "failed") and "job eve-2" in refused.reason, refused
    # a message from the removed analyst is ignored, as any unknown signer's
    assert again.handle_job(sign("job", _job(id="eve-3", analyst="eve"), "eve",
                                 kits["eve"].signing_key)) is None  # fmt: skip


def _rejected(party: PartyService, envelope: bytes, reason: str):
    before = _state(party)
    reply = party.handle_upload(envelope)
    assert reply is not None and reply.ack.status == "rejected"
    assert reason in reply.ack.reason
    assert _state(party) == before
    assert reason in party.store.rejections()[-1]["reason"]
    return reply


def test_same_key_with_another_digest_is_a_conflict(kits, tmp_path):
    party = _party(kits, tmp_path)
    party.handle_upload(_envelopes(kits)[1])
    _rejected(party, _envelopes(kits, values=np.ones(6))[1], "already stored with digest")


def test_forged_envelope_is_rejected(kits, tmp_path):
    """Signed by bergen's key but claiming to come from oslo."""
    party = _party(kits, tmp_path)
    directory = kits["alpha"].directory
    forged = seal_shares(
        np.arange(6.0), ENCODING, FAST, job="job-1", input="x", site="oslo", t=1,
        recipients=[directory.party_encryption_key(i) for i in range(3)],
        signer=kits["bergen"].signing_key,
    )[1]  # fmt: skip
    _rejected(party, forged, "oslo")


def test_unknown_site_is_rejected(kits, tmp_path):
    party = _party(kits, tmp_path)
    directory = kits["alpha"].directory
    unknown = seal_shares(
        np.arange(6.0), ENCODING, FAST, job="job-1", input="x", site="stranger", t=1,
        recipients=[directory.party_encryption_key(i) for i in range(3)],
        signer=kits["oslo"].signing_key,
    )[1]  # fmt: skip
    _rejected(party, unknown, "stranger")


def test_envelope_for_another_party_is_rejected(kits, tmp_path):
    party = _party(kits, tmp_path)
    _rejected(party, _envelopes(kits)[2], "envelope is for party 2")


def test_header_that_disagrees_with_the_job_is_rejected(kits, tmp_path):
    party = _party(kits, tmp_path)
    other_field = field_for(mpyc_modulus(32, 16))
    _rejected(party, _envelopes(kits, field=other_field)[1], "header modulus")
    _rejected(party, _envelopes(kits, encoding=FixedPoint(8, 20))[1], "header frac_bits is 8")


def test_site_outside_the_job_is_rejected(kits, tmp_path):
    party = _party(kits, tmp_path, job=_job(sites=("bergen",)))
    _rejected(party, _envelopes(kits)[1], "not part of job")


def test_unknown_job_gets_no_answer_and_no_effect(kits, tmp_path):
    party = _party(kits, tmp_path)
    before = _state(party)
    assert party.handle_upload(_envelopes(kits, job="job-2")[1]) is None
    assert _state(party) == before


def test_malformed_bytes_are_rejected_without_answer(kits, tmp_path):
    party = _party(kits, tmp_path)
    party.handle_upload(_envelopes(kits)[1])
    before = _state(party)
    assert party.handle_upload(b"\x00" * 100) is None
    envelope = bytearray(_envelopes(kits, site="bergen")[1])
    envelope[-1] ^= 1  # a flipped bit in the last chunk
    _rejected(party, bytes(envelope), "")
    assert _state(party) == before
    assert len(party.store.rejections()) == 2


def test_jobs_must_be_signed_by_an_analyst(kits, tmp_path):
    kit = kits["beta"]
    party = PartyService(kit, load_federation(kit.federation_file), PartyStore(tmp_path / "p"))
    assert party.handle_job(sign("job", _job(), "oslo", kits["oslo"].signing_key)) is None
    forged = sign("job", _job(), "analyst", kits["oslo"].signing_key)
    assert party.handle_job(forged) is None
    assert party.store.jobs() == []
    with pytest.raises(MessageError, match="bad signature"):
        verify_ack(sign("ack", _envelope_ack(), "beta", kits["alpha"].signing_key), kit.directory)


def _envelope_ack():
    from smpc.wire.messages import Ack

    return Ack(job="j", input="x", site="oslo", party=1, digest="", envelope_id="", status="stored")


# -- policy and disclosure control ------------------------------------------------------------


def _policy_party(kits, tmp_path, **policy):
    from smpc.party.config import Policy

    kit = kits["beta"]
    return PartyService(
        kit, load_federation(kit.federation_file), PartyStore(tmp_path / "beta"), Policy(**policy)
    )


def _status(reply, kits):
    from smpc.wire.messages import verify_status

    return verify_status(reply.status, kits["alpha"].directory)[1]


def test_policy_refusals_reach_the_analyst_with_the_reason(kits, tmp_path):
    party = _policy_party(kits, tmp_path, protocols=("sum",), min_threshold=2, min_sites=3)
    status = _status(party.handle_job(_publish(_job(protocol="fedavg"), kits)), kits)
    assert status.state == "refused" and "protocol 'fedavg' is not allowed" in status.reason
    status = _status(party.handle_job(_publish(_job(id="job-2"), kits)), kits)
    assert (
        status.state == "refused" and "threshold 1 is below this party's minimum 2" in status.reason
    )
    party = _policy_party(kits, tmp_path / "b", min_sites=3)
    status = _status(party.handle_job(_publish(_job(min_sites=2), kits)), kits)
    assert "min_sites 2 is below this party's minimum 3" in status.reason
    assert [(j.id, j.status) for j in party.store.jobs()] == [("job-1", "refused")]
    assert party.store.shares() == []


def test_shares_sealed_for_another_version_of_the_job_are_rejected(kits, tmp_path):
    # another analyst's message with the same job id, read by a site: its shares are sealed
    # for that job (its analyst, its inputs), not for the one the party accepted
    party = _party(kits, tmp_path)
    other = _job(analyst="eve").digest()
    _rejected(party, _envelopes(kits, meta={"job": other})[1], "another version of job job-1")
    _rejected(party, _envelopes(kits, meta={"job": ""})[1], "another version of job job-1")
    assert party.store.shares() == []
    assert party.handle_upload(_envelopes(kits)[1]).ack.status == "stored"


def test_a_seed_that_would_expand_beyond_any_body_is_rejected(kits, tmp_path):
    from smpc.wire.header import ShareHeader

    party = _party(kits, tmp_path)
    job = _job()
    header = ShareHeader(
        job="job-1", input="x", site="oslo", party=1, scheme="shamir", t=1, n=3,
        modulus=FAST.modulus, frac_bits=16, dtype=FAST.dtype_tag, shape=(2**40,), seed=True,
        meta={"upload": "u-oslo", "job": job.digest()},
    )  # fmt: skip
    problem = header_problem(header, job, job.digest())
    assert "declares shape (1099511627776,)" in problem and "more than the" in problem
    small = ShareHeader(**{**header.__dict__, "shape": (6,)})
    assert header_problem(small, job, job.digest()) == ""
    assert party.store.shares() == []


def test_site_with_too_few_records_is_refused(kits, tmp_path):
    party = _policy_party(kits, tmp_path, min_records=10)
    party.handle_job(_publish(_job(), kits))
    _rejected(party, _envelopes(kits, meta={"records": 9})[1], "declares 9 records, fewer than")
    assert party.handle_upload(_envelopes(kits, meta={"records": 10})[1]).ack.status == "stored"


def _closed(party, kits, job_id, sites, records=50):
    job = _job(id=job_id)
    party.handle_job(_publish(job, kits))
    for site in sites:
        reply = party.handle_upload(
            _envelopes(kits, site, job=job_id, meta={"records": records})[1]
        )
        assert reply.ack.status == "stored"
    return _status(party.handle_job(_publish(_close(job, sites), kits)), kits)


def test_minimum_cell_count_blocks_the_result(kits, tmp_path):
    party = _policy_party(kits, tmp_path, min_cell=120)
    status = _closed(party, kits, "small", ("oslo", "bergen"))
    assert status.state == "failed" and "100 records in all, fewer than" in status.reason
    assert _closed(party, kits, "big", ("oslo", "bergen", "tromso")).state == "done"


def test_site_sets_one_site_apart_are_refused(kits, tmp_path):
    party = _policy_party(kits, tmp_path)
    assert _closed(party, kits, "all", ("bergen", "oslo", "tromso")).state == "done"
    status = _closed(party, kits, "but-one", ("bergen", "oslo"))
    assert status.state == "failed" and "differ from job all" in status.reason
    assert "(tromso)" in status.reason


def test_closed_job_yields_result_shares_that_reconstruct(kits, tmp_path):
    from smpc.wire.reader import open_envelope

    sites = ("oslo", "bergen")
    services = []
    for name in ("alpha", "beta", "gamma"):
        kit = kits[name]
        services.append(
            PartyService(kit, load_federation(kit.federation_file), PartyStore(tmp_path / name))
        )
    job = _job(id="sum-2")
    data = {s: np.arange(6.0) * (k + 1) for k, s in enumerate(sites)}
    for service in services:
        service.handle_job(_publish(job, kits))
    for site in sites:
        envelopes = _envelopes(kits, site, values=data[site], job="sum-2")
        for i, service in enumerate(services):
            assert service.handle_upload(envelopes[i]).ack.status == "stored"
    closed = _publish(_close(job, sites), kits)
    analyst = kits["analyst"]
    party_keys = {p: analyst.directory.verify_key(p) for p in analyst.directory.parties}
    shares = {}
    for i, service in enumerate(services):
        reply = service.handle_job(closed)
        assert _status(reply, kits).state == "done"
        ((name, envelope),) = reply.results
        opened = open_envelope(envelope, analyst.encryption_key, party_keys)
        assert (name, opened.header.site, opened.header.party) == ("x", service.kit.name, i)
        shares[i] = FAST.from_bytes(opened.body, opened.header.shape)
    total = ENCODING.decode(reconstruct(shares, FAST, 1), FAST)
    assert np.abs(total - sum(data.values())).max() <= 2 * 2.0**-17
