"""Model files of federated averaging: NumPy ``.npz``, ``.safetensors``, PyTorch state dicts.

A site's model file holds named parameter arrays and, as its weight, the number of
examples it was trained on (``num_examples``, Flower's name):

- ``.npz`` — the arrays plus a scalar array ``num_examples``;
- ``.safetensors`` — the tensors plus ``num_examples`` either as a scalar tensor or in
  the file's string metadata (``{"num_examples": "120"}``), read with ``safetensors``'
  NumPy API (no PyTorch needed);
- ``.pt`` / ``.pth`` — a PyTorch state dict saved with ``torch.save``, either the state
  dict itself (with a ``num_examples`` entry) or ``{"state_dict": ..., "num_examples":
  n}``; read with ``torch.load(weights_only=True)``, which refuses pickled code, and
  only when PyTorch is installed. Nested module names keep their dotted keys
  (``layer.0.weight``), bfloat16 becomes float32.

The global model is written back in the same three formats (:func:`write_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from smpc.errors import UserError
from smpc.io.npyfile import load_npz

NUM_EXAMPLES = "num_examples"
SUFFIXES = (".npz", ".safetensors", ".pt", ".pth")


def read_model(path: str | Path) -> tuple[dict[str, np.ndarray], int | None]:
    """The parameter arrays of a model file and its ``num_examples`` (None if absent)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _split_weight(load_npz(path), {}, path)  # no pickle, no oversized array
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.numpy import load_file

        try:
            arrays = load_file(path)
            with safe_open(path, framework="numpy") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
        return _split_weight(arrays, metadata, path)
    if suffix in (".pt", ".pth"):
        return _read_torch(path)
    raise UserError(f"{path}: a model file is one of {', '.join(SUFFIXES)}")


def _split_weight(
    arrays: dict[str, Any], metadata: Mapping[str, Any], path: Path
) -> tuple[dict[str, np.ndarray], int | None]:
    """Separate ``num_examples`` (an entry or metadata) from the parameter arrays."""
    weight = arrays.pop(NUM_EXAMPLES, metadata.get(NUM_EXAMPLES))
    if weight is None:
        return arrays, None
    try:
        value = np.asarray(weight if not isinstance(weight, str) else float(weight))
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number < 0 or number != int(number):
        raise UserError(f"{path}: num_examples must be one non-negative integer")
    return arrays, int(number)


def _read_torch(path: Path) -> tuple[dict[str, np.ndarray], int | None]:
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{path}: reading PyTorch files needs PyTorch (pip install torch), or save the "
            "model as .safetensors"
        ) from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or unsafe files
        raise UserError(f"{path}: not a PyTorch state dict loadable safely ({exc})") from None
    if not isinstance(loaded, Mapping):
        raise UserError(f"{path}: expected a state dict (a mapping of names to tensors)")
    weight = loaded.get(NUM_EXAMPLES)
    state = loaded.get("state_dict", loaded)
    arrays: dict[str, Any] = {}
    for name, tensor in state.items():
        if name == NUM_EXAMPLES:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"{path}: entry {name!r} is not a tensor")
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        arrays[name] = tensor.numpy()
    if weight is not None:
        arrays[NUM_EXAMPLES] = weight.item() if isinstance(weight, torch.Tensor) else weight
    return _split_weight(arrays, {}, path)


def write_model(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write a model in the format its suffix names (.npz, .safetensors, .pt/.pth)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        named: dict[str, Any] = dict(arrays)
        np.savez(path, **named)
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, path)
    elif suffix in (".pt", ".pth"):
        import torch

        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, path)
    else:
        raise UserError(f"{path}: a model file is one of {', '.join(SUFFIXES)}")
    return path
