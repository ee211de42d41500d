"""The one door to Torch-Pruning: trace, enumerate prunable groups, score with its criteria, cut.

Torch-Pruning's dependency graph knows which layers are coupled (a conv and its BatchNorm, the
two sides of a residual add, a BERT layer's query/key/value and its output projection). This
module turns its groups into :class:`PruneUnit` records the rest of the engine can reason
about without importing ``torch_pruning`` (only this module does).

Upstream: https://github.com/VainF/Torch-Pruning (``DependencyGraph``, ``Group``).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from compression import families
from compression.errors import UntraceableModelError
from compression.inputs import Batch, call, main_output

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Groups touching these keep their width: the embedding/hidden size of a transformer is shared by
# every layer and by the model's output, so cutting it changes what the model returns.
_KEEP_WIDTH = (nn.Embedding, nn.LayerNorm)


@dataclass
class PruneUnit:
    """One prunable group: the channels of ``root`` and everything coupled to them.

    ``granule`` channels are removed together (a whole attention head, else 1 channel).
    ``consumers`` are the layers whose *input* channels the cut removes: the rebuild step
    refits exactly these. ``producers`` are the Linear/Conv layers whose *output* channels go.
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


def build_graph(model: nn.Module, example_inputs: Batch) -> tp.DependencyGraph:
    """Trace ``model`` into Torch-Pruning's dependency graph, or explain why it cannot."""
    try:
        return tp.DependencyGraph().build_dependency(
            model,
            example_inputs=example_inputs,
            forward_fn=lambda m, x: call(m, x),
            output_transform=main_output,
            verbose=False,
        )
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
        if isinstance(m, _PRUNABLE)
    ]
    try:
        with torch.no_grad():
            call(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def find_units(model: nn.Module, example_inputs: Batch) -> list[PruneUnit]:
    """Every prunable group of ``model`` as a :class:`PruneUnit`, in module order."""
    graph = build_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    out_layer = _output_layer(model, example_inputs)
    ignored = [out_layer] if out_layer is not None else []
    units = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=_PRUNABLE):
        modules = [dep.target.module for dep, _ in group]
        if any(isinstance(m, _KEEP_WIDTH) for m in modules):
            continue
        root = modules[0]
        size = graph.get_out_channels(root)
        consumers = [
            names[dep.target.module]
            for dep, _ in group
            if isinstance(dep.target.module, _PRUNABLE)
            and graph.is_in_channel_pruning_fn(dep.handler)
        ]
        producers = [
            names[dep.target.module]
            for dep, _ in group
            if isinstance(dep.target.module, _PRUNABLE)
            and graph.is_out_channel_pruning_fn(dep.handler)
        ]
        members = sorted({names[m] for m in modules if m in names})
        head_size = families.head_size_of(model, members)
        kind = "neurons" if isinstance(root, nn.Linear) else "channels"
        if head_size:
            kind = "heads"
        units.append(
            PruneUnit(names[root], kind, size, head_size or 1, consumers, members, producers)
        )
    order = {name: i for i, name in enumerate(names.values())}
    return sorted(units, key=lambda u: order[u.name])


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
    graph = build_graph(model, example_inputs)
    if criterion == "magnitude":
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    elif criterion == "taylor":
        importance = tp.importance.GroupTaylorImportance()
    else:
        raise ValueError(f"Torch-Pruning criterion must be magnitude or taylor, got {criterion!r}")
    scores = {}
    for unit in units:
        group = _root_group(graph, model, unit, list(range(unit.size)))
        scores[unit.name] = importance(group).detach().float().cpu()
    return scores


def prune(model: nn.Module, example_inputs: Batch, removed: dict[str, list[int]]) -> None:
    """Remove the given output channels of each unit's root, in place, with all coupled layers.

    ``removed`` maps a unit name to channel indices. Family fix-ups (e.g. a BERT attention
    module's head count) run afterwards so the pruned model still runs.
    """
    graph = build_graph(model, example_inputs)
    for name, idxs in removed.items():
        if not idxs:
            continue
        unit = PruneUnit(name, "", 0)
        group = _root_group(graph, model, unit, sorted(idxs))
        if not graph.check_pruning_group(group):
            raise UntraceableModelError(f"Torch-Pruning refused to prune {name}: it would empty it")
        group.prune()
    families.fix_up(model)


def count_macs_params(model: nn.Module, example_inputs: Batch) -> tuple[int, int]:
    """Multiply-accumulates of one forward on ``example_inputs``, and parameter count."""
    # Torch-Pruning prints a warning for keyword-only inputs to stdout; keep stdout clean for
    # callers that print JSON (the CLI).
    with contextlib.redirect_stdout(io.StringIO()):
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)
