"""The plan: what pruning changed in a model's structure, as JSON, and its replay.

A pruned model no longer matches its constructor. The plan records, per module, the size
attributes that differ from the original (``out_features``, ``num_attention_heads``, ...);
replaying it on a freshly built model resizes those modules so the saved weights load with
``strict=True``. Weights travel separately in safetensors; nothing is pickled.
"""

from __future__ import annotations

import torch
from torch import nn

from compression.core.candidate import Candidate
from compression.forms import precision
from compression.profiles import DeviceProfile

# Size attributes recorded even when they are tuples (normalized_shape of a LayerNorm).
SIZE_ATTRS = ("normalized_shape", "kernel_size")
CONFIG_KEY = "<config>"  # the model config's changed integer fields, in the structure


def _sizes(module: nn.Module) -> dict:
    """The module's integer attributes (and tuple sizes): every count ``forward`` might read,
    from ``out_features`` to ``num_key_value_heads`` and GPT-2's ``split_size``."""
    out = {}
    for attr, value in vars(module).items():
        if attr.startswith("_") or isinstance(value, bool):
            continue
        if isinstance(value, int):
            out[attr] = value
        elif attr in SIZE_ATTRS and isinstance(value, tuple):
            out[attr] = list(value)
    return out


def _config_ints(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return {}
    return {k: v for k, v in vars(config).items() if isinstance(v, int) and not isinstance(v, bool)}


def structure_diff(original: nn.Module, pruned: nn.Module) -> dict[str, dict]:
    """Size attributes of ``pruned`` that differ from ``original``, by module name, and the
    model config's changed integer fields under ``<config>``."""
    before = dict(original.named_modules())
    diff = {}
    for name, module in pruned.named_modules():
        now, then = _sizes(module), _sizes(before[name]) if name in before else {}
        changed = {k: v for k, v in now.items() if then.get(k) != v}
        if changed:
            diff[name] = changed
    then = _config_ints(original)
    config = {k: v for k, v in _config_ints(pruned).items() if then.get(k) != v}
    if config:
        diff[CONFIG_KEY] = config
    return diff


def replay(
    model: nn.Module, structure: dict[str, dict], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Resize ``model`` in place to the plan's structure and the saved tensors' shapes."""
    for name, attrs in structure.items():
        if name == CONFIG_KEY:
            for attr, value in attrs.items():
                setattr(model.config, attr, value)
            continue
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


def tied_names(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Entries of a state dict that are the same tensor as an earlier entry (tied weights, such
    as a language model head sharing its embedding), mapped to that entry's name."""
    seen: dict[tuple, str] = {}
    tied = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if key in seen and t.numel():
            tied[name] = seen[key]
        else:
            seen.setdefault(key, name)
    return tied
