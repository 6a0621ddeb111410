"""What a site shares for a job: named inputs as given, or its protocol's local statistics."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from smpc.config.federation import Federation
from smpc.io.inputs import read_input
from smpc.protocols.base import SiteData, SiteSource
from smpc.protocols.registry import parse_spec, protocol
from smpc.wire.messages import Job


def site_inputs(source: SiteSource, federation: Federation) -> Callable[[Job], SiteData]:
    """What this site shares for a job: its protocol's local statistics from ``source``
    (:meth:`smpc.protocols.base.Protocol.site_data`).

    A job whose own input names are all among the site's named inputs gets those arrays
    as they are, whatever its protocol.
    """

    def compute(job: Job) -> SiteData:
        if source.inputs is not None and all(s.name in source.inputs for s in job.inputs):
            # the encoding's bound checked while reading, so an error names file and row
            return SiteData(
                {
                    s.name: read_input(source.inputs[s.name], s.name, bound=2.0**s.int_bits)
                    for s in job.inputs
                }
            )
        spec = parse_spec(job.spec, f"job {job.id}", federation)
        return protocol(job.protocol).site_data(spec, job, source)

    return compute


def configured_inputs(
    sources: Mapping[str, str], federation: Federation, site: str = ""
) -> Callable[[Job], SiteData]:
    """Inputs from a site's ``NAME: SOURCE`` assignments (``inputs:``, ``--input``): the
    spec's inputs (``age``, ``bmi``; a fedavg model's arrays and ``num_examples``)."""
    return site_inputs(SiteSource(site=site, inputs=sources), federation)


def protocol_inputs(
    data: Path, federation: Federation, site: str = ""
) -> Callable[[Job], SiteData]:
    """Inputs computed from a site's data file by the job's protocol (its local statistics)."""
    return site_inputs(SiteSource(site=site, data=data), federation)
