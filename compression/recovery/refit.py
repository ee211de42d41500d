"""Least-squares refit: the rebuild step that solves for each consumer's new weights.

Every consumer of a cut (a layer whose input channels were removed) is refit by ridge regression:
min ||X_pruned W - Y_original||^2 + lambda ||W||^2, where X are the pruned model's *own* inputs
to the layer (so error left upstream is compensated too) and Y the original layer's outputs.
One forward pass does all layers: each is refit in a hook just before it runs, so the next layer
already sees refit inputs. Token batches run as length buckets (each cut to its longest
sample), one thread per bucket meeting at every consumer, so padding costs nothing. Layers of
every kind in :mod:`compression.structure.layers` are refit the same way (a conv's rows are its unfolded
kernel windows); grouped convs are left alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn

from compression.core.inputs import Batch, buckets, call, flat_tokens, index, token_mask
from compression.structure import families, layers
from compression.structure.graph import PruneUnit

BARRIER_TIMEOUT_S = 600.0  # a bucket's forward that never reaches a layer fails the refit


def kept_rows(name: str, units: list[PruneUnit], removed: dict[str, list[int]], n: int):
    """Indices of ``name``'s output channels that survive pruning (None: all of them)."""
    for unit in units:
        if name in unit.producers and removed.get(unit.name):
            gone = set(removed[unit.name])
            return torch.tensor([i for i in range(n) if i not in gone])
    return None


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
    skipped: dict[str, str] | None = None,
    cache: dict | None = None,
) -> int:
    """Ridge-refit every consumer of a cut (see module docstring); returns how many.

    Consumers of a kind the refit cannot rewrite (a grouped conv; see
    :func:`compression.structure.layers.unsupported`) are left as they are and listed in ``skipped``.
    ``cache`` (a dict the caller keeps for one original and one ``batch``) holds the original's
    outputs and skip inputs of each layer once captured, so the next candidate's refit skips
    that forward pass.
    """
    names = _consumers(pruned, units, removed, skipped)
    if not names:
        return 0
    cache = {} if cache is None else cache
    parts = buckets(batch)
    masks = [token_mask(part) for part in parts]
    # Layers whose output joins a skip connection are fit to the *sum*: target = original output
    # + original skip - pruned skip (families.residual_parent says where the skip is).
    parents = {n: p for n in names if (p := families.residual_parent(original, n))}

    missing = [n for n in names if ("out", n) not in cache]
    if missing:  # the original's forward captures what no earlier candidate needed
        _capture_original(original, parts, masks, missing, parents, cache)
    targets: dict[str, torch.Tensor] = {}
    for name in names:
        rows = cache[("out", name)]
        keep = kept_rows(name, units, removed, rows.shape[1])
        targets[name] = rows if keep is None else rows[:, keep]
        if name in parents:
            skip = cache[("skip", name)]
            targets[name] = targets[name] + (skip if keep is None else skip[:, keep])
    _solve_in_buckets(
        _Refit(pruned, original, units, removed, ridge), names, parents, targets, parts, masks
    )
    return len(names)


def _consumers(
    pruned: nn.Module,
    units: list[PruneUnit],
    removed: dict[str, list[int]],
    skipped: dict[str, str] | None,
) -> list[str]:
    """The layers reading a cut unit's channels that the refit can rewrite (the others, with
    why, into ``skipped``)."""
    names: list[str] = []
    for unit in units:
        if removed.get(unit.name):
            names += [n for n in unit.consumers if n not in names]
    if skipped is not None:
        skipped.update(
            {n: why for n in names if (why := layers.unsupported(pruned.get_submodule(n)))}
        )
    return [n for n in names if layers.unsupported(pruned.get_submodule(n)) is None]


@dataclass
class _Refit:
    """What one refit rewrites: the pruned model, against the original and its cut."""

    pruned: nn.Module
    original: nn.Module
    units: list[PruneUnit]
    removed: dict[str, list[int]]
    ridge: float


def _solve_in_buckets(
    job: _Refit,
    names: list[str],
    parents: dict[str, str],
    targets: dict[str, torch.Tensor],
    parts: list[Batch],
    masks: list,
) -> None:
    """Fit every layer in ``names`` to its target from the pruned model's own inputs.

    The pruned model's forward runs once per bucket, each in its own thread; at every
    consumer the threads wait for each other (a barrier), the last one in solves the refit
    from all buckets' inputs, and all go on through the refit layer.
    """
    pruned, original, units, removed = job.pruned, job.original, job.units, job.removed
    follower = _batchnorm_after(original, names, parts[0])
    local = threading.local()
    inputs = {n: [None] * len(parts) for n in names}
    pruned_skips = {n: [None] * len(parts) for n in parents}

    def solve(name):
        def action():
            target = targets.pop(name)
            if name in parents:
                target = target - torch.cat(pruned_skips.pop(name))
            w, b = _ridge(torch.cat(inputs.pop(name)), target, job.ridge)
            layer = pruned.get_submodule(name)
            layers.set_matrix(layer, w)
            with torch.no_grad():
                layers.ensure_bias(layer).copy_(b.to(layer.weight.dtype))
            if name in follower:  # the BatchNorm after a refit layer: the original's statistics
                _restore_bn(pruned, original, follower[name], kept_rows(name, units, removed,
                            original.get_submodule(follower[name]).num_features))  # fmt: skip

        return action

    barriers = {n: threading.Barrier(len(parts), action=solve(n)) for n in names}

    def before_layer(name):
        def hook(layer, args):
            inputs[name][local.i] = layers.input_rows(layer, args[0].detach().float(), local.mask)
            barriers[name].wait(timeout=BARRIER_TIMEOUT_S)

        return hook

    def before_parent(name):
        def hook(module, args):
            pruned_skips[name][local.i] = flat_tokens(args[1].detach().float(), local.mask)

        return hook

    handles = [pruned.get_submodule(n).register_forward_pre_hook(before_layer(n)) for n in names]
    handles += [
        pruned.get_submodule(p).register_forward_pre_hook(before_parent(n))
        for n, p in parents.items()
    ]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        local.i, local.mask = i, masks[i]
        try:
            with torch.no_grad():  # grad mode is per thread
                call(pruned, parts[i])
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(err)
            for barrier in barriers.values():
                barrier.abort()  # the other buckets stop waiting

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(parts))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for h in handles:
            h.remove()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]


def _capture_original(original, parts, masks, names, parents, cache) -> None:
    """The original's output (and skip input) rows of each named layer over all ``parts``."""
    rows: dict[tuple[str, str], list[torch.Tensor]] = {}
    mask = [None]

    def capture(name):
        def hook(module, args, out):
            got = layers.output_rows(module, out.detach().float(), mask[0])
            rows.setdefault(("out", name), []).append(got)

        return hook

    def capture_skip(name):
        def hook(module, args):
            got = flat_tokens(args[1].detach().float(), mask[0])
            rows.setdefault(("skip", name), []).append(got)

        return hook

    handles = [original.get_submodule(n).register_forward_hook(capture(n)) for n in names]
    handles += [
        original.get_submodule(parents[n]).register_forward_pre_hook(capture_skip(n))
        for n in names
        if n in parents
    ]
    try:
        with torch.inference_mode():
            for part, m in zip(parts, masks, strict=True):
                mask[0] = m
                call(original, part)
    finally:
        for h in handles:
            h.remove()
    cache.update({key: torch.cat(chunks) for key, chunks in rows.items()})


def _restore_bn(pruned: nn.Module, original: nn.Module, bn_name: str, keep) -> None:
    """Copy the original BatchNorm's statistics of the kept channels into the pruned one."""
    bn, bn_orig = pruned.get_submodule(bn_name), original.get_submodule(bn_name)
    keep = torch.arange(bn_orig.num_features) if keep is None else keep
    if len(keep) == bn.num_features:
        with torch.no_grad():
            for attr in ("running_mean", "running_var", "weight", "bias"):
                getattr(bn, attr).copy_(getattr(bn_orig, attr)[keep])


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
        m.register_forward_pre_hook(find(n))
        for n, m in model.named_modules()
        if isinstance(m, layers.BATCHNORMS)
    ]
    try:
        with torch.inference_mode():
            call(model, index(batch, slice(0, 2)))
    finally:
        for h in handles:
            h.remove()
    return follower
