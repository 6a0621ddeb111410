"""The one reconnecting broker loop of every long-lived client (party, site, upload).

A broker that restarts or a network that drops is normal operation: the client
reconnects with backoff and its session re-subscribes. A refusal that retrying
cannot fix (the broker rejects our certificate, bad credentials, not authorised)
is not: it ends the loop with one clear line instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from smpc.net.connection import Connection
from smpc.net.errors import ConnectFailed, ConnectionLost

__all__ = ["run_with_reconnect"]

log = logging.getLogger("smpc.transport")

_T = TypeVar("_T")


async def run_with_reconnect(
    connect: Callable[[], Connection],
    session: Callable[[Connection], Awaitable[_T]],
    *,
    min_delay: float = 0.5,
    max_delay: float = 30.0,
    stable_after: float = 60.0,
    attempts: int | None = None,
    transient: tuple[type[Exception], ...] = (ConnectionLost, ConnectFailed),
    stop: asyncio.Event | None = None,
    on_retry: Callable[[Exception, float], None] | None = None,
) -> _T | None:
    """Run ``session(conn)`` on a fresh connection, reconnecting with backoff.

    Retries on ``transient`` errors (by default ConnectionLost and ConnectFailed),
    waiting ``min_delay`` doubling up to ``max_delay`` (with jitter); the delay resets
    after a connection that lasted ``stable_after`` seconds. A permanent ConnectFailed
    (refused certificate, bad credentials, not authorised) propagates at once: it is a
    :class:`~smpc.errors.UserError` whose message is the reason, and retrying cannot
    help. Any other exception propagates; so does the last error after ``attempts``
    failed tries in a row. Returns what ``session`` returns, or None when ``stop``
    is set while waiting to reconnect. ``session`` must (re)subscribe: with a
    persistent session the broker already has the subscriptions, but the first
    connection or an expired session does not. ``on_retry(exc, wait)`` replaces the
    default warning logged before each wait.
    """
    delay = min_delay
    failures = 0
    while True:
        started = time.monotonic()
        try:
            async with connect() as conn:
                return await session(conn)
        except transient as exc:
            if isinstance(exc, ConnectFailed) and exc.permanent:
                raise  # a UserError whose message is the reason: one line, no retry
            if time.monotonic() - started >= stable_after:
                delay, failures = min_delay, 0
            failures += 1
            if attempts is not None and failures >= attempts:
                raise
            wait = delay * random.uniform(0.8, 1.2)
            if on_retry is None:
                log.warning("%s; reconnecting in %.1f s", exc, wait)
            else:
                on_retry(exc, wait)
            if stop is None:
                await asyncio.sleep(wait)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                if stop.is_set():
                    return None
            delay = min(max_delay, delay * 2)
