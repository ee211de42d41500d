"""The profile's numeric precision, applied after pruning with torch's own tooling.

- ``dtype`` float16/bfloat16 casts weights (the GPU profile; activations follow the weights).
- ``int8-dynamic`` quantizes Linear weights to int8 per output channel and activations on the
  fly (``torch.ao.quantization.quantize_dynamic``). It is deterministic, so a saved variant
  stores its float weights and re-applies it on load with identical results.

The search keeps a precision change only when it measurably speeds the variant up and the
metric stays within budget.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Linear layers run int8 dynamic quantization (per channel)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch deprecates torch.ao in favour of torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(
            copy.deepcopy(model), {nn.Linear: per_channel_dynamic_qconfig}, inplace=False
        )


def apply(model: nn.Module, dtype: str, quantization: str) -> nn.Module:
    """Return ``model`` in the given dtype and quantization (a copy when anything changes)."""
    if quantization == "int8-dynamic":
        return quantize_int8(model)
    if dtype != "float32":
        return copy.deepcopy(model).to(DTYPES[dtype])
    return model
