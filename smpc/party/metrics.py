"""A party's Prometheus metrics: shares stored and rejected, bytes received, MPyC sessions.

Counters live in one registry per daemon (:class:`PartyMetrics`), incremented where the
party stores or rejects a share (:mod:`smpc.party.uploads`) and where a session ends
(:mod:`smpc.party.daemon`); what the store holds (jobs by state, store bytes) is read
from the store when ``/metrics`` is scraped (:mod:`smpc.party.web`). Labels are bounded:
a site's name, a job state, and a rejection's *kind* (:func:`reason_kind`), never a job
id, digest or free text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["REJECTION_KINDS", "PartyMetrics", "reason_kind"]

# (words in the reason, kind), first match wins: smpc/party/uploads.py's reasons
REJECTION_KINDS: tuple[tuple[str, str], ...] = (
    ("internal error at this party", "internal-error"),
    ("envelope is for party", "wrong-party"),
    ("addressed to party", "wrong-party"),
    ("encrypted to key", "wrong-recipient"),
    ("'s topic", "wrong-topic"),
    ("is not part of job", "site-not-in-job"),
    ("not in the federation's site directory", "unknown-site"),
    ("signed by", "bad-signature"),
    ("signature", "bad-signature"),
    ("sealed for another version of job", "job-mismatch"),
    ("has no input", "unknown-input"),
    ("header ", "header-mismatch"),
    ("asks for full shares", "header-mismatch"),
    ("records, fewer than", "too-few-records"),
    ("no upload id", "no-upload-id"),
    ("already uploaded set", "conflict"),
    ("already stored with digest", "conflict"),
)
_SESSION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


def reason_kind(reason: str) -> str:
    """A rejection reason's kind, the ``reason`` label of ``smpc_shares_rejected_total``."""
    for words, kind in REJECTION_KINDS:
        if words in reason:
            return kind
    return "invalid-envelope"


class PartyMetrics:
    """The counters of one party daemon, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.shares_stored = Counter(
            "smpc_shares_stored", "Shares verified and stored durably (before the ack)",
            ["site"], registry=self.registry,
        )  # fmt: skip
        self.shares_rejected = Counter(
            "smpc_shares_rejected", "Envelopes rejected, by kind of reason",
            ["reason"], registry=self.registry,
        )  # fmt: skip
        self.bytes_received = Counter(
            "smpc_upload_received_bytes", "Bytes of upload envelopes received",
            registry=self.registry,
        )  # fmt: skip
        self.sessions = Histogram(
            "smpc_mpyc_session_seconds", "MPyC sessions, start to outcome, by outcome",
            ["outcome"], buckets=_SESSION_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def received(self, size: int) -> None:
        self.bytes_received.inc(size)

    def stored(self, site: str) -> None:
        self.shares_stored.labels(site=site).inc()

    def rejected(self, reason: str) -> None:
        self.shares_rejected.labels(reason=reason_kind(reason)).inc()

    def session(self, seconds: float, outcome: str) -> None:
        self.sessions.labels(outcome=outcome).observe(seconds)
