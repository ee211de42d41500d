"""How much each channel matters: the criteria the profile chooses between.

- ``magnitude``  weight norm of the whole coupled group (Torch-Pruning's GroupMagnitudeImportance)
- ``taylor``     sensitivity |weight x gradient| (Torch-Pruning's GroupTaylorImportance), with
                 gradients of the model's own predictions on calibration data (no labels needed)
- ``activation`` activation-aware: E[x_c^2] * ||W[:, c]||^2 summed over the layers that consume
                 channel c. It scores what a channel actually *contributes* on real inputs, which
                 is what removing it loses (the structured form of Wanda, arXiv:2306.11695).
- ``lsq``        activation-aware *and* refit-aware: the error that remains once the rebuild's
                 least-squares refit has compensated the cut (:func:`lsq_scores`).

Scores come back per channel of each unit's root; :func:`granule_scores` sums them per head.
Each criterion is a function registered in :data:`CRITERIA` under its name (the profile's
``importance`` values are these names); :func:`score_units` runs the profile's choice.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from compression.core.inputs import (
    Batch,
    buckets,
    call,
    main_output,
    split,
    token_mask,
)
from compression.core.registry import Registry
from compression.structure import graph, layers
from compression.structure.graph import PruneUnit


@dataclass
class InputStats:
    """Per-channel first and second moments of one layer's input on calibration data."""

    mean: torch.Tensor
    sq_mean: torch.Tensor


def observe_inputs(
    model: nn.Module, layer_names: list[str], batch: Batch, record, runner: nn.Module | None = None
) -> None:
    """One forward over ``batch`` calling ``record(name, layer, x, mask)`` on each named layer's
    input. ``runner``: what runs the forward, a module wrapping ``model``'s layers (its packed
    form, :mod:`compression.forms.packing`, whose layers see the real tokens' rows only); default
    ``model``."""
    mask = [None]  # the mask of the part being run (token batches run as length buckets)

    def hook(name):
        return lambda layer, args: record(name, layer, args[0].detach().float(), mask[0])

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in set(layer_names)]
    try:
        with torch.inference_mode():
            for part in buckets(batch):
                mask[0] = token_mask(part)
                call(runner or model, part)
    finally:
        for h in handles:
            h.remove()


def _stats_recorder(sums: dict[str, list]):
    def record(name, layer, x, mask):
        rows = layers.channel_rows(layer, x, mask)
        acc = sums.setdefault(name, [0.0, 0.0, 0])
        acc[0] = acc[0] + rows.sum(0)
        acc[1] = acc[1] + rows.pow(2).sum(0)
        acc[2] += rows.shape[0]

    return record


def _gram_recorder(grams: dict[str, list]):
    def record(name, layer, x, mask):
        rows = layers.input_rows(layer, x, mask)
        acc = grams.setdefault(name, [0.0, 0])
        acc[0] = acc[0] + (rows.T @ rows).double()  # products in float32, sums in float64
        acc[1] += rows.shape[0]

    return record


def input_stats(
    model: nn.Module, layer_names: list[str], batch: Batch, runner: nn.Module | None = None
) -> dict[str, InputStats]:
    """Mean and mean square of each named layer's input channels over ``batch``."""
    sums: dict[str, list] = {}
    observe_inputs(model, layer_names, batch, _stats_recorder(sums), runner)
    return {n: InputStats(s / c, q / c) for n, (s, q, c) in sums.items()}


def input_stats_and_grams(
    model: nn.Module, layer_names: list[str], batch: Batch, runner: nn.Module | None = None
) -> tuple[dict[str, InputStats], dict[str, torch.Tensor]]:
    """:func:`input_stats` and :func:`input_grams` from one forward (the lsq criterion)."""
    sums: dict[str, list] = {}
    grams: dict[str, list] = {}
    stats_record, gram_record = _stats_recorder(sums), _gram_recorder(grams)

    def record(name, layer, x, mask):
        stats_record(name, layer, x, mask)
        gram_record(name, layer, x, mask)

    observe_inputs(model, layer_names, batch, record, runner)
    stats = {n: InputStats(s / c, q / c) for n, (s, q, c) in sums.items()}
    return stats, {n: g / c for n, (g, c) in grams.items()}


def _consumer_columns(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """||W[:, c]||^2 per input channel c, also when a flatten spreads c over several inputs."""
    w = weight.detach().float()
    w = w.reshape(w.shape[0], w.shape[1], -1).pow(2).sum(dim=(0, 2))  # per input column
    if w.numel() != channels and w.numel() % channels == 0:
        w = w.reshape(channels, -1).sum(1)
    return w


def activation_scores(
    model: nn.Module, units: list[PruneUnit], stats: dict[str, InputStats]
) -> dict[str, torch.Tensor]:
    """Activation-aware scores from consumer input statistics (see module docstring)."""
    scores = {}
    for unit in units:
        device = model.get_submodule(unit.consumers[0]).weight.device if unit.consumers else None
        total = torch.zeros(unit.size, device=device)  # on the model's device (CUDA: no copies)
        for name in unit.consumers:
            layer = model.get_submodule(name)
            if getattr(layer, "groups", 1) != 1:
                continue
            energy = stats[name].sq_mean
            columns = _consumer_columns(layers.weight(layer), energy.numel())
            if energy.numel() == unit.size:
                total += energy * columns
        if not total.any():  # no usable consumer: fall back to weight magnitude of the consumers
            for name in unit.consumers:
                w = _consumer_columns(layers.weight(model.get_submodule(name)), unit.size)
                if w.numel() == unit.size:
                    total += w
        scores[unit.name] = total
    return scores


def _pseudo_label_loss(out: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to the model's own predictions for classifiers, output energy otherwise."""
    if out.dim() == 2 and out.shape[1] > 1:
        return nn.functional.cross_entropy(out, out.argmax(1).detach())
    return 0.5 * out.float().pow(2).mean()


def taylor_gradients(model: nn.Module, batch: Batch, chunk: int = 64) -> None:
    """Accumulate ``.grad`` on every parameter from calibration data (for the Taylor criterion)."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for part in split(batch, chunk):
            _pseudo_label_loss(main_output(call(model, part))).backward()


@dataclass
class ScoringContext:
    """What a criterion scores from. ``model`` is the original: a criterion must not change it
    (Taylor works on a copy). ``stats`` are the consumers' input statistics, which the rebuild
    needs whatever the criterion; a criterion that computes them anyway (lsq) stores them."""

    model: nn.Module
    example_inputs: Batch
    units: list[PruneUnit]
    calibration: Batch
    stats: dict[str, InputStats] | None = None
    runner: nn.Module | None = None  # runs the forwards that observe inputs (observe_inputs)

    @property
    def consumers(self) -> list[str]:
        """Every layer whose input channels some unit's cut removes."""
        return [c for u in self.units for c in u.consumers]

    def input_stats(self) -> dict[str, InputStats]:
        """The consumers' input statistics on the calibration data (computed once)."""
        if self.stats is None:
            self.stats = input_stats(self.model, self.consumers, self.calibration, self.runner)
        return self.stats


Criterion = Callable[[ScoringContext], dict[str, torch.Tensor]]

# Importance criteria by name: each takes a ScoringContext and returns per-channel scores of
# every unit's root. The profile's ``importance`` is one of these names.
CRITERIA: Registry[Criterion] = Registry("importance criterion")


@CRITERIA.register("magnitude")
def magnitude(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    """Torch-Pruning's group L2 weight norm."""
    return graph.library_scores(ctx.model, ctx.example_inputs, ctx.units, "magnitude")


@CRITERIA.register("taylor")
def taylor(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    """Torch-Pruning's group Taylor score, from gradients of the model's own predictions."""
    work = copy.deepcopy(ctx.model)  # backward passes leave .grad behind
    taylor_gradients(work, ctx.calibration)
    return graph.library_scores(work, ctx.example_inputs, ctx.units, "taylor")


@CRITERIA.register("activation")
def activation(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    """Activation-aware scores (see :func:`activation_scores`)."""
    return activation_scores(ctx.model, ctx.units, ctx.input_stats())


@CRITERIA.register("lsq")
def lsq(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    """Refit-aware scores (see :func:`lsq_scores`); statistics and Grams from one forward."""
    ctx.stats, grams = input_stats_and_grams(ctx.model, ctx.consumers, ctx.calibration, ctx.runner)
    return lsq_scores(ctx.model, ctx.units, grams)


def score_units(
    original: nn.Module,
    example: Batch,
    units: list[PruneUnit],
    criterion: str,
    calibration: Batch,
    runner: nn.Module | None = None,
) -> tuple[dict[str, InputStats], dict[str, torch.Tensor]]:
    """Input statistics of every consumer and the named criterion's channel scores
    (``runner``: see :func:`observe_inputs`).

    >>> stats, scores = score_units(model, x[:2], units, "lsq", x)  # doctest: +SKIP
    """
    ctx = ScoringContext(original, example, units, calibration, runner=runner)
    scores = CRITERIA.get(criterion)(ctx)
    return ctx.input_stats(), scores


def channel_scores(
    model: nn.Module,
    example_inputs: Batch,
    units: list[PruneUnit],
    criterion: str,
    calibration: Batch,
    stats: dict[str, InputStats] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-channel importance of every unit under ``criterion`` (a name in :data:`CRITERIA`)."""
    ctx = ScoringContext(model, example_inputs, units, calibration, stats)
    return CRITERIA.get(criterion)(ctx)


def granule_scores(unit: PruneUnit, scores: torch.Tensor) -> torch.Tensor:
    """Scores per removable unit: per head for attention, per channel otherwise."""
    return scores.reshape(unit.groups, unit.granule).sum(1)


def input_grams(model: nn.Module, layer_names: list[str], batch: Batch) -> dict[str, torch.Tensor]:
    """Uncentred Gram matrix E[x x^T] of each named layer's input rows (unfolded for convs)."""
    grams: dict[str, list] = {}
    observe_inputs(model, layer_names, batch, _gram_recorder(grams))
    return {n: g / c for n, (g, c) in grams.items()}


def lsq_scores(
    model: nn.Module, units: list[PruneUnit], grams: dict[str, torch.Tensor], rounds: int = 4
) -> dict[str, torch.Tensor]:
    """Refit-aware scores: the output error that *remains after* a least-squares refit.

    Removing input columns S of a consumer W whose inputs have Gram G costs, once the other
    columns are refit optimally, tr(W_S (G^-1)_SS^-1 W_S^T) (optimal brain surgeon, structured).
    Heads/channels are removed greedily in ``rounds`` chunks, re-inverting G on what is left, and
    each gets the cost at its removal, relative to the consumers' output energy so that units
    compare (used by global allocation).
    """
    scores = {}
    for unit in units:
        parts = []
        for name in unit.consumers:
            layer = model.get_submodule(name)
            if name not in grams or getattr(layer, "groups", 1) != 1:
                continue
            w = layers.matrix(layer).detach().double()
            g = grams[name]
            if w.shape[1] % unit.size:
                continue
            per = w.shape[1] // unit.size * unit.granule  # columns per head/channel
            energy = torch.einsum("oi,ij,oj->", w, g, w).clamp_min(1e-12)
            parts.append((w, g, per, energy))
        if not parts:
            scores[unit.name] = torch.zeros(unit.size)
            continue
        device = parts[0][0].device  # accumulate where the weights and Grams are (CUDA or CPU)
        alive = list(range(unit.groups))
        cost_at_removal = torch.zeros(unit.groups, dtype=torch.float64)
        step = max(1, unit.groups // rounds)
        level = 0.0
        while len(alive) > 1:
            costs = torch.zeros(len(alive), dtype=torch.float64, device=device)
            for w, g, per, energy in parts:
                cols = torch.tensor(
                    [g_ * per + j for g_ in alive for j in range(per)], device=device
                )
                sub = g[cols][:, cols]
                eye = torch.eye(len(cols), dtype=sub.dtype, device=device)
                sub = sub + 1e-6 * sub.diagonal().mean() * eye
                inv = torch.linalg.inv(sub)
                ws = w[:, cols]
                if per == 1:  # one column each: the cost is ||w_c||^2 / (G^-1)_cc
                    costs += ws.pow(2).sum(0) / inv.diagonal() / energy
                    continue
                for k in range(len(alive)):
                    s = slice(k * per, (k + 1) * per)
                    block = torch.linalg.inv(inv[s, s])
                    costs[k] += torch.trace(ws[:, s] @ block @ ws[:, s].T) / energy
            costs = costs.cpu()  # one copy per round; the bookkeeping below is scalar
            order = torch.argsort(costs).tolist()[: min(step, len(alive) - 1)]
            for k in order:
                level = max(level, float(costs[k]))
                cost_at_removal[alive[k]] = level + float(costs[k]) * 1e-6
            alive = [a for i, a in enumerate(alive) if i not in set(order)]
        cost_at_removal[alive[0]] = level * 2 + 1.0
        scores[unit.name] = cost_at_removal.float().repeat_interleave(unit.granule)
    return scores
