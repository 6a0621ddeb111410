"""A site's own policy: the jobs it refuses to upload to, whatever the job says."""

from __future__ import annotations

import pytest

from smpc.core.field import FAST
from smpc.errors import UserError
from smpc.site.config import load_site_config
from smpc.site.policy import SitePolicy
from smpc.wire.messages import Job, JobInput


def _job(**changes) -> Job:
    fields = dict(
        id="j", inputs=(JobInput(name="x", frac_bits=0, int_bits=20),), t=1, n=3,
        modulus=FAST.modulus, analyst="analyst",
    )  # fmt: skip
    return Job(**{**fields, **changes})


@pytest.mark.parametrize(
    ("policy", "job", "reason"),
    [
        ({}, {"t": 0}, "threshold 0 is below this site's minimum 1"),
        ({}, {"min_sites": 1}, "min_sites 1 is below this site's minimum 2"),
        ({"analysts": ["analyst"]}, {"analyst": "eve"}, "analyst 'eve' is not one this site"),
        ({"protocols": ["sum"]}, {"protocol": "gwas"}, "protocol 'gwas' is not one this site"),
        ({"min_sites": 3}, {"min_sites": 2}, "min_sites 2 is below this site's minimum 3"),
    ],
)
def test_site_refuses_jobs_below_its_policy(policy, job, reason):
    assert reason in SitePolicy(**policy).refusal(_job(**job))


def test_default_site_policy_answers_a_default_job():
    assert SitePolicy().refusal(_job()) == ""
    assert SitePolicy(min_threshold=0, min_sites=1).refusal(_job(t=0, min_sites=1)) == ""


def test_site_config_carries_its_policy(tmp_path, keys_dir):
    config = tmp_path / "oslo.yaml"
    config.write_text(
        f"kit: {keys_dir / 'kits' / 'oslo'}\ninputs: {{x: data.csv:x}}\n"
        "policy: {analysts: [analyst], min_sites: 3}\n"
    )
    loaded = load_site_config(config)
    assert loaded.policy == SitePolicy(analysts=("analyst",), min_sites=3)
    kit = keys_dir / "kits" / "oslo"
    config.write_text(f"kit: {kit}\ninputs: {{x: d.csv:x}}\npolicy: {{t: 1}}\n")
    with pytest.raises(UserError, match="policy"):
        load_site_config(config)
