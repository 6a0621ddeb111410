"""Topic names and subscription filters of one federation (layout: :class:`Topics`).

All names match :data:`smpc.names.NAME_PATTERN`, so each is exactly one topic level and
never a wildcard; the broker ACL (:mod:`smpc.broker.acl`) is written against this layout.
"""

from __future__ import annotations

from typing import NamedTuple

from smpc.names import NAME_PATTERN

__all__ = ["ROOT", "ParsedTopic", "Topics"]

ROOT = "smpc"


def _name(what: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid {what} {value!r}: expected 1-63 characters from a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return value


class ParsedTopic(NamedTuple):
    """``kind`` (job, upload, ack, result, status) and the names in the topic."""

    kind: str
    fields: dict[str, str]


# kind -> (topic level after smpc/<fed>/, names of the remaining levels)
_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "job": ("jobs", ("analyst", "job")),
    "upload": ("up", ("site", "party")),
    "ack": ("ack", ("site", "party")),
    "result": ("result", ("analyst", "job", "party")),
    "status": ("status", ("job", "party")),
}
_BY_LEVEL = {level: (kind, names) for kind, (level, names) in _KINDS.items()}


class Topics:
    """Topic names and subscription filters of one federation.

    Every topic of federation ``<fed>`` lives under ``smpc/<fed>/``:

    =======================================  ======================  =========================
    topic                                    who publishes           who subscribes (filter)
    =======================================  ======================  =========================
    ``smpc/<fed>/jobs/<a>/<job>``            analyst ``<a>``         everyone: ``jobs/+/+``
                                             (retained)
    ``smpc/<fed>/up/<site>/<party>``         site ``<site>``         party: ``up/+/<party>``
    ``smpc/<fed>/ack/<site>/<party>``        party ``<party>``       site: ``ack/<site>/+``
    ``smpc/<fed>/result/<a>/<job>/<party>``  party ``<party>``       analyst ``<a>`` only:
                                                                     ``result/<a>/<job>/+``
    ``smpc/<fed>/status/<job>/<party>``      party ``<party>``       parties, analysts:
                                                                     ``status/<job>/+``
    =======================================  ======================  =========================

    ``up`` carries share envelopes (one site to one party), ``ack`` the party's signed
    receipts, ``result`` a party's result envelopes for the job's analyst (sealed to that
    analyst's key), ``status`` a party's acceptance or refusal of a job and its view of
    which sites' shares it holds. The broker enforces who may publish and read what;
    everything on these topics is also signed end to end, so the ACL is a second line of
    defence, not the only one.
    """

    def __init__(self, federation: str) -> None:
        self.federation = _name("federation name", federation)
        self.prefix = f"{ROOT}/{federation}"

    def __repr__(self) -> str:
        return f"Topics({self.federation!r})"

    def job(self, analyst: str, job_id: str) -> str:
        return f"{self.prefix}/jobs/{_name('analyst', analyst)}/{_name('job id', job_id)}"

    def jobs(self) -> str:
        return f"{self.prefix}/jobs/+/+"

    def jobs_of(self, analyst: str) -> str:
        """The filter of one analyst's jobs: the only job topics it may publish on."""
        return f"{self.prefix}/jobs/{_name('analyst', analyst)}/+"

    def job_anywhere(self, job_id: str) -> str:
        """Job ``job_id`` whoever published it (a site knows the id, not the analyst)."""
        return f"{self.prefix}/jobs/+/{_name('job id', job_id)}"

    def upload(self, site: str, party: str) -> str:
        return f"{self.prefix}/up/{_name('site', site)}/{_name('party', party)}"

    def uploads_for(self, party: str) -> str:
        return f"{self.prefix}/up/+/{_name('party', party)}"

    def ack(self, site: str, party: str) -> str:
        return f"{self.prefix}/ack/{_name('site', site)}/{_name('party', party)}"

    def acks_for(self, site: str) -> str:
        return f"{self.prefix}/ack/{_name('site', site)}/+"

    def result(self, analyst: str, job_id: str, party: str) -> str:
        return (
            f"{self.prefix}/result/{_name('analyst', analyst)}/{_name('job id', job_id)}/"
            f"{_name('party', party)}"
        )

    def results(self, analyst: str, job_id: str) -> str:
        return f"{self.prefix}/result/{_name('analyst', analyst)}/{_name('job id', job_id)}/+"

    def status(self, job_id: str, party: str) -> str:
        return f"{self.prefix}/status/{_name('job id', job_id)}/{_name('party', party)}"

    def statuses(self, job_id: str) -> str:
        return f"{self.prefix}/status/{_name('job id', job_id)}/+"

    def parse(self, topic: str) -> ParsedTopic:
        """``(kind, fields)`` of a topic of this federation; ValueError for anything else."""
        levels = topic.split("/") if isinstance(topic, str) else []
        if len(levels) < 3 or levels[0] != ROOT or levels[1] != self.federation:
            raise ValueError(f"not a topic of federation {self.federation!r}: {topic!r}")
        entry = _BY_LEVEL.get(levels[2])
        if entry is None or len(levels) != 3 + len(entry[1]):
            raise ValueError(f"unknown topic {topic!r}")
        kind, names = entry
        try:
            fields = {n: _name(n, v) for n, v in zip(names, levels[3:], strict=True)}
        except ValueError as exc:
            raise ValueError(f"invalid topic {topic!r}: {exc}") from None
        return ParsedTopic(kind, fields)
