"""The analyst's collection of the parties' results over a real broker (Mosquitto, TLS).

The parties are played by the test: each connects with its own kit, accepts the
analyst's signed job holding every site, and answers the closed job with a signed
result and a signed status, as a party daemon does (results first, then ``done``).
What is under test is the analyst (:func:`smpc.analyst.jobs.run_job`): a complete answer is
taken, and an answer that lacks or adds an output, a party's failure or a party that
never answers end the job at once (or at the timeout) with the outputs and the parties.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from smpc.analyst.jobs import JobFailed, build_job, run_job
from smpc.net.connection import Connection
from smpc.net.topics import Topics
from smpc.protocols.registry import parse_spec
from smpc.wire.messages import (
    Job,
    OpenedOutput,
    PartyResult,
    Status,
    seal_result,
    sign,
    verify_job,
)
from tests.brokers import federation_of, kit, mosquitto, requires_mosquitto

pytestmark = [requires_mosquitto, pytest.mark.timeout(90)]

PARTIES = ("alpha", "beta", "gamma")
EMPTY = OpenedOutput(shape=(0,), values=())
Answer = Callable[[int, Job], tuple[dict[str, OpenedOutput] | None, str, str]]
"""A party's answer to the closed job: (outputs or None to send no result, state, reason)."""


def gwas_job(keys_dir) -> Job:
    """The issue's spec: a case/control ``pheno:`` column, ``assoc``, reveal: statistics."""
    federation = federation_of(keys_dir)
    spec = parse_spec(
        {"name": "c3", "protocol": "gwas", "pheno": "CC", "tests": ["assoc"]}, "c3", federation
    )
    return build_job(spec, kit(keys_dir, "analyst"), federation)


async def play_party(keys_dir, index: int, job_id: str, answer: Answer) -> None:
    """One party: accept the job holding every site, then answer the closed job."""
    name = PARTIES[index]
    own = kit(keys_dir, name)
    federation = federation_of(keys_dir)
    topics = Topics(federation.name)

    async def status(job: Job, state: str, sites=(), reason: str = "") -> None:
        uploads = {site: f"upload-{site}" for site in sites}
        body = Status(
            job=job.id, party=index, state=state, sites=tuple(sites), uploads=uploads,
            reason=reason,
        )  # fmt: skip
        await conn.publish(topics.status(job.id, name), sign("status", body, name, own.signing_key))

    async with Connection.from_kit(own, federation, suffix="test") as conn:
        await conn.subscribe(topics.job_anywhere(job_id))
        async for message in conn.messages():
            if not message.body:  # the analyst cleared the retained job
                return
            _, job = verify_job(message.body, own.directory)
            if job.close is None:
                await status(job, "accepted", federation.site_names)
                continue
            outputs, state, reason = answer(index, job)
            if outputs is not None:
                result = PartyResult(job=job.id, party=index, outputs=outputs)
                message = sign("result", result, name, own.signing_key)
                analyst_key = own.directory.analyst_encryption_key(job.analyst)
                sealed = seal_result(message, job, name, index, analyst_key, own.signing_key)
                await conn.publish_body(topics.result(job.analyst, job.id, name), sealed)
            if state:
                await status(job, state, job.close if state == "done" else (), reason)
            return


def collect(keys_dir, tmp_path, job: Job, answer: Answer, *, timeout: float = 120.0):
    """Run the analyst on ``job`` against the played parties; its outcome and seconds taken."""

    async def main():
        parties = [asyncio.create_task(play_party(keys_dir, i, job.id, answer)) for i in range(3)]
        await asyncio.sleep(0.5)  # the parties are subscribed (the job is retained anyway)
        start = time.monotonic()
        try:
            outcome = await run_job(
                kit(keys_dir, "analyst"), federation_of(keys_dir), job,
                upload_window=30, timeout=timeout,
            )  # fmt: skip
        finally:
            elapsed = time.monotonic() - start
            for task in parties:
                task.cancel()
            await asyncio.gather(*parties, return_exceptions=True)
        return outcome, elapsed

    with mosquitto(keys_dir, tmp_path, at_federation_port=True):
        return asyncio.run(main())


def every_output(job: Job) -> dict[str, OpenedOutput]:
    return {o.name: EMPTY for o in job.delivered}


def test_a_complete_answer_is_taken(keys_dir, tmp_path):
    job = gwas_job(keys_dir)
    outcome, _ = collect(keys_dir, tmp_path, job, lambda i, j: (every_output(j), "done", ""))
    assert set(outcome.opened) == {o.name for o in job.delivered}
    assert outcome.sites == tuple(federation_of(keys_dir).site_names)


def test_one_output_fewer_than_the_job_names_fails_at_once_naming_it(keys_dir, tmp_path):
    job = gwas_job(keys_dir)
    dropped = job.delivered[-1].name

    def answer(index: int, closed: Job):
        outputs = every_output(closed)
        del outputs[dropped]
        return outputs, "done", ""

    with pytest.raises(JobFailed) as failed:
        collect(keys_dir, tmp_path, job, answer)
    message = str(failed.value)
    assert f"every party answered, but no {dropped} from alpha, beta, gamma" in message
    assert "within" not in message  # not the timeout


def test_the_failure_comes_within_seconds(keys_dir, tmp_path):
    """The job's timeout is minutes; the analyst fails seconds after the last ``done``."""
    job = gwas_job(keys_dir)
    kept = {o.name for o in job.delivered[:-2]}
    missing = [o.name for o in job.delivered[-2:]]

    def answer(index: int, closed: Job):  # only gamma lacks the last two outputs
        outputs = every_output(closed)
        return (
            ({n: v for n, v in outputs.items() if n in kept} if index == 2 else outputs),
            "done",
            "",
        )

    start = time.monotonic()
    with pytest.raises(JobFailed, match=f"no {', '.join(missing)} from gamma;"):
        collect(keys_dir, tmp_path, job, answer, timeout=300)
    assert time.monotonic() - start < 20


def test_an_output_the_job_does_not_name_fails_naming_it(keys_dir, tmp_path):
    job = gwas_job(keys_dir)

    def answer(index: int, closed: Job):
        extra = {"model.counts": EMPTY} if index == 1 else {}
        return {**every_output(closed), **extra}, "done", ""

    with pytest.raises(JobFailed, match=r"does not name: model\.counts \(from beta\)"):
        collect(keys_dir, tmp_path, job, answer)


def test_a_party_that_failed_reaches_the_analyst_with_its_reason(keys_dir, tmp_path):
    job = gwas_job(keys_dir)
    reason = "MPyC session failed: ValueError: the assoc field differs"

    def answer(index: int, closed: Job):
        if index == 1:
            return None, "failed", reason
        return every_output(closed), "done", ""

    with pytest.raises(JobFailed, match=f"party beta failed: {reason}"):
        collect(keys_dir, tmp_path, job, answer)


def test_silent_parties_time_out_naming_them_and_their_outputs(keys_dir, tmp_path):
    job = gwas_job(keys_dir)

    def answer(index: int, closed: Job):
        return (None, "", "") if index < 2 else (every_output(closed), "done", "")

    with pytest.raises(JobFailed) as failed:
        collect(keys_dir, tmp_path, job, answer, timeout=4)
    names = ", ".join(o.name for o in job.delivered)
    assert str(failed.value).endswith(f"no complete result within 4 s: no {names} from alpha, beta")


def test_t_plus_one_agreeing_opened_results_do_not_wait_for_a_dead_party(keys_dir, tmp_path):
    """Opened inside MPyC, the result is what t + 1 = 2 parties agree on; the third, dead
    after the opening, is not waited for beyond the grace."""
    job = gwas_job(keys_dir)

    def answer(index: int, closed: Job):
        return (None, "", "") if index == 0 else (every_output(closed), "done", "")

    outcome, elapsed = collect(keys_dir, tmp_path, job, answer, timeout=120)
    assert set(outcome.opened) == {o.name for o in job.delivered}
    assert elapsed < 30
