"""All use of MPyC internals goes through here, so an MPyC upgrade changes this one file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "MpcType",
    "event_loop",
    "exchanger_buffer",
    "exchanger_peer_pid",
    "exchanger_transport",
    "message_exchanger",
    "on_set_protocol",
    "party_connected",
    "patch_exchanger",
    "prss_draws",
    "prss_weight",
    "pseudorandom_zero",
    "random_field_elements",
    "release_peer",
    "reshare",
    "secure_array_shares",
]

# An MPyC secure type or finite field class (MPyC ships no type information).
MpcType = Any


# --------------------------------------------------------------------------- runtime


def event_loop(mpc: Any) -> asyncio.AbstractEventLoop:
    """The event loop MPyC's runtime runs on (``mpc._loop``)."""
    loop: asyncio.AbstractEventLoop = mpc._loop
    return loop


async def reshare(mpc: Any, x: Any) -> Any:
    """Degree-2t shares (a finite field array) back to degree t, in one round."""
    return await mpc._reshare(x)


async def random_field_elements(mpc: Any, field: MpcType, n: int) -> Any:
    """Shares of n uniformly random elements of ``field`` (PRSS: no communication)."""
    r = mpc._np_randoms(field, n)
    if mpc.options.no_prss:
        r = await r
    return r


def pseudorandom_zero(mpc: Any, field: MpcType, n: int) -> Any:
    """A pseudorandom degree-2t sharing of n zeros of ``field`` (PRSS, no communication)."""
    from mpyc import thresha

    p = field.order
    return thresha.np_pseudorandom_share_0(
        field, len(mpc.parties), mpc.pid, mpc.prfs(p), mpc._prss_uci(), n
    )


def prss_draws(mpc: Any, bound: int, shape: tuple[int, ...]) -> list[tuple[Any, np.ndarray]]:
    """Per PRSS subset, its PRF values below ``bound`` in ``shape`` for one unique input.

    Every party holding a subset draws the same values; combined with a field's weights
    (:func:`prss_weight`) they are shares of one random number in that field.
    """
    prfs = mpc.prfs(bound)
    uci = mpc._prss_uci()  # one unique input: the same draws whatever field they go to
    return [(subset, prf(uci, shape)) for subset, prf in prfs.items()]


def prss_weight(mpc: Any, field: MpcType, subset: Any) -> int:
    """This party's Shamir weight in ``field`` of one PRSS subset (``thresha._f_S_i``)."""
    from mpyc import thresha

    return int(thresha._f_S_i(field, len(mpc.parties), mpc.pid, subset))


def secure_array_shares(x: Any) -> Any:
    """The finite field array of this party's shares held by a secure array (``x.share``)."""
    return x.share


# --------------------------------------------------------------------------- connections


def message_exchanger() -> Any:
    """MPyC's protocol class of one peer connection (``asyncoro.MessageExchanger``)."""
    from mpyc import asyncoro

    return asyncoro.MessageExchanger


def patch_exchanger(**methods: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
    """Replace methods of :func:`message_exchanger` by name; returns the originals."""
    cls = message_exchanger()
    originals = {name: getattr(cls, name) for name in methods}
    for name, method in methods.items():
        setattr(cls, name, method)
    return originals


def exchanger_peer_pid(exchanger: Any) -> int | None:
    """The party index the peer of a connection said it is, None before it said so."""
    pid: int | None = exchanger.peer_pid
    return pid


def exchanger_buffer(exchanger: Any) -> bytearray:
    """The bytes a connection has received and not yet consumed (not a copy)."""
    buffer: bytearray = exchanger.bytes
    return buffer


def exchanger_transport(exchanger: Any) -> asyncio.Transport:
    """The asyncio transport of a connection."""
    transport: asyncio.Transport = exchanger.transport
    return transport


def release_peer(exchanger: Any) -> None:
    """Tell the runtime a connection's peer is gone (``runtime.unset_protocol``)."""
    exchanger.runtime.unset_protocol(exchanger.peer_pid)


def on_set_protocol(mpc: Any, hook: Callable[[int], None]) -> None:
    """Call ``hook(peer_pid)`` whenever the runtime registers a peer's connection."""
    original = mpc.set_protocol

    def set_protocol(peer_pid: int, protocol: Any) -> None:
        hook(peer_pid)
        original(peer_pid, protocol)

    mpc.set_protocol = set_protocol


def party_connected(party: Any) -> bool:
    """Whether one of ``mpc.parties`` has a live connection."""
    return party.protocol is not None
