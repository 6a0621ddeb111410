"""What a site agrees to upload to, whatever the job asks: its own minimums."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from smpc.protocols.registry import PROTOCOLS
from smpc.wire.messages import Job


class SitePolicy(BaseModel):
    """What a site agrees to upload to, whatever the job says (its own minimums)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    analysts: tuple[str, ...] | None = None  # None: every analyst of the federation
    protocols: tuple[str, ...] = tuple(PROTOCOLS)
    # t = 0 puts the site's values in the clear; a result of fewer sites may open its data
    min_threshold: Annotated[StrictInt, Field(ge=0)] = 1
    min_sites: Annotated[StrictInt, Field(ge=1)] = 2
    # Upload only to jobs that need at least this many computing parties (None: any t+1).
    min_parties: Annotated[StrictInt, Field(ge=1)] | None = None

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
