"""Activation smoothing for int8: move the activations' outlier channels into the weights.

torch's dynamic int8 (:func:`compression.forms.precision.quantize_int8`) quantizes each Linear
layer's weights per output channel, but its input with **one** scale per tensor. Transformer
activations have a few channels far larger than the rest (MiniLM's LayerNorm outputs), so
that one scale spends the int8 range on them and rounds the other channels coarsely. The fix
of SmoothQuant (Xiao et al., 2023) is exact in float: for a per-input-channel ``s``,

    y = x W^T + b = (x / s) (W diag(s))^T + b

and with ``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)`` the input's channels come out
evened and the weights, quantized per output channel, absorb the difference.
:class:`SmoothedLinear` divides its input by ``s`` (an elementwise product per call) and runs
the int8 Linear of ``W diag(s)``.

``alpha`` is chosen per model by the loss it leaves (:func:`choose_alpha`; the search measures
fidelity on its selection split, data the scales were not computed from), with no smoothing
among the choices, so a model whose activations have no outliers keeps plain int8.
On MiniLM the strengths from 0.7 up keep clearly more fidelity and neighbour recall than
plain int8, and 0.5 keeps less (plain against smoothed int8 on held-out text:
``benchmarks/results/claims.md``, from ``python -m benchmarks.claims``). The per-call division
makes a smoothed variant slightly slower than plain int8; the search measures that like any
other cost.

The scales depend on calibration data, so a variant stores them (``smoothing.safetensors``,
checksummed in the plan) and :func:`apply` puts them back on load.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from compression.core.inputs import Batch, call

# The strengths tried; None is plain int8 (no smoothing). SmoothQuant's 0.5 is not among them:
# on MiniLM it left more calibration error than plain int8 where the higher strengths left far
# less, and each strength tried costs a forward over the selection split.
ALPHAS: tuple[float | None, ...] = (None, 0.65, 0.8, 0.9)
# Scales are kept in this range: a dead channel (max 0) or a zero weight column must not give
# an infinite or zero scale.
EPS = 1e-5


class SmoothedLinear(nn.Module):
    """A Linear layer run as int8 on a smoothed input: ``linear(x * inv_scale)``.

    ``linear`` is the dynamically quantized Linear of ``W diag(s)``; ``inv_scale`` is ``1 / s``.
    ``in_features`` / ``out_features`` read like the Linear's (what callers that size heads
    read).
    """

    def __init__(self, linear: nn.Module, inv_scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("inv_scale", inv_scale.detach().float().contiguous())
        self.in_features = int(inv_scale.numel())
        self.out_features = int(linear.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


def input_ranges(model: nn.Module, batches: list[Batch]) -> dict[str, torch.Tensor]:
    """The largest ``|x_j|`` of every input channel of every ``nn.Linear`` in ``model`` over
    ``batches``, by the layer's qualified name.

    Called on the form that will be served: a packed-token module
    (:mod:`compression.forms.packing`) shows the Linear layers its real tokens only, where a padded
    forward would also show the padding positions' activations.
    """
    found: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable:
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0].detach()
            top = x.reshape(-1, x.shape[-1]).abs().amax(0).float()
            found[name] = torch.maximum(found[name], top) if name in found else top

        return record

    handles = [
        m.register_forward_hook(hook(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        with torch.inference_mode():
            for b in batches:
                call(model, b)
    finally:
        for h in handles:
            h.remove()
    return found


def scales(
    model: nn.Module, ranges: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``s`` per Linear layer of ``model`` (by name) for a smoothing strength ``alpha``.

    ``ranges`` come from :func:`input_ranges` on a module whose Linear layers have the same
    names, possibly under a prefix (a wrapper's ``model.``); layers it has no range for are not
    smoothed. Layers that read the same input (equal ranges: a transformer's query, key and
    value) share one ``s``, from the largest weight of each input channel over all of them,
    so that input is smoothed once and the layers run as one int8 product
    (:func:`compression.forms.precision.fused_int8`).
    """
    groups: list[tuple[torch.Tensor, list[tuple[str, nn.Linear]]]] = []
    for name, layer in model.named_modules():
        if not isinstance(layer, nn.Linear) or layer.in_features == 0:
            continue
        top = _lookup(ranges, name)
        if top is None or top.numel() != layer.in_features:
            continue
        same = [g for g in groups if g[0].shape == top.shape and torch.equal(g[0], top)]
        if same:
            same[0][1].append((name, layer))
        else:
            groups.append((top, [(name, layer)]))
    out = {}
    for top, layers in groups:
        w = torch.stack([layer.weight.detach().abs().amax(0).float() for _, layer in layers])
        w = w.amax(0).clamp(min=EPS)
        s = (top.clamp(min=EPS) ** alpha / w ** (1.0 - alpha)).clamp(min=EPS, max=1.0 / EPS)
        out |= {name: s.clone() for name, _ in layers}  # one tensor each: safetensors saves them
    return out


def _lookup(ranges: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
    if name in ranges:
        return ranges[name]
    hits = [v for k, v in ranges.items() if k.endswith("." + name)]
    return hits[0] if len(hits) == 1 else None


def apply(model: nn.Module, found: dict[str, torch.Tensor]) -> nn.Module:
    """``model`` (modified in place: pass a copy) with each Linear named in ``found`` replaced by
    the int8 :class:`SmoothedLinear` of its scale; the other layers are left for the caller's
    int8 pass."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    for name, s in found.items():
        layer = model.get_submodule(name)
        scaled = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
        with torch.no_grad():
            scaled.weight.copy_(layer.weight.detach().float() * s[None, :])
            if layer.bias is not None:
                scaled.bias.copy_(layer.bias.detach().float())
        with warnings.catch_warnings():  # torch deprecates torch.ao in favour of torchao
            warnings.simplefilter("ignore")
            q = quantize_dynamic(
                nn.Sequential(scaled), {nn.Linear: per_channel_dynamic_qconfig}, inplace=True
            )[0]
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, SmoothedLinear(q, 1 / s))
    return model


def scales_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """The ``s`` of every :class:`SmoothedLinear` in ``module``, by its name (what a variant
    saves)."""
    return {
        name: (1.0 / m.inv_scale).contiguous()
        for name, m in module.named_modules()
        if isinstance(m, SmoothedLinear)
    }


def choose_alpha(
    error: Callable[[float | None], float], alphas: tuple[float | None, ...] = ALPHAS
) -> tuple[float | None, dict[float | None, float]]:
    """The strength whose int8 model leaves the least loss, and every loss.

    ``error(alpha)`` measures one (``None``: plain int8). Ties go to the earlier entry, so a
    model smoothing does not help keeps plain int8.
    """
    errors = {a: error(a) for a in alphas}
    best = min(alphas, key=lambda a: (errors[a], alphas.index(a)))
    return best, errors
