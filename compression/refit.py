"""Least-squares refit: the rebuild step that solves for each consumer's new weights.

Every consumer of a cut (a layer whose input channels were removed) is refit by ridge regression:
min ||X_pruned W - Y_original||^2 + lambda ||W||^2, where X are the pruned model's *own* inputs
to the layer (so error left upstream is compensated too) and Y the original layer's outputs.
One forward pass does all layers: each is refit in a hook just before it runs, so the next layer
already sees refit inputs. Layers of every kind in :mod:`compression.layers` are refit the same
way (a conv's rows are its unfolded kernel windows); grouped convs are left alone.
"""

from __future__ import annotations

import torch
from torch import nn

from compression import families, layers
from compression.graph import PruneUnit
from compression.inputs import Batch, call, flat_tokens, index, token_mask

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


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
    :func:`compression.layers.unsupported`) are left as they are and listed in ``skipped``.
    ``cache`` (a dict the caller keeps for one original and one ``batch``) holds the original's
    outputs and skip inputs of each layer once captured, so the next candidate's refit skips
    that forward pass.
    """
    names = []
    for unit in units:
        if removed.get(unit.name):
            names += [n for n in unit.consumers if n not in names]
    if skipped is not None:
        skipped.update(
            {n: why for n in names if (why := layers.unsupported(pruned.get_submodule(n)))}
        )
    names = [n for n in names if layers.unsupported(pruned.get_submodule(n)) is None]
    if not names:
        return 0
    mask = token_mask(batch)
    cache = {} if cache is None else cache

    def capture(name):
        def hook(module, args, out):
            cache[("out", name)] = layers.output_rows(module, out.detach().float(), mask)

        return hook

    # Layers whose output joins a skip connection are fit to the *sum*: target = original output
    # + original skip - pruned skip (families.residual_parent says where the skip is).
    parents = {n: p for n in names if (p := families.residual_parent(original, n))}
    skips: dict[str, torch.Tensor] = {}

    def capture_skip(name, sign):
        def hook(module, args):
            rows = flat_tokens(args[1].detach().float(), mask)
            if sign > 0:
                cache[("skip", name)] = rows
            else:
                skips[name] = skips.get(name, 0) + sign * rows

        return hook

    missing = [n for n in names if ("out", n) not in cache]
    if missing:  # one forward of the original captures what no earlier candidate needed
        handles = [original.get_submodule(n).register_forward_hook(capture(n)) for n in missing]
        handles += [
            original.get_submodule(parents[n]).register_forward_pre_hook(capture_skip(n, 1.0))
            for n in missing
            if n in parents
        ]
        try:
            with torch.inference_mode():
                call(original, batch)
        finally:
            for h in handles:
                h.remove()
    targets: dict[str, torch.Tensor] = {}
    for name in names:
        rows = cache[("out", name)]
        keep = kept_rows(name, units, removed, rows.shape[1])
        targets[name] = rows if keep is None else rows[:, keep]
        if name in parents:
            skip = cache[("skip", name)]
            skips[name] = skip if keep is None else skip[:, keep]

    def refit(name):
        def hook(layer, args):
            x = args[0].detach().float()
            rows = layers.input_rows(layer, x, mask)
            target = targets.pop(name)
            if name in skips:
                target = target + skips.pop(name)
            w, b = _ridge(rows, target, ridge)
            layers.set_matrix(layer, w)
            with torch.no_grad():
                layers.ensure_bias(layer).copy_(b.to(layer.weight.dtype))

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
                keep = kept_rows(name, units, removed, bn_orig.num_features)
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
