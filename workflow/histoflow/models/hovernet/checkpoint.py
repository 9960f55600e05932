"""Published HoVer-Net checkpoints: key layout, loading, and the formula checkpoint.

TIAToolbox ships plain state dicts whose keys follow the original repository's module
names (`conv0./.weight`, `d0.units.1.preact/bn.weight`, `...dense.units.0.preact_bna/bn...`,
`...blk_bna.bn...`); the original repository (vqdang/hover_net) saves the same keys as
`{"desc": state_dict, ...}`, prefixed `module.` when trained under DataParallel.
`to_local` maps a published key to this package's module names and `to_published` back.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from histoflow.errors import ModelError
from histoflow.models.hovernet.net import HoVerNet, HoVerNetPlus

# published substring -> local substring, applied in this order
_RENAMES = (
    ("conv0./.", "conv0.conv."),
    ("preact_bna/bn", "preact_bn"),
    ("preact/bn", "preact_bn"),
    ("conv1/bn", "conv1_bn"),
    ("conv2/bn", "conv2_bn"),
    ("blk_bna.bn", "out_bn"),
)

# TIAToolbox's pretrained model names -> constructor of the matching architecture
PUBLISHED = {
    "hovernet_fast-pannuke": lambda: HoVerNet("fast", num_types=6),
    "hovernet_fast-monusac": lambda: HoVerNet("fast", num_types=5),
    "hovernet_original-consep": lambda: HoVerNet("original", num_types=5),
    "hovernet_original-kumar": lambda: HoVerNet("original", num_types=None),
    "hovernetplus-oed": lambda: HoVerNetPlus(num_types=3, num_layers=5),
}

_SHOWN = 5  # keys named in an error message


def published_model(name: str) -> HoVerNet:
    """The architecture (eval mode, untrained) of a TIAToolbox pretrained model name."""
    if name not in PUBLISHED:
        raise ModelError(f"unknown HoVer-Net model '{name}' (known: {', '.join(PUBLISHED)})")
    return PUBLISHED[name]().eval()


def to_local(key: str) -> str:
    """This package's name for a published checkpoint key."""
    for old, new in _RENAMES:
        key = key.replace(old, new)
    return key


def to_published(key: str) -> str:
    """The published (TIAToolbox / original repository) name of a local key."""
    for old, new in reversed(_RENAMES):
        key = key.replace(new, old)
    if ".dense.units." in key:  # dense units name their pre-activation preact_bna
        key = key.replace("preact/bn", "preact_bna/bn")
    return key


def unwrap_state_dict(obj: object, source: str = "state dict") -> dict[str, torch.Tensor]:
    """The plain state dict inside a loaded checkpoint: `{"desc": sd}` is unwrapped and a
    `module.` prefix (DataParallel) stripped; keys are mapped with `to_local`."""
    if isinstance(obj, Mapping) and isinstance(obj.get("desc"), Mapping):
        obj = obj["desc"]
    if not isinstance(obj, Mapping):
        raise ModelError(f"checkpoint '{source}' holds {type(obj).__name__}, not a state dict")
    state = {}
    for key, value in obj.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        state[to_local(name)] = value
    return state


def read_checkpoint(path: str | Path) -> object:
    """`torch.load(path, weights_only=True)` on the CPU, with errors naming the file."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"checkpoint '{path}' cannot be read as plain tensors with torch.load("
            "weights_only=True): it is not a torch file, or it needs arbitrary unpickling, "
            "which histoflow refuses (save a plain state_dict of tensors)"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"checkpoint '{path}' is not a readable torch file: {exc}") from exc


def load_checkpoint(source: str | Path | Mapping, model: nn.Module) -> nn.Module:
    """Load a TIAToolbox or original-repository HoVer-Net checkpoint into `model`, strictly.

    Args:
        source: a file path (read with `torch.load(weights_only=True)`) or an already
            loaded object: a state dict, or `{"desc": state_dict}`; keys may carry a
            `module.` prefix.
        model: a `HoVerNet` / `HoVerNetPlus` of the checkpoint's mode and branches.

    Returns:
        `model`, with every parameter and buffer replaced.

    Raises:
        ModelError: naming the file and the first missing, unexpected or mis-shaped keys
            (in the published naming).
    """
    name = str(source) if isinstance(source, str | Path) else "state dict"
    obj = read_checkpoint(source) if isinstance(source, str | Path) else source
    state = unwrap_state_dict(obj, name)
    problems = _mismatches(state, model.state_dict())
    if problems:
        raise ModelError(f"checkpoint '{name}' does not fit {type(model).__name__}: {problems}")
    model.load_state_dict(state, strict=True)
    return model


def _mismatches(state: Mapping, expected: Mapping) -> str:
    """What keeps `state` from loading strictly into a model with `expected` ('' if nothing)."""
    missing = [to_published(k) for k in expected if k not in state]
    unexpected = [to_published(k) for k in state if k not in expected]
    shapes = [
        f"{to_published(k)} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(v.shape)
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
            parts.append(f"{len(keys)} {label} keys: {', '.join(keys[:_SHOWN])}{more}")
    return "; ".join(parts)


def formula_tensor(key: str, shape: Iterable[int], dtype: str, k: int) -> torch.Tensor:
    """Entry `k` of the formula checkpoint of the reference outputs (README of
    `shared/reference/hovernet`): s[i] = sin(0.7 i + 1.3 k), scaled by the entry's role."""
    shape = tuple(shape)
    torch_dtype = getattr(torch, dtype)
    if not torch_dtype.is_floating_point:
        return torch.zeros(shape, dtype=torch_dtype)
    if key.endswith("unpool_mat"):
        return torch.ones(shape, dtype=torch_dtype)
    n = math.prod(shape)
    s = np.sin(0.7 * np.arange(n, dtype=np.float64) + 1.3 * k)
    if key.endswith("running_var"):
        v = 0.5 + s**2
    elif key.endswith("running_mean"):
        v = 0.1 * s
    elif len(shape) >= 2:
        v = s * math.sqrt(2.0 / (n / shape[0]))
    elif key.endswith(".weight"):
        v = 1.0 + 0.1 * s
    else:
        v = 0.05 * s
    return torch.from_numpy(v.reshape(shape)).to(torch_dtype)


def formula_state_dict(entries: Iterable) -> dict[str, torch.Tensor]:
    """The formula checkpoint for a key listing: `entries` is [(key, shape, dtype), ...]
    in listing order, as in `tiatoolbox-2.1.3-nucleus-checkpoint-keys.json`; keys are
    kept in the published naming."""
    return {
        key: formula_tensor(key, shape, dtype, k) for k, (key, shape, dtype) in enumerate(entries)
    }
