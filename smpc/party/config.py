"""A computing party's configuration file (``parties/<party>.yaml``) and its policy."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from smpc.config.federation import read_yaml_model
from smpc.protocols.registry import PROTOCOLS


class Policy(BaseModel):
    """What this party agrees to compute, whatever the analyst asks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocols: tuple[str, ...] = tuple(PROTOCOLS)  # allowed protocols
    # Safe defaults: t = 0 (each party holds the sites' values in the clear) and one-site
    # results (a site's own data opened) only where a party's policy says so.
    min_threshold: int = 1  # refuse jobs whose collusion threshold is lower
    min_sites: int = 2  # refuse jobs that may open results of fewer sites
    # Refuse jobs (and closes) that may complete with fewer computing parties (None: any
    # t+1, which Shamir reconstruction needs anyway).
    min_parties: int | None = Field(default=None, ge=1)
    # Freshness: a job issued more than job_window seconds ago (or lasting longer), or
    # whose deadline has passed, is refused; clock_skew is the tolerance between clocks.
    job_window: float = Field(default=86400.0, gt=0)
    clock_skew: float = Field(default=300.0, ge=0)
    # Disclosure control, on the record counts sites declare in their signed headers:
    min_records: int = 0  # refuse a site's share summarising fewer records
    min_cell: int = 0  # refuse to compute a result over fewer records in all
    refuse_differencing: bool = True  # refuse a site set one site away from an earlier job's


class PartyConfig(BaseModel):
    """``parties/<party>.yaml``: where a party's kit, federation file and store are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kit: Path
    store: Path
    federation: Path | None = None  # default: the copy in the kit (public/federation.yaml)
    log_level: str = "info"
    policy: Policy = Policy()


def load_party_config(path: Path) -> PartyConfig:
    """Read a party config; relative paths are relative to the config file."""
    config = read_yaml_model(path, PartyConfig)
    base = Path(path).resolve().parent
    resolved = {
        k: (base / v if not Path(v).is_absolute() else Path(v))
        for k, v in (
            ("kit", config.kit),
            ("store", config.store),
            ("federation", config.federation),
        )
        if v is not None
    }
    return config.model_copy(update=resolved)
