"""The analyst side: publishing a signed job for the parties and sites.

``smpc run SPEC`` (the protocol engine) builds the :class:`~smpc.messages.Job`
from a spec file; this module only signs and publishes it, retained, so that a
party or site that connects later still receives it.
"""

from __future__ import annotations

from smpc.keys import Kit
from smpc.messages import Job, sign
from smpc.spec.federation import Federation
from smpc.transport import Connection, Topics


async def publish_job(kit: Kit, federation: Federation, job: Job) -> bytes:
    """Sign ``job`` with the analyst's key and publish it (retained); return the message."""
    message = sign("job", job, kit.name, kit.signing_key)
    topics = Topics(federation.name)
    async with Connection.from_kit(kit, federation, suffix="jobs") as conn:
        await conn.publish(topics.job(job.id), message, retain=True)
    return message
