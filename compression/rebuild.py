"""The rebuild ladder: win back what pruning lost, without labels and without retraining.

Cheapest first; each step is kept only when it lowers the calibration error (relative squared
error of the pruned model's output against the original's on calibration data):

1. ``bn``      BatchNorm recalibration: re-estimate running statistics on calibration data, since
               the pruned layers feeding each BN now produce differently distributed outputs.
2. ``bias``    mean compensation: a consumer loses the *average* contribution W[:, c] * E[x_c] of
               every removed input channel c; fold it into the consumer's bias.
3. ``refit``   least-squares (ridge) refit of every consumer of a cut, in execution order: solve
               min ||X_pruned W - Y_original||^2 + lambda ||W||^2 where X are the pruned model's own
               inputs to the layer (so upstream error is compensated too) and Y the original
               layer's outputs. One forward pass does all layers: each layer is refit in a hook
               just before it runs, so the next layer sees refit inputs.
4. ``distill`` optional, time-boxed: fine-tune the pruned model to the original's outputs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from compression import families
from compression.graph import PruneUnit
from compression.importance import InputStats
from compression.inputs import (
    Batch,
    call,
    conv_rows,
    flat_tokens,
    index,
    main_output,
    split,
    token_mask,
)
from compression.registry import Registry

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class StepRecord:
    """What one rebuild step did, for ``report.steps``."""

    step: str
    kept: bool
    error_before: float
    error_after: float
    seconds: float
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _rows(out: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if out.dim() == 4:  # N, C, H, W -> pixels x C
        return out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
    return flat_tokens(out, mask)


def reference_outputs(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's main output on ``batch`` as rows (tokens or samples x features)."""
    with torch.inference_mode():
        return _rows(main_output(call(model, batch)).float(), token_mask(batch))


def calibration_error(model: nn.Module, batch: Batch, reference: torch.Tensor) -> float:
    """Relative squared error ||f(x) - f_ref(x)||^2 / ||f_ref(x)||^2 over real tokens/samples."""
    out = reference_outputs(model, batch)
    return float((out - reference).pow(2).sum() / reference.pow(2).sum().clamp_min(1e-12))


# ---- 1. BatchNorm recalibration -------------------------------------------------------------


def recalibrate_bn(model: nn.Module, batch: Batch, chunk: int = 256) -> int:
    """Re-estimate every BatchNorm's running mean/var on ``batch``; returns how many."""
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    if not bns:
        return 0
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all chunks
        m.train()
    try:
        with torch.no_grad():
            for part in split(batch, chunk):
                call(model, part)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
            m.eval()
    return len(bns)


# ---- 2. mean (bias) compensation -------------------------------------------------------------


def _ensure_bias(layer: nn.Module) -> torch.Tensor:
    if layer.bias is None:
        out = layer.weight.shape[0]
        w = layer.weight
        layer.bias = nn.Parameter(torch.zeros(out, dtype=w.dtype, device=w.device))
    return layer.bias


def _kept_rows(name: str, units: list[PruneUnit], removed: dict[str, list[int]], n: int):
    """Indices of ``name``'s output channels that survive pruning."""
    for unit in units:
        if name in unit.producers and removed.get(unit.name):
            gone = set(removed[unit.name])
            return torch.tensor([i for i in range(n) if i not in gone])
    return None


def compensate_bias(
    pruned: nn.Module,
    original: nn.Module,
    units: list[PruneUnit],
    removed: dict[str, list[int]],
    stats: dict[str, InputStats],
) -> int:
    """Fold the mean contribution of removed input channels into each consumer's bias."""
    changed = 0
    for unit in units:
        gone = removed.get(unit.name) or []
        if not gone:
            continue
        for name in unit.consumers:
            layer, orig = pruned.get_submodule(name), original.get_submodule(name)
            if getattr(orig, "groups", 1) != 1 or name not in stats:
                continue
            mean = stats[name].mean
            w = orig.weight.detach()
            per = w.shape[1] // mean.numel() if mean.numel() != w.shape[1] else 1
            cols = torch.tensor([c * per + j for c in gone for j in range(per)], dtype=torch.long)
            if mean.numel() != w.shape[1] and per * mean.numel() != w.shape[1]:
                continue
            col_mean = mean.repeat_interleave(per) if per > 1 else mean
            w_gone = w[:, cols].reshape(w.shape[0], len(cols), -1).sum(-1)
            delta = w_gone @ col_mean[cols].to(w.dtype)
            keep = _kept_rows(name, units, removed, w.shape[0])
            if keep is not None:
                delta = delta[keep]
            with torch.no_grad():
                _ensure_bias(layer).add_(delta.to(layer.weight.dtype))
            changed += 1
    return changed


# ---- 3. least-squares refit ------------------------------------------------------------------


def _ridge(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve min ||[x 1] [W; b] - y||^2 + lam ||W||^2; returns (W^T, b)."""
    # Products of the centred data in float32 (fast), the solve in float64 (stable).
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram, cross = (xc.T @ xc).double(), (xc.T @ yc).double()
    lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
    gram.diagonal().add_(lam)
    w = torch.linalg.solve(gram, cross)  # d_in x d_out
    b = my.double() - mx.double() @ w
    return w.T, b


def refit_consumers(
    pruned: nn.Module,
    original: nn.Module,
    units: list[PruneUnit],
    removed: dict[str, list[int]],
    batch: Batch,
    ridge: float,
) -> int:
    """Ridge-refit every Linear/Conv2d consumer of a cut (see module docstring); returns count."""
    names = []
    for unit in units:
        if removed.get(unit.name):
            names += [n for n in unit.consumers if n not in names]
    names = [
        n
        for n in names
        if isinstance(pruned.get_submodule(n), nn.Linear | nn.Conv2d)
        and getattr(pruned.get_submodule(n), "groups", 1) == 1
    ]
    if not names:
        return 0
    mask = token_mask(batch)
    targets: dict[str, torch.Tensor] = {}

    def capture(name):
        def hook(module, args, out):
            rows = _rows(out.detach().float(), mask)
            keep = _kept_rows(name, units, removed, rows.shape[1])
            targets[name] = rows if keep is None else rows[:, keep]

        return hook

    # Layers whose output joins a skip connection are fit to the *sum*: target = original output
    # + original skip - pruned skip (families.residual_parent says where the skip is).
    parents = {n: p for n in names if (p := families.residual_parent(original, n))}
    skips: dict[str, torch.Tensor] = {}

    def capture_skip(name, sign):
        def hook(module, args):
            rows = flat_tokens(args[1].detach().float(), mask)
            skips[name] = skips.get(name, 0) + sign * rows

        return hook

    handles = [original.get_submodule(n).register_forward_hook(capture(n)) for n in names]
    handles += [
        original.get_submodule(p).register_forward_pre_hook(capture_skip(n, 1.0))
        for n, p in parents.items()
    ]
    try:
        with torch.inference_mode():
            call(original, batch)
    finally:
        for h in handles:
            h.remove()

    def refit(name):
        def hook(layer, args):
            x = args[0].detach().float()
            rows = conv_rows(layer, x) if isinstance(layer, nn.Conv2d) else flat_tokens(x, mask)
            target = targets.pop(name)
            if name in skips:
                target = target + skips.pop(name)
            w, b = _ridge(rows, target, ridge)
            with torch.no_grad():
                layer.weight.copy_(w.reshape(layer.weight.shape).to(layer.weight.dtype))
                _ensure_bias(layer).copy_(b.to(layer.weight.dtype))

        return hook

    # A refit layer reproduces the original's outputs again, so the BatchNorm right after it
    # gets the original's statistics back (those of the kept channels).
    follower = _batchnorm_after(original, names, batch)

    def refit_and_restore(name):
        inner = refit(name)

        def hook(layer, args):
            inner(layer, args)
            if name in follower:
                bn_name = follower[name]
                bn, bn_orig = pruned.get_submodule(bn_name), original.get_submodule(bn_name)
                keep = _kept_rows(name, units, removed, bn_orig.num_features)
                keep = torch.arange(bn_orig.num_features) if keep is None else keep
                if len(keep) == bn.num_features:
                    with torch.no_grad():
                        for attr in ("running_mean", "running_var", "weight", "bias"):
                            getattr(bn, attr).copy_(getattr(bn_orig, attr)[keep])

        return hook

    handles = [
        pruned.get_submodule(n).register_forward_pre_hook(refit_and_restore(n)) for n in names
    ]
    handles += [
        pruned.get_submodule(p).register_forward_pre_hook(capture_skip(n, -1.0))
        for n, p in parents.items()
    ]
    try:
        with torch.no_grad():
            call(pruned, batch)
    finally:
        for h in handles:
            h.remove()
    return len(names)


def _batchnorm_after(model: nn.Module, layer_names: list[str], batch: Batch) -> dict[str, str]:
    """Map each named layer to the BatchNorm that directly consumes its output, if any."""
    produced: dict[int, str] = {}
    follower: dict[str, str] = {}

    def mark(name):
        def hook(module, args, out):
            produced[id(out)] = name

        return hook

    def find(name):
        def hook(module, args):
            if id(args[0]) in produced:
                follower[produced[id(args[0])]] = name

        return hook

    handles = [model.get_submodule(n).register_forward_hook(mark(n)) for n in layer_names]
    handles += [
        m.register_forward_pre_hook(find(n)) for n, m in model.named_modules() if isinstance(m, _BN)
    ]
    try:
        with torch.inference_mode():
            call(model, index(batch, slice(0, 2)))
    finally:
        for h in handles:
            h.remove()
    return follower


# ---- 4. distillation -------------------------------------------------------------------------


def distill(
    pruned: nn.Module, original: nn.Module, batch: Batch, seconds: float, chunk: int = 32
) -> int:
    """Fine-tune ``pruned`` to the original's outputs for at most ``seconds``; returns steps."""
    parts = split(batch, chunk)
    targets = [reference_outputs(original, p).clone() for p in parts]  # autograd-safe copies
    opt = torch.optim.Adam([p for p in pruned.parameters() if p.requires_grad], lr=1e-4)
    pruned.train()
    for m in pruned.modules():  # BN statistics and dropout behave as in serving
        if isinstance(m, (*_BN, nn.Dropout)):
            m.eval()
    steps, deadline = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            i = steps % len(parts)
            out = _rows(main_output(call(pruned, parts[i])).float(), token_mask(parts[i]))
            loss = nn.functional.mse_loss(out, targets[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    finally:
        pruned.eval()
    return steps


# ---- the ladder ------------------------------------------------------------------------------


@dataclass
class RebuildContext:
    """What a rebuild step works with: ``pruned`` (changed in place), the untouched
    ``original``, the cut (``units``, ``removed``), calibration data and its statistics."""

    pruned: nn.Module
    original: nn.Module
    units: list[PruneUnit]
    removed: dict[str, list[int]]
    batch: Batch
    stats: dict[str, InputStats]
    ridge: float = 1e-2
    distill_seconds: float = 0.0


# A step changes ``ctx.pruned`` and returns (how many layers/steps it changed, what it did);
# 0 means it did not apply. The profile's ``rebuild`` list names steps registered here.
RebuildStep = Callable[[RebuildContext], tuple[int, str]]
STEPS: Registry[RebuildStep] = Registry("rebuild step")


@STEPS.register("bn")
def bn_step(ctx: RebuildContext) -> tuple[int, str]:
    """BatchNorm recalibration (:func:`recalibrate_bn`)."""
    n = recalibrate_bn(ctx.pruned, ctx.batch)
    return n, f"{n} BatchNorm layers re-estimated"


@STEPS.register("bias")
def bias_step(ctx: RebuildContext) -> tuple[int, str]:
    """Mean compensation of removed input channels (:func:`compensate_bias`)."""
    n = compensate_bias(ctx.pruned, ctx.original, ctx.units, ctx.removed, ctx.stats)
    return n, f"{n} consumer biases compensated"


@STEPS.register("refit")
def refit_step(ctx: RebuildContext) -> tuple[int, str]:
    """Ridge refit of every consumer of a cut (:func:`refit_consumers`)."""
    n = refit_consumers(ctx.pruned, ctx.original, ctx.units, ctx.removed, ctx.batch, ctx.ridge)
    return n, f"{n} consumer layers refit (ridge {ctx.ridge})"


@STEPS.register("distill")
def distill_step(ctx: RebuildContext) -> tuple[int, str]:
    """Time-boxed distillation from the original (:func:`distill`)."""
    n = distill(ctx.pruned, ctx.original, ctx.batch, ctx.distill_seconds)
    return n, f"{n} optimiser steps in {ctx.distill_seconds:g} s"


def rebuild(
    pruned: nn.Module,
    original: nn.Module,
    units: list[PruneUnit],
    removed: dict[str, list[int]],
    batch: Batch,
    reference: torch.Tensor,
    stats: dict[str, InputStats],
    steps: list[str],
    ridge: float = 1e-2,
    distill_seconds: float = 0.0,
    probe: Batch | None = None,
) -> list[StepRecord]:
    """Run the ladder's named ``steps`` (see :data:`STEPS`) on ``pruned`` in place; returns one
    record per step tried.

    Steps fit on all of ``batch``; the error that decides whether a step stays is measured on
    ``probe`` (a slice of it, with ``reference`` its original outputs) when given, else on
    ``batch`` -- three full calibration forwards per candidate are most of the ladder's time.
    """
    ctx = RebuildContext(pruned, original, units, removed, batch, stats, ridge, distill_seconds)
    check = batch if probe is None else probe
    records = []
    error = calibration_error(pruned, check, reference)
    records.append(StepRecord("prune", True, error, error, 0.0, "after structural pruning"))
    for step in steps:
        run_step = STEPS.get(step)
        start = time.perf_counter()
        backup = copy.deepcopy(pruned.state_dict())
        biases = {n for n, m in pruned.named_modules() if getattr(m, "bias", 0) is None}
        n, detail = run_step(ctx)
        if n == 0:
            continue
        new_error = calibration_error(pruned, check, reference)
        kept = new_error < error
        if not kept:  # undo: restore weights and drop biases this step added
            for name in biases:
                module = pruned.get_submodule(name) if name else pruned
                if getattr(module, "bias", None) is not None:
                    module.bias = None
            pruned.load_state_dict(backup)
        seconds = time.perf_counter() - start
        records.append(StepRecord(step, kept, error, new_error, round(seconds, 3), detail))
        if kept:
            error = new_error
    return records
