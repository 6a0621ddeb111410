"""What a party publishes after handling a message: the replies its daemon sends."""

from __future__ import annotations

from dataclasses import dataclass

from smpc.mpc.task import SessionTask
from smpc.wire.messages import Ack


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
