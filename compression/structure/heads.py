"""Attention modules as single layers while Torch-Pruning traces a model.

:func:`traceable` attaches a :class:`HeadCore` to every attention module that
:mod:`compression.structure.attention` recognises: a layer standing for "query/key/value and the
attention itself", hidden states in, the attention context (query width) out. Hooks route the
context through the core with an autograd edge back to the hidden states only, so a trace sees
the core and never walks the attention's internals (rotary embeddings, grouped-query
``repeat_kv``, fused kernels: where Torch-Pruning's grouping loops or fails), and finds the
context's consumer (the output projection) itself. The values are unchanged; on exit the model
is exactly as before. :mod:`compression.structure.graph` registers the core's pruner with Torch-Pruning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from compression.structure import attention


class _Opaque(torch.autograd.Function):
    """Returns ``context`` with an autograd edge to ``hidden`` only (tracing sees core in->out)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, context: torch.Tensor, anchor: torch.Tensor):
        return context.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # never run: the graph is only traced
        return None, None, None


class HeadCore(nn.Module):
    """An attention module's heads as one layer of the dependency graph (see module docstring).

    Attached as a child of the attention module while the graph exists; it has no parameters.
    """

    def __init__(self, attn: nn.Module, layout: attention.HeadLayout) -> None:
        super().__init__()
        self.layout = layout
        self.__dict__["attn"] = attn  # not a child: the attention module is its parent
        # Keeps the core in the autograd graph when its input needs no gradient (a model input).
        self.__dict__["anchor"] = torch.zeros((), requires_grad=True)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return context
        return _Opaque.apply(hidden, context.detach(), self.anchor)


def _core_name(attn: nn.Module) -> str:
    return "heads" if not hasattr(attn, "heads") else "heads_"


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[dict[str, HeadCore]]:
    """Attach a :class:`HeadCore` to every attention module while the block runs.

    Yields the cores by their module names (``<attention>.heads``); on exit the model is exactly
    as before (cores and hooks removed).
    """
    cores: dict[str, HeadCore] = {}
    handles = []
    for name, layout in attention.find_layouts(model).items():
        attn = model.get_submodule(name) if name else model
        core = HeadCore(attn, layout)
        child = _core_name(attn)
        attn.add_module(child, core)
        cores[f"{name}.{child}" if name else child] = core
        handles += _route_context(attn, core, layout)
    try:
        yield cores
    finally:
        for h in handles:
            h.remove()
        for full in cores:
            parent, _, child = full.rpartition(".")
            delattr(model.get_submodule(parent) if parent else model, child)


def _route_context(attn: nn.Module, core: HeadCore, layout: attention.HeadLayout) -> list:
    """Hooks that send the attention's context through ``core`` (value unchanged)."""
    seen: dict[str, torch.Tensor] = {}

    def remember(module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor):
            seen["hidden"] = hidden

    def route(context: torch.Tensor) -> torch.Tensor:
        hidden = seen.get("hidden")
        return context if hidden is None else core(hidden, context)

    handles = [attn.register_forward_pre_hook(remember, with_kwargs=True)]
    if layout.context is not None:
        out_proj = attn.get_submodule(layout.context)
        handles.append(
            out_proj.register_forward_pre_hook(lambda m, args: (route(args[0]), *args[1:]))
        )
    else:

        def route_output(module, args, out):
            if isinstance(out, tuple):
                return (route(out[0]), *out[1:])
            return route(out)

        handles.append(attn.register_forward_hook(route_output))
    return handles
