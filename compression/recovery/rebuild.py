"""The rebuild ladder: win back what pruning lost, without labels and without retraining.

Cheapest first; each step is kept only when it lowers the calibration error (relative squared
error of the pruned model's output against the original's on calibration data):

1. ``bn``      BatchNorm recalibration (1-D, 2-D and 3-D): re-estimate running statistics on
               calibration data, since the pruned layers feeding each BN now produce differently
               distributed outputs.
2. ``bias``    mean compensation: a consumer loses the *average* contribution W[:, c] * E[x_c] of
               every removed input channel c; fold it into the consumer's bias.
3. ``refit``   least-squares (ridge) refit of every consumer of a cut (:mod:`compression.recovery.refit`).
4. ``distill`` optional, time-boxed: fine-tune the pruned model to the original's outputs.

Steps register by name in :data:`STEPS`. A step that finds nothing to do, or that fails on a
layer it cannot handle, is recorded as not kept with the reason (``report.steps``); the model
is restored and the ladder goes on.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from compression.core.inputs import (
    Batch,
    buckets,
    call,
    flat_tokens,
    main_output,
    split,
    token_mask,
)
from compression.core.registry import Registry
from compression.recovery.refit import kept_rows, refit_consumers
from compression.structure import layers
from compression.structure.graph import PruneUnit
from compression.structure.importance import InputStats


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
    """A model output as rows: channels of an N, C, H, W (or 3-D) map; tokens x features else."""
    if out.dim() >= 4:
        return out.movedim(1, -1).reshape(-1, out.shape[1])
    return flat_tokens(out, mask)


def reference_outputs(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's main output on ``batch`` as rows (tokens or samples x features).

    Token batches run as length buckets (:func:`compression.core.inputs.buckets`, a fixed order), so
    rows compare between models but not with an unbucketed forward's.
    """
    with torch.inference_mode():
        return torch.cat(
            [_rows(main_output(call(model, p)).float(), token_mask(p)) for p in buckets(batch)]
        )


def calibration_error(model: nn.Module, batch: Batch, reference: torch.Tensor) -> float:
    """Relative squared error ||f(x) - f_ref(x)||^2 / ||f_ref(x)||^2 over real tokens/samples."""
    out = reference_outputs(model, batch)
    return float((out - reference).pow(2).sum() / reference.pow(2).sum().clamp_min(1e-12))


# ---- 1. BatchNorm recalibration -------------------------------------------------------------


def recalibrate_bn(model: nn.Module, batch: Batch, chunk: int = 256) -> int:
    """Re-estimate every BatchNorm's running mean/var on ``batch``; returns how many."""
    bns = [m for m in model.modules() if isinstance(m, layers.BATCHNORMS)]
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
            if layers.unsupported(orig) or name not in stats:
                continue
            mean = stats[name].mean
            w = layers.weight(orig).detach()
            per = w.shape[1] // mean.numel() if mean.numel() != w.shape[1] else 1
            cols = torch.tensor([c * per + j for c in gone for j in range(per)], dtype=torch.long)
            if mean.numel() != w.shape[1] and per * mean.numel() != w.shape[1]:
                continue
            col_mean = mean.repeat_interleave(per) if per > 1 else mean
            cols = cols.to(w.device)
            w_gone = w[:, cols].reshape(w.shape[0], len(cols), -1).sum(-1)
            delta = w_gone @ col_mean[cols].to(w.dtype)
            keep = kept_rows(name, units, removed, w.shape[0])
            if keep is not None:
                delta = delta[keep.to(delta.device)]
            with torch.no_grad():
                layers.ensure_bias(layer).add_(delta.to(layer.weight.dtype))
            changed += 1
    return changed


# ---- 4. distillation -------------------------------------------------------------------------


def distill(
    pruned: nn.Module, original: nn.Module, batch: Batch, seconds: float, chunk: int = 32
) -> int:
    """Fine-tune ``pruned`` to the original's outputs for at most ``seconds``; returns steps."""
    parts = split(batch, chunk)
    with torch.inference_mode():  # rows in each part's own order (as ``out`` below)
        targets = [_rows(main_output(call(original, p)).float(), token_mask(p)) for p in parts]
    targets = [t.clone() for t in targets]  # autograd-safe copies
    opt = torch.optim.Adam([p for p in pruned.parameters() if p.requires_grad], lr=1e-4)
    pruned.train()
    for m in pruned.modules():  # BN statistics and dropout behave as in serving
        if isinstance(m, (*layers.BATCHNORMS, nn.Dropout)):
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
    cache: dict | None = None  # the original's captured outputs, shared by candidates (refit)


# A step changes ``ctx.pruned`` and returns (how many layers/steps it changed, what it did);
# 0 means it did not apply (the detail says why). The profile's ``rebuild`` names steps here.
RebuildStep = Callable[[RebuildContext], tuple[int, str]]
STEPS: Registry[RebuildStep] = Registry("rebuild step")


@STEPS.register("bn")
def bn_step(ctx: RebuildContext) -> tuple[int, str]:
    """BatchNorm recalibration (:func:`recalibrate_bn`)."""
    n = recalibrate_bn(ctx.pruned, ctx.batch)
    return n, f"{n} BatchNorm layers re-estimated" if n else "no BatchNorm layer"


@STEPS.register("bias")
def bias_step(ctx: RebuildContext) -> tuple[int, str]:
    """Mean compensation of removed input channels (:func:`compensate_bias`)."""
    n = compensate_bias(ctx.pruned, ctx.original, ctx.units, ctx.removed, ctx.stats)
    return n, f"{n} consumer biases compensated" if n else "no consumer it can compensate"


@STEPS.register("refit")
def refit_step(ctx: RebuildContext) -> tuple[int, str]:
    """Ridge refit of every consumer of a cut (:func:`compression.recovery.refit.refit_consumers`)."""
    skipped: dict[str, str] = {}
    n = refit_consumers(
        ctx.pruned, ctx.original, ctx.units, ctx.removed, ctx.batch, ctx.ridge, skipped, ctx.cache
    )
    detail = f"{n} consumer layers refit (ridge {ctx.ridge})" if n else "no consumer it can refit"
    if skipped:
        kinds = sorted(set(skipped.values()))
        detail += f"; {len(skipped)} left as they are ({', '.join(kinds)})"
    return n, detail


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
    cache: dict | None = None,
    served: Callable[[nn.Module], nn.Module] | None = None,
) -> list[StepRecord]:
    """Run the ladder's named ``steps`` (see :data:`STEPS`) on ``pruned`` in place; returns one
    record per step tried.

    Steps fit on all of ``batch``; the error that decides whether a step stays is measured on
    ``probe`` (a slice of it, with ``reference`` its original outputs) when given, else on
    ``batch`` -- three full calibration forwards per candidate are most of the ladder's time.
    ``cache``: see :func:`compression.recovery.refit.refit_consumers` (one dict per original and batch).
    ``served``: the form of ``pruned`` whose error is measured (packed tokens,
    :mod:`compression.forms.packing`: the same outputs on real tokens, without the padding's
    compute); default
    ``pruned`` itself.
    """
    ctx = RebuildContext(
        pruned, original, units, removed, batch, stats, ridge, distill_seconds, cache
    )
    check = batch if probe is None else probe
    measured = served(pruned) if served is not None else pruned  # wraps, does not copy
    records = []
    error = calibration_error(measured, check, reference)
    records.append(StepRecord("prune", True, error, error, 0.0, "after structural pruning"))
    for step in steps:
        run_step = STEPS.get(step)
        start = time.perf_counter()
        backup = copy.deepcopy(pruned.state_dict())
        biases = {n for n, m in pruned.named_modules() if getattr(m, "bias", 0) is None}
        try:
            n, detail = run_step(ctx)
            new_error = calibration_error(measured, check, reference) if n else error
        except (RuntimeError, ValueError, IndexError, torch.linalg.LinAlgError) as err:
            n, detail, new_error = 0, f"failed: {type(err).__name__}: {err}"[:300], error
        kept = n > 0 and new_error < error
        if not kept:  # undo: restore weights and drop biases this step added
            for name in biases:
                module = pruned.get_submodule(name) if name else pruned
                if getattr(module, "bias", None) is not None:
                    module.bias = None
            pruned.load_state_dict(backup)
            pruned.eval()
        seconds = time.perf_counter() - start
        if n == 0 and not detail.startswith("failed"):
            detail = f"not applicable: {detail}"
        records.append(StepRecord(step, kept, error, new_error, round(seconds, 3), detail))
        if kept:
            error = new_error
    return records
