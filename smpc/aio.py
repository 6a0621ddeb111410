"""Small asyncio helpers shared by the daemons."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(stream: AsyncIterable[T], stop: asyncio.Event) -> AsyncIterator[T]:
    """Items of ``stream`` until ``stop`` is set (then the pending read is cancelled)."""
    items = aiter(stream)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            item = asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait({item, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if item not in done:
                item.cancel()
                return
            try:
                yield item.result()
            except StopAsyncIteration:
                return
    finally:
        stopped.cancel()


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: daemons finish the message at hand and exit."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def on_sighup(callback: Callable[[], object]) -> Callable[[], None]:
    """SIGHUP calls ``callback`` in the running loop (daemons reload their directory);
    returns what removes the handler. Off the main thread (a daemon run in-process by a
    test) there are no signal handlers: then nothing is installed."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, callback)
    except (ValueError, RuntimeError, NotImplementedError):
        return lambda: None

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove
