"""The one door to Torch-Pruning: trace, enumerate prunable groups, score with its criteria, cut.

Torch-Pruning's dependency graph knows which layers are coupled (a conv and its BatchNorm, the
two sides of a residual add, a gated MLP's gate/up projections and its down projection). This
module turns its groups into :class:`PruneUnit` records the rest of the engine can reason
about without importing ``torch_pruning`` (only this module does).

What it adds to Torch-Pruning, with Torch-Pruning's own extension points
(``customized_pruners``, as its Swin example does for patch merging):

- **Attention heads.** Each attention module found by :mod:`compression.structure.attention` becomes one
  customised layer, a :class:`~compression.structure.heads.HeadCore` (see :mod:`compression.structure.heads`), so
  tracing never walks attention internals; cutting the core cuts whole heads through the
  layout, and Torch-Pruning cuts the output projection's columns with it.
- **transformers' ``Conv1D``** (GPT-2) prunes as a Linear with its weight transposed.
- **A time limit** on tracing and grouping (:mod:`compression.core.timelimit`), with an error naming
  the module it stopped at.

Upstream: https://github.com/VainF/Torch-Pruning (``DependencyGraph``, ``Group``,
``BasePruningFunc``).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from compression.core.errors import UntraceableModelError
from compression.core.inputs import Batch, call, main_output
from compression.core.timelimit import TraceTimeout, with_time_limit
from compression.structure import attention, layers
from compression.structure.heads import HeadCore, traceable

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Groups touching these keep their width: the embedding/hidden size of a transformer is shared by
# every layer and by the model's output, so cutting it changes what the model returns.
_KEEP_WIDTH = (nn.Embedding, nn.LayerNorm)
TRACE_TIME_LIMIT_S = 60.0


@dataclass
class PruneUnit:
    """One prunable group: the channels of ``root`` and everything coupled to them.

    ``granule`` channels are removed together (a whole attention head or key/value group, else
    1 channel). ``consumers`` are the layers whose *input* channels the cut removes: the rebuild
    step refits exactly these. ``producers`` are the layers whose *output* channels go.
    """

    name: str
    kind: str  # "channels" (conv), "neurons" (linear) or "heads" (attention)
    size: int
    granule: int = 1
    consumers: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)

    @property
    def groups(self) -> int:
        """Number of removable units (heads, channels or neurons)."""
        return self.size // self.granule


# ---- attention heads as customised layers ----------------------------------------------------


def _prune_out(module: nn.Module, idxs: list[int]) -> None:
    if layers.kind(module) == "conv1d_t":
        _TransposedLinearPruner().prune_out_channels(module, idxs)
    else:
        tp.prune_linear_out_channels(module, idxs)


def _prune_in(module: nn.Module, idxs: list[int]) -> None:
    if layers.kind(module) == "conv1d_t":
        _TransposedLinearPruner().prune_in_channels(module, idxs)
    else:
        tp.prune_linear_in_channels(module, idxs)


def _keep(n: int, idxs: list[int]) -> list[int]:
    gone = set(idxs)
    return [i for i in range(n) if i not in gone]


class _HeadPruner(tp.BasePruningFunc):
    """Cuts a :class:`HeadCore`: out channels are context channels (whole heads), in channels
    the hidden size its projections read."""

    TARGET_MODULES = None

    def prune_out_channels(self, layer: HeadCore, idxs):
        attn, layout = layer.attn, layer.layout
        cuts, heads, kv_heads = layout.cuts(list(idxs))
        for cut in cuts:
            if cut.dim is None:
                _prune_out(attn.get_submodule(cut.path), cut.idxs)
                continue
            owner_name, _, pname = cut.path.rpartition(".")
            owner = attn.get_submodule(owner_name)
            p = getattr(owner, pname)
            keep = _keep(p.shape[cut.dim], cut.idxs)
            setattr(owner, pname, self._prune_parameter_and_grad(p, keep, cut.dim))
        layout.fix(attn, heads, kv_heads)
        return layer

    def prune_in_channels(self, layer: HeadCore, idxs):
        layout = layer.layout
        for path in [layout.qkv] if layout.qkv else [layout.q, layout.k, layout.v]:
            _prune_in(layer.attn.get_submodule(path), list(idxs))
        return layer

    def get_out_channels(self, layer: HeadCore) -> int:
        return layer.layout.width

    def get_in_channels(self, layer: HeadCore) -> int:
        layout = layer.layout
        first = layer.attn.get_submodule(layout.qkv or layout.q)
        return layers.weight(first).shape[1]


class _TransposedLinearPruner(tp.BasePruningFunc):
    """transformers' ``Conv1D``: a Linear whose weight is ``[in, out]``."""

    TARGET_MODULES = None

    def prune_out_channels(self, layer: nn.Module, idxs):
        keep = _keep(layer.weight.shape[1], idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        layer.nf = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs):
        keep = _keep(layer.weight.shape[0], idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        if hasattr(layer, "nx"):
            layer.nx = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[1]

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]


def _customized(model: nn.Module) -> dict:
    pruners: dict = {HeadCore: _HeadPruner()}
    for m in model.modules():
        if layers.kind(m) == "conv1d_t":
            pruners[type(m)] = _TransposedLinearPruner()
    return pruners


def build_graph(model: nn.Module, example_inputs: Batch) -> tp.DependencyGraph:
    """Trace ``model`` (inside :func:`traceable`) into Torch-Pruning's dependency graph."""
    try:
        return tp.DependencyGraph().build_dependency(
            model,
            example_inputs=example_inputs,
            forward_fn=lambda m, x: call(m, x),
            output_transform=main_output,
            customized_pruners=_customized(model),
            verbose=False,
        )
    except TraceTimeout:
        raise
    except Exception as err:  # Torch-Pruning raises bare exceptions of many kinds
        raise UntraceableModelError(
            f"Torch-Pruning could not trace {type(model).__name__}: {type(err).__name__}: {err}. "
            "Expected a model whose forward runs on example_inputs with autograd enabled "
            "and uses standard layers (Linear, Conv, BatchNorm, LayerNorm, attention)."
        ) from err


def _output_layer(model: nn.Module, example_inputs: Batch) -> nn.Module | None:
    """The last Linear/Conv layer executed: it produces the model's answer and keeps its width."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: order.append(mod))
        for m in model.modules()
        if layers.kind(m) is not None
    ]
    try:
        with torch.no_grad():
            call(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def _groups(graph: tp.DependencyGraph, roots: tuple, ignored: list, names: dict, where: dict):
    """Torch-Pruning's ``get_all_groups``, noting which root it is grouping (for the time limit)."""
    visited: set = set()
    for m in list(graph.module2node):
        if m in ignored or not isinstance(m, roots) or m in visited:
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        where["module"] = f"{names.get(m, '?')} ({type(m).__name__})"
        group = graph.get_pruning_group(
            m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m)))
        )
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(dep.target.module)
                prunable = prunable and dep.target.module not in ignored
        if prunable:
            yield group


def find_units(
    model: nn.Module, example_inputs: Batch, time_limit_s: float = TRACE_TIME_LIMIT_S
) -> list[PruneUnit]:
    """Every prunable group of ``model`` as a :class:`PruneUnit`, in module order."""
    where: dict = {}

    def trace() -> list[PruneUnit]:
        with traceable(model) as cores:
            names = {m: n for n, m in model.named_modules()}
            where["stage"] = "tracing"
            record = [
                m.register_forward_pre_hook(lambda mod, a, n=n: where.update(module=n))
                for n, m in model.named_modules()
                if n
            ]
            try:
                graph = build_graph(model, example_inputs)
            finally:
                for h in record:
                    h.remove()
            out_layer = _output_layer(model, example_inputs)
            ignored = [out_layer] if out_layer is not None else []
            roots = (*_LAYERS, HeadCore, *_customized(model))
            where["stage"] = "grouping"
            units = [
                _unit(graph, g, names, cores) for g in _groups(graph, roots, ignored, names, where)
            ]
            order = {name: i for i, name in enumerate(names.values())}
            units = [u for u in units if u is not None]
            return sorted(units, key=lambda u: order[u.name])

    return with_time_limit(trace, time_limit_s, where, model)


def _unit(graph, group, names: dict, cores: dict) -> PruneUnit | None:
    modules = [dep.target.module for dep, _ in group]
    if any(isinstance(m, _KEEP_WIDTH) for m in modules):
        return None
    root = modules[0]
    size = graph.get_out_channels(root)
    consumers = [
        names[dep.target.module]
        for dep, _ in group
        if layers.kind(dep.target.module) and graph.is_in_channel_pruning_fn(dep.handler)
    ]
    producers = [
        names[dep.target.module]
        for dep, _ in group
        if layers.kind(dep.target.module) and graph.is_out_channel_pruning_fn(dep.handler)
    ]
    members = sorted({names[m] for m in modules if m in names})
    if isinstance(root, HeadCore):
        granule = root.layout.granule
        if size < 2 * granule:
            return None  # one head (or key/value group) left: nothing to remove
        return PruneUnit(names[root], "heads", size, granule, consumers, members, producers)
    kind = "neurons" if layers.kind(root) != "conv" else "channels"
    return PruneUnit(names[root], kind, size, 1, consumers, members, producers)


def _root_group(graph: tp.DependencyGraph, model: nn.Module, unit: PruneUnit, idxs: list[int]):
    root = model.get_submodule(unit.name)
    pruner = graph.get_pruner_of_module(root)
    return graph.get_pruning_group(root, pruner.prune_out_channels, idxs)


def library_scores(
    model: nn.Module, example_inputs: Batch, units: list[PruneUnit], criterion: str
) -> dict[str, torch.Tensor]:
    """Per-channel scores from Torch-Pruning's group criteria ("magnitude" or "taylor").

    Taylor reads ``.grad`` of the parameters, so the caller runs backward passes first.
    """
    if criterion == "magnitude":
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    elif criterion == "taylor":
        importance = tp.importance.GroupTaylorImportance()
    else:
        raise ValueError(f"Torch-Pruning criterion must be magnitude or taylor, got {criterion!r}")
    scores = {}
    with traceable(model):
        graph = build_graph(model, example_inputs)
        for unit in units:
            group = _root_group(graph, model, unit, list(range(unit.size)))
            scores[unit.name] = importance(group).detach().float().cpu()
    return scores


def prune(model: nn.Module, example_inputs: Batch, removed: dict[str, list[int]]) -> None:
    """Remove the given output channels of each unit's root, in place, with all coupled layers.

    ``removed`` maps a unit name to channel indices (whole heads for a ``heads`` unit). The
    attention layouts set their head counts as they cut; model config fields follow where
    every attention module agrees (:func:`compression.structure.attention.sync_config`).
    """
    with traceable(model) as cores:
        graph = build_graph(model, example_inputs)
        for name, idxs in removed.items():
            if not idxs:
                continue
            group = _root_group(graph, model, PruneUnit(name, "", 0), sorted(idxs))
            if not graph.check_pruning_group(group):
                raise UntraceableModelError(
                    f"Torch-Pruning refused to prune {name}: it would empty it"
                )
            group.prune()
        attention.sync_config(model, [c.layout for c in cores.values()])


def count_macs_params(model: nn.Module, example_inputs: Batch) -> tuple[int, int]:
    """Multiply-accumulates of one forward on ``example_inputs``, and parameter count."""
    # Torch-Pruning prints a warning for keyword-only inputs to stdout; keep stdout clean for
    # callers that print JSON (the CLI).
    counter = tp.utils.op_counter  # transformers' Conv1D counts as the Linear it is
    for m in model.modules():
        if layers.kind(m) == "conv1d_t":
            counter.CUSTOM_MODULES_MAPPING[type(m)] = counter.linear_flops_counter_hook
    with contextlib.redirect_stdout(io.StringIO()):
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)
