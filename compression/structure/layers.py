"""Layer kinds: every prunable layer seen as ``y = W x + b`` over rows of channels.

The activation-aware criteria and the rebuild ladder work on matrices: a layer's weight as
``[out, in * kernel]`` and its inputs and outputs as rows of channels. How to get them depends
on the kind of layer, and only on that:

- ``linear``   :class:`torch.nn.Linear`, channels last, any leading dims (tokens, or the pixels
               of a channels-last ConvNeXt block whose norm and pointwise convs are Linear)
- ``conv``     :class:`torch.nn.Conv1d`/``Conv2d``/``Conv3d``, channels at dim 1; an input row is
               one kernel window (unfolded), so a refit solves for the whole kernel
- ``conv1d_t`` transformers' ``Conv1D`` (GPT-2): a Linear whose weight is stored ``[in, out]``

A step that cannot handle a layer (a grouped conv, a string padding) learns it from
:func:`unsupported` and says so in the report instead of failing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from compression.core.inputs import flat_tokens

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def is_transposed_linear(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's layers): ``x @ W + b`` with ``W`` of shape ``[in, out]``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def kind(module: nn.Module) -> str | None:
    """``linear``, ``conv``, ``conv1d_t``, or None for a layer the engine does not rewrite."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _CONVS):
        return "conv"
    if is_transposed_linear(module):
        return "conv1d_t"
    return None


def is_grouped(module: nn.Module) -> bool:
    """A grouped or depthwise conv: each output sees only its group's input channels."""
    return getattr(module, "groups", 1) != 1


def unsupported(module: nn.Module) -> str | None:
    """Why a weight-rewriting step (bias compensation, refit) cannot apply, or None."""
    k = kind(module)
    if k is None:
        return f"{type(module).__name__} is not a Linear, Conv or Conv1D layer"
    if k == "conv":
        if is_grouped(module):
            return f"grouped conv (groups={module.groups})"
        if isinstance(module.padding, str) and module.padding != "valid":
            return f"padding={module.padding!r}"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}"
    return None


def weight(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out, in, *kernel]`` (a view for Linear/Conv, transposed for Conv1D)."""
    w = module.weight
    return w.T if kind(module) == "conv1d_t" else w


def matrix(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out, in * kernel]``: column ``c * kernel + j`` reads input channel c."""
    w = weight(module)
    return w.reshape(w.shape[0], -1)


def set_matrix(module: nn.Module, w: torch.Tensor) -> None:
    """Overwrite the weight from a ``[out, in * kernel]`` matrix (inverse of :func:`matrix`)."""
    target = weight(module)
    w = w.reshape(target.shape).to(target.dtype)
    with torch.no_grad():
        module.weight.copy_(w.T if kind(module) == "conv1d_t" else w)


def out_features(module: nn.Module) -> int:
    return weight(module).shape[0]


def ensure_bias(module: nn.Module) -> torch.Tensor:
    """The layer's bias, created as zeros when it has none."""
    if module.bias is None:
        w = module.weight
        module.bias = nn.Parameter(
            torch.zeros(out_features(module), dtype=w.dtype, device=w.device)
        )
    return module.bias


def channel_rows(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A layer's input as rows of its input channels (tokens or pixels x C)."""
    if kind(module) == "conv":
        return x.transpose(0, 1).reshape(x.shape[1], -1).T
    return flat_tokens(x, mask)


def output_rows(module: nn.Module, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A layer's output as rows of its output channels."""
    return channel_rows(module, y, mask)


def _conv_padding(module: nn.Module) -> tuple[int, ...]:
    if isinstance(module.padding, str):  # "valid" (unsupported() refuses "same")
        return (0,) * len(module.kernel_size)
    return tuple(module.padding)


def input_rows(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows the weight matrix multiplies: one kernel window per output position for a conv
    (``C * kernel`` columns, in :func:`matrix`'s order), one token per row otherwise."""
    if kind(module) != "conv":
        return flat_tokens(x, mask)
    if isinstance(module, nn.Conv2d):
        cols = nn.functional.unfold(
            x,
            module.kernel_size,
            dilation=module.dilation,
            padding=_conv_padding(module),
            stride=module.stride,
        )
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    dims = len(module.kernel_size)
    pad = _conv_padding(module)
    x = nn.functional.pad(x, [p for p in reversed(pad) for _ in range(2)])
    for i, (k, d, s) in enumerate(
        zip(module.kernel_size, module.dilation, module.stride, strict=True)
    ):
        x = x.unfold(2 + i, (k - 1) * d + 1, s)[..., ::d]
    # [N, C, o_1..o_n, k_1..k_n] -> [N, o_1..o_n, C, k_1..k_n] -> rows of C * prod(k)
    order = [0, *range(2, 2 + dims), 1, *range(2 + dims, 2 + 2 * dims)]
    x = x.permute(order)
    return x.reshape(-1, x.shape[1 + dims] * math.prod(module.kernel_size))
