"""Model files for fedavg: .npz, .safetensors and PyTorch state dicts, read and written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from smpc.errors import UserError
from smpc.io.modelfile import read_model, write_model
from smpc.local import run_local


def _model(rng):
    return {
        "layer.0.weight": rng.normal(size=(5, 3)).astype(np.float32),
        "bias": rng.normal(size=3),
    }


def test_safetensors_weight_from_metadata_or_tensor(tmp_path):
    model = _model(np.random.default_rng(1))
    save_file(model, tmp_path / "a.safetensors", metadata={"num_examples": "120"})
    save_file({**model, "num_examples": np.array(7)}, tmp_path / "b.safetensors")
    for name, weight in (("a", 120), ("b", 7)):
        arrays, n = read_model(tmp_path / f"{name}.safetensors")
        assert n == weight
        assert sorted(arrays) == sorted(model)
        for key, value in model.items():
            assert arrays[key].dtype == value.dtype
            assert np.array_equal(arrays[key], value)


@pytest.mark.parametrize("weight", ["-3", "2.5", "lots"])
def test_bad_weight_is_refused_naming_the_file(tmp_path, weight):
    save_file(
        _model(np.random.default_rng(2)), tmp_path / "m.safetensors", {"num_examples": weight}
    )
    with pytest.raises(UserError, match=r"m\.safetensors: num_examples must be"):
        read_model(tmp_path / "m.safetensors")


def test_not_a_model_file(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        read_model(tmp_path / "m.safetensors")
    (tmp_path / "m.h5").write_bytes(b"")
    with pytest.raises(UserError, match=r"one of \.npz, \.safetensors"):
        read_model(tmp_path / "m.h5")


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_write_then_read_round_trip(tmp_path, suffix):
    model = _model(np.random.default_rng(3))
    arrays, n = read_model(write_model(tmp_path / f"m{suffix}", model))
    assert n is None
    assert all(np.array_equal(arrays[k], v) for k, v in model.items())


def test_pytorch_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    torch.save({"state_dict": net.state_dict(), "num_examples": 42}, tmp_path / "m.pt")
    arrays, n = read_model(tmp_path / "m.pt")
    assert n == 42
    assert sorted(arrays) == ["0.bias", "0.weight"]
    assert np.array_equal(arrays["0.weight"], net.state_dict()["0.weight"].numpy())


@pytest.mark.timeout(180)
def test_fedavg_of_safetensors_sites_equals_numpy(tmp_path):
    rng = np.random.default_rng(4)
    sites, models = {}, []
    for i, n in enumerate((12, 300, 45)):
        model = _model(rng)
        save_file(model, tmp_path / f"s{i}.safetensors", metadata={"num_examples": str(n)})
        sites[f"s{i}"] = tmp_path / f"s{i}.safetensors"
        models.append((n, model))
    spec = tmp_path / "round.yaml"
    spec.write_text("name: round\nprotocol: fedavg\n")
    run_local(spec, sites, tmp_path / "out", parties=3, threshold=1)
    total = sum(n for n, _ in models)
    got, _ = read_model(tmp_path / "out" / "model.safetensors")
    with np.load(tmp_path / "out" / "model.npz") as npz:
        for name in ("layer.0.weight", "bias"):
            want = sum(n * m[name].astype(np.float64) for n, m in models) / total
            assert np.abs(npz[name] - want).max() <= 1e-6
            assert np.array_equal(got[name], npz[name])
    assert json.loads((tmp_path / "out" / "result.json").read_text())["num_examples"] == total
