"""A computing party's configuration file (``parties/<party>.yaml``) and its policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from smpc.config.federation import read_yaml_model
from smpc.net.http import WebConfig
from smpc.protocols.registry import PROTOCOLS

Count = Annotated[StrictInt, Field(ge=0)]
"""A policy's minimum: a whole number, never negative ("2" is an error, not converted)."""
Positive = Annotated[StrictInt, Field(ge=1)]


class Policy(BaseModel):
    """What this party agrees to compute, whatever the analyst asks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocols: tuple[str, ...] = tuple(PROTOCOLS)  # allowed protocols
    # Safe defaults: t = 0 (each party holds the sites' values in the clear) and one-site
    # results (a site's own data opened) only where a party's policy says so.
    min_threshold: Count = 1  # refuse jobs whose collusion threshold is lower
    min_sites: Positive = 2  # refuse jobs that may open results of fewer sites
    # Refuse jobs (and closes) that may complete with fewer computing parties (None: any
    # t+1, which Shamir reconstruction needs anyway).
    min_parties: Annotated[StrictInt, Field(ge=1)] | None = None
    # Freshness: a job issued more than job_window seconds ago (or lasting longer), or
    # whose deadline has passed, is refused; clock_skew is the tolerance between clocks.
    job_window: Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)] = 86400.0
    clock_skew: Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)] = 300.0
    # Disclosure control, on the record counts sites declare in their signed headers:
    min_records: Count = 0  # refuse a site's share summarising fewer records
    min_cell: Count = 0  # refuse to compute a result over fewer records in all
    refuse_differencing: StrictBool = True  # refuse a site set one site away from an earlier job's


class PartyConfig(BaseModel):
    """``parties/<party>.yaml``: where a party's kit, federation file and store are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kit: Path
    store: Path
    federation: Path | None = None  # default: the copy in the kit (public/federation.yaml)
    log_level: str = "info"
    policy: Policy = Policy()
    web: WebConfig | None = None  # the operator page (smpc.party.web); off unless given


def load_party_config(path: Path) -> PartyConfig:
    """Read a party config; relative paths are relative to the config file."""
    config = read_yaml_model(path, PartyConfig)
    base = Path(path).resolve().parent
    resolved: dict[str, object] = {
        k: (base / v if not Path(v).is_absolute() else Path(v))
        for k, v in (
            ("kit", config.kit),
            ("store", config.store),
            ("federation", config.federation),
        )
        if v is not None
    }
    if config.web is not None:
        resolved["web"] = config.web.resolved(base)
    return config.model_copy(update=resolved)
