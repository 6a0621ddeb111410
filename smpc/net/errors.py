"""Errors of talking to the broker, each with a message that says which broker and why."""

from __future__ import annotations

from smpc.errors import UserError

__all__ = [
    "ConnectFailed",
    "ConnectionLost",
    "PublishTimeout",
    "SubscriptionRefused",
    "TransportError",
]


class TransportError(UserError):
    """A problem talking to the broker; the message says which broker and why."""


class ConnectFailed(TransportError):
    """Could not connect. ``permanent``: retrying will not help (certificates, refusal)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class ConnectionLost(TransportError):
    """The broker connection dropped; reconnect (:func:`smpc.net.reconnect.run_with_reconnect`)."""


class SubscriptionRefused(TransportError):
    """The broker refused a subscription (SUBACK failure: not allowed by its ACL)."""


class PublishTimeout(TransportError):
    """The broker did not acknowledge a publish in time."""
