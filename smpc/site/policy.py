"""What a site agrees to upload to, whatever the job asks: its own minimums."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from smpc.protocols.registry import PROTOCOLS
from smpc.wire.messages import Job


class SitePolicy(BaseModel):
    """What a site agrees to upload to, whatever the job says (its own minimums)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    analysts: tuple[str, ...] | None = None  # None: every analyst of the federation
    protocols: tuple[str, ...] = tuple(PROTOCOLS)
    min_threshold: int = Field(default=1, ge=0)  # t = 0 puts the site's values in the clear
    min_sites: int = Field(default=2, ge=1)  # a result of fewer sites may open this site's data
    # Upload only to jobs that need at least this many computing parties (None: any t+1).
    min_parties: int | None = Field(default=None, ge=1)

    def refusal(self, job: Job) -> str:
        """Why this site does not upload to ``job`` ("" if it does)."""
        if self.analysts is not None and job.analyst not in self.analysts:
            return f"analyst {job.analyst!r} is not one this site answers"
        if job.protocol not in self.protocols:
            return f"protocol {job.protocol!r} is not one this site answers"
        if job.t < self.min_threshold:
            return f"threshold {job.t} is below this site's minimum {self.min_threshold}"
        if job.min_sites < self.min_sites:
            return f"min_sites {job.min_sites} is below this site's minimum {self.min_sites}"
        if self.min_parties is not None and job.quorum < self.min_parties:
            return f"min_parties {job.quorum} is below this site's minimum {self.min_parties}"
        return ""
