"""Multi-round federated training (smpc.protocols.fedavg.training) through real processes:
``smpc local --trainer``.

Every site runs ``smpc site serve`` with a trainer, three party daemons and the
embedded broker run as for any job, and the analyst runs the rounds. The example
(examples/breast_cancer.py) trains logistic regression on scikit-learn's
breast-cancer data split 50/30/20 over three sites.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from smpc.errors import UserError
from smpc.local import run_local
from smpc.wire.messages import MAX_MODEL_BYTES, decode_model, encode_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "breast_cancer.py"
SPEC = ROOT / "examples" / "breast_cancer.yaml"

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def bc():
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import breast_cancer
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    return breast_cancer


def s2_down(model, round, *, site):
    """The example's trainer, except that site s2 never uploads (its training fails)."""
    from smpc.protocols.fedavg.training import load_trainer

    if site == "s2":
        raise RuntimeError("s2 is down")
    return load_trainer(f"{EXAMPLE}:train", site=site)(model, round)


def _plain_fedavg(bc, rounds: int, sites=("s0", "s1", "s2")):
    model = None
    for r in range(rounds):
        updates = [bc.train(model, r, site=s) for s in sites]
        total = sum(n for _, n in updates)
        model = {k: sum(m[k] * n for m, n in updates) / total for k in ("coef", "intercept")}
    return model


@pytest.mark.timeout(120)
def test_breast_cancer_federated_model_within_one_point_of_pooled(tmp_path, bc):
    out = tmp_path / "out"
    run_local(SPEC, {"s0": None, "s1": None, "s2": None}, out, trainer=f"{EXAMPLE}:train")
    history = json.loads((out / "history.json").read_text())["rounds"]
    rounds = len(history)
    assert rounds == 8
    assert all(h["sites"] == ["s0", "s1", "s2"] and h["num_examples"] == 569 for h in history)
    assert len({h["job"] for h in history}) == rounds
    assert sorted(p.name for p in (out / "rounds").iterdir()) == [
        f"model-r{k}.npz" for k in range(rounds)
    ]
    with np.load(out / "model.npz") as archive:
        model = {k: archive[k] for k in archive.files}
    # The secure rounds compute FedAvg exactly (up to fixed-point encoding, 2^-24 per site).
    plain = _plain_fedavg(bc, rounds)
    for name in ("coef", "intercept"):
        assert np.abs(model[name] - plain[name]).max() <= 1e-5
    federated, pooled = bc.accuracy(model), bc.accuracy(bc.pooled(rounds))
    print(f"accuracy on the pooled data: federated {federated:.4f}, pooled {pooled:.4f}")
    assert federated > 0.95
    assert abs(federated - pooled) <= 0.01


@pytest.mark.timeout(120)
def test_round_proceeds_with_the_sites_that_made_the_deadline(tmp_path, bc):
    spec = tmp_path / "fl.yaml"
    spec.write_text(
        "name: fl\nprotocol: fedavg\ninputs: [coef, intercept]\nrounds: 2\n"
        "round_timeout: 3\nmin_sites: 2\n"
    )
    out = tmp_path / "out"
    run_local(
        spec, {"s0": None, "s1": None, "s2": None}, out, trainer=f"{Path(__file__)}:s2_down",
        workdir=tmp_path / "work",
    )  # fmt: skip
    history = json.loads((out / "history.json").read_text())["rounds"]
    n0, n1 = (len(bc.site_slice(s)[1]) for s in ("s0", "s1"))
    assert [h["sites"] for h in history] == [["s0", "s1"], ["s0", "s1"]]
    assert all(h["num_examples"] == n0 + n1 for h in history)
    assert all(h["seconds"] >= 3 for h in history)  # each round waited for its deadline
    with np.load(out / "model.npz") as archive:
        plain = _plain_fedavg(bc, 2, sites=("s0", "s1"))
        assert np.abs(archive["coef"] - plain["coef"]).max() <= 1e-5
    assert "s2 is down" in (tmp_path / "work" / "s2.log").read_text()


@pytest.mark.timeout(60)
def test_too_few_sites_by_the_deadline_stops_training(tmp_path):
    spec = tmp_path / "fl.yaml"
    spec.write_text(
        "name: fl\nprotocol: fedavg\ninputs: [coef, intercept]\nrounds: 3\n"
        "round_timeout: 2\nmin_sites: 3\n"
    )
    with pytest.raises(UserError, match=r"round 1 of 3: .*fewer than min_sites 3"):
        run_local(
            spec, {"s0": None, "s1": None, "s2": None}, tmp_path / "out",
            trainer=f"{Path(__file__)}:s2_down",
        )  # fmt: skip
    assert not (tmp_path / "out" / "model.npz").exists()


def test_multi_round_spec_without_trainer_is_a_clear_error(tmp_path):
    spec = tmp_path / "fl.yaml"
    spec.write_text("name: fl\nprotocol: fedavg\nrounds: 3\nmin_sites: 1\n")
    data = tmp_path / "s0.npz"
    np.savez(data, w=np.zeros(2), num_examples=3)
    with pytest.raises(UserError, match="needs a trainer"):
        run_local(spec, {"s0": data}, tmp_path / "out", workdir=tmp_path / "work")


def test_global_model_travels_in_the_job_up_to_the_documented_size():
    model = {"w": np.arange(12.0).reshape(3, 4), "b": np.array(0.5)}
    back = decode_model(encode_model(model))
    assert set(back) == {"w", "b"} and np.array_equal(back["w"], model["w"])
    with pytest.raises(UserError, match="at most 4 MiB"):
        # random floats barely compress: 8 MiB of them stay above the limit
        encode_model({"w": np.random.default_rng(0).normal(size=MAX_MODEL_BYTES // 4)})
