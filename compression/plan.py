"""The plan: what pruning changed in a model's structure, as JSON, and its replay.

A pruned model no longer matches its constructor. The plan records, per module, the size
attributes that differ from the original (``out_features``, ``num_attention_heads``, ...);
replaying it on a freshly built model resizes those modules so the saved weights load with
``strict=True``. Weights travel separately in safetensors; nothing is pickled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from compression import precision

if TYPE_CHECKING:
    from compression.profiles import DeviceProfile
    from compression.report import Candidate

# Plain attributes that hold sizes a module's forward reads.
SIZE_ATTRS = (
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "num_features",
    "normalized_shape",
    "num_attention_heads",
    "all_head_size",
)


def _sizes(module: nn.Module) -> dict:
    out = {}
    for attr in SIZE_ATTRS:
        value = module.__dict__.get(attr)
        if isinstance(value, int | tuple):
            out[attr] = list(value) if isinstance(value, tuple) else value
    return out


def structure_diff(original: nn.Module, pruned: nn.Module) -> dict[str, dict]:
    """Size attributes of ``pruned`` that differ from ``original``, by module name."""
    before = dict(original.named_modules())
    diff = {}
    for name, module in pruned.named_modules():
        now, then = _sizes(module), _sizes(before[name]) if name in before else {}
        changed = {k: v for k, v in now.items() if then.get(k) != v}
        if changed:
            diff[name] = changed
    return diff


def replay(
    model: nn.Module, structure: dict[str, dict], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Resize ``model`` in place to the plan's structure and the saved tensors' shapes."""
    for name, attrs in structure.items():
        module = model.get_submodule(name)
        for attr, value in attrs.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    for key, tensor in state.items():
        owner_name, _, attr = key.rpartition(".")
        owner = model.get_submodule(owner_name)
        current = getattr(owner, attr, None)
        if current is not None and current.shape == tensor.shape:
            continue
        empty = torch.empty(tensor.shape, dtype=tensor.dtype)
        if attr in owner._buffers:
            owner._buffers[attr] = empty
        else:  # a resized parameter, or one the rebuild added (a consumer's new bias)
            setattr(owner, attr, nn.Parameter(empty, requires_grad=False))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(f"weights do not match the plan: missing {missing}, unexpected {unexpected}")
    return model


def variant_plan(
    original: nn.Module,
    float_module: nn.Module,
    candidate: Candidate,
    profile: DeviceProfile,
    source: str | None,
) -> dict:
    """The plan of a chosen variant: its source, profile, structure and precision (plan.json)."""
    return {
        "source": source,
        "profile": profile.model_dump(),
        "structure": structure_diff(original, float_module),
        "dtype": candidate.precision if candidate.precision in precision.DTYPES else "float32",
        "quantization": "int8-dynamic" if candidate.precision == "int8-dynamic" else "none",
        "sparsity": candidate.sparsity,
    }
