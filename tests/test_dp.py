"""Distributed differential privacy: the accountant, clipping, and the noise the parties add.

The statistical tests run the whole federation (``smpc local``) on 3,000-value sums and
check the opened noise (secure result minus the clipped plaintext sum) against the
Skellam plan: its standard deviation within 8 % (the sample standard deviation of
3,000 draws errs by about 1.3 %, so 8 % is six standard errors) and its mean within
six standard errors of zero.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from smpc.config.spec import DP
from smpc.core import dp
from smpc.local import run_local
from smpc.protocols.fedavg.protocol import fedavg_statistics


def test_calibration_is_the_smallest_mu_meeting_epsilon():
    sens = dp.sensitivity([(10,)], clip=1.0, frac_bits=16)
    mu = dp.calibrate(1.0, 1e-6, sens, compositions=1)
    assert dp.epsilon_for(mu, sens, 1, 1e-6) <= 1.0
    assert dp.epsilon_for(mu * 0.99, sens, 1, 1e-6) > 1.0


def test_noise_grows_with_rounds_and_shrinks_with_epsilon():
    sens = dp.sensitivity([(100,)], clip=0.5, frac_bits=20)
    one = dp.calibrate(2.0, 1e-5, sens, 1)
    assert dp.calibrate(2.0, 1e-5, sens, 10) > 5 * one  # composition over rounds
    assert dp.calibrate(4.0, 1e-5, sens, 1) < one / 2


def test_skellam_is_close_to_the_gaussian_mechanism_for_large_noise():
    """Leading term: Gaussian with variance 2 mu; the analytic Gaussian RDP bound agrees."""
    sens = dp.sensitivity([(1,)], clip=1.0, frac_bits=24)
    mu = dp.calibrate(1.0, 1e-6, sens, 1)
    sigma2 = 2 * mu
    gaussian = min(a * sens.l2**2 / (2 * sigma2) + math.log(1e6) / (a - 1) for a in dp.ORDERS)
    assert gaussian == pytest.approx(1.0, rel=0.02)


def test_any_n_minus_t_parties_draw_enough():
    plan = dp.plan(DP(epsilon=1.0, clip=1.0), [(5,)], parties=5, threshold=2, frac_bits=16)
    assert plan.per_party * 3 == pytest.approx(plan.mu)
    assert plan.std == pytest.approx(plan.guaranteed_std * math.sqrt(5 / 3))
    assert plan.delta == dp.DEFAULT_DELTA


@pytest.mark.parametrize("mu", [1e6, 1e15])
def test_skellam_draws_have_the_right_variance(mu):
    draws = dp.skellam(mu, (200_000,))
    assert draws.dtype == np.int64
    assert np.var(draws.astype(np.float64)) == pytest.approx(2 * mu, rel=0.02)


def test_clipping_bounds_every_record_and_update():
    rows = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped = dp.clip_rows(rows, 1.0)
    assert np.allclose(clipped, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    assert np.allclose(dp.clip_rows(np.array([5.0, -0.5, -7.0]), 2.0), [2.0, -0.5, -2.0])
    update = fedavg_statistics(
        ["w", "b"],
        {"w": np.full((2, 2), 3.0), "b": np.array([1.0])},
        7,
        "test",
        clip=1.0,
        base={"w": np.full((2, 2), 1.0), "b": np.array([1.0])},
    )
    norm = math.sqrt(sum(float(np.sum(update[k] ** 2)) for k in ("w.weighted", "b.weighted")))
    assert norm == pytest.approx(1.0)
    assert int(update["num_examples"]) == 7  # exact, public, not a weight under dp
    assert np.all(update["b.weighted"] == 0)  # the update is taken from the global model


def _noise_check(noise: np.ndarray, std: float) -> None:
    assert np.std(noise) == pytest.approx(std, rel=0.08)
    assert abs(np.mean(noise)) <= 6 * std / math.sqrt(noise.size)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("parties", "threshold", "scheme", "deliver"),
    [(3, 1, "shamir", "analyst"), (3, 2, "additive", "analyst"), (3, 1, "shamir", "parties")],
)
def test_secure_sum_carries_noise_of_the_planned_scale(
    tmp_path, parties, threshold, scheme, deliver
):
    rng = np.random.default_rng(parties + threshold)
    sites, clipped = {}, []
    for i, n in enumerate((6, 9)):
        x = rng.normal(0, 1, size=(n, 3000)) * rng.uniform(0.01, 0.1, size=(n, 1))
        x[0] *= 200  # a record far beyond the clip bound
        np.savez(tmp_path / f"s{i}.npz", x=x)
        sites[f"s{i}"] = tmp_path / f"s{i}.npz"
        clipped.append(dp.clip_rows(x, 2.0).sum(axis=0))
    spec = tmp_path / "noisy.yaml"
    spec.write_text(
        "name: noisy\nprotocol: sum\ninputs: [x]\n"
        f"scheme: {scheme}\ndeliver: {deliver}\n"
        "dp: {epsilon: 2.0, delta: 1.0e-6, clip: 2.0}\n"
        "encoding: {frac_bits: 16, int_bits: 30}\n"
    )
    run_local(spec, sites, tmp_path / "out", parties=parties, threshold=threshold)
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["x"]["count"] == [15] * 3000  # counts stay exact
    plan = dp.plan(
        DP(epsilon=2.0, delta=1e-6, clip=2.0),
        [(3000,)],
        parties=parties,
        threshold=threshold,
        frac_bits=16,
    )
    assert result["dp"]["noise_std"] == pytest.approx(plan.std)
    assert result["dp"]["epsilon"] <= 2.0
    noise = np.asarray(result["x"]["sum"]) - sum(clipped)
    _noise_check(noise, plan.std)


@pytest.mark.timeout(240)
def test_fedavg_with_dp_averages_clipped_updates_over_sites(tmp_path):
    rng = np.random.default_rng(11)
    sites, models = {}, []
    for i, n in enumerate((10, 500, 40)):
        model = {"w": rng.normal(0, 0.01, size=(50, 40))}
        np.savez(tmp_path / f"s{i}.npz", num_examples=n, **model)
        sites[f"s{i}"] = tmp_path / f"s{i}.npz"
        models.append(model["w"])
    spec = tmp_path / "round.yaml"
    spec.write_text(
        "name: round\nprotocol: fedavg\ndp: {epsilon: 1.0, clip: 10.0}\n"
    )  # the dp default encoding: 16 fractional bits for clip 10
    run_local(spec, sites, tmp_path / "out", parties=3, threshold=1)
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    assert summary["num_examples"] == 550
    assert summary["dp"]["epsilon"] <= 1.0
    with np.load(tmp_path / "out" / "model.npz") as got:
        noise = (got["w"] - np.mean(models, axis=0)) * 3  # the sum's noise, not the mean's
    _noise_check(noise, summary["dp"]["noise_std"])


TRAINER = """
import numpy as np


def train(model, round, site):
    w = np.zeros(3000) if model is None else model["w"]
    return {"w": w + 0.25}, 10
"""


@pytest.mark.timeout(240)
def test_training_rounds_share_one_budget(tmp_path):
    """Two dp rounds: each update (0.25 per value) is clipped; the budget covers both."""
    (tmp_path / "steps.py").write_text(TRAINER)
    spec = tmp_path / "steps.yaml"
    spec.write_text(
        "name: steps\nprotocol: fedavg\ninputs: [w]\nrounds: 2\n"
        "dp: {epsilon: 4.0, delta: 1.0e-5, clip: 5.0}\n"
    )
    sites = {"s0": None, "s1": None, "s2": None}
    run_local(spec, sites, tmp_path / "out", trainer=f"{tmp_path / 'steps.py'}:train")
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert history["dp"]["rounds"] == 2
    assert history["dp"]["epsilon"] <= 4.0
    one_round = dp.plan(
        DP(epsilon=4.0, delta=1e-5, clip=5.0), [(3000,)], parties=3, threshold=1,
        frac_bits=dp.default_frac_bits(5.0),
    )  # fmt: skip
    assert history["dp"]["noise_std"] > 1.3 * one_round.std  # about sqrt(2) more noise
    update_norm = 0.25 * math.sqrt(3000)  # 13.7: clipped to 5 at every site
    with np.load(tmp_path / "out" / "model.npz") as got:
        # two rounds of the clipped update averaged over 3 sites, plus each round's noise
        noise = (got["w"] - 2 * 0.25 * 5.0 / update_norm) * 3 / math.sqrt(2)
    _noise_check(noise, history["dp"]["noise_std"])
