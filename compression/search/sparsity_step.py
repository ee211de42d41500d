"""The sparsity step of the search: 2:4 on CUDA half precision, unstructured sparsity for a size
budget, on the candidates that fit (:mod:`compression.forms.sparsity` builds the masks)."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

from compression.forms import compact, precision
from compression.forms.sparsity import (
    SEMI_MIN_GAIN,
    density_for,
    nonzero_params,
    prune_2to4,
    sparsify,
)


def candidates(ctx, built: list, measure: Callable, make: Callable) -> list:
    """The profile's sparsity step on the search's candidates (``built`` includes the original).

    ``measure(ctx, module, float_module, **info)`` and ``make(module, float_module, candidate,
    steps)`` are the search's own, so sparse candidates are measured and chosen like the rest.
    """
    mode = ctx.profile.sparsity
    if mode == "2:4" and ctx.profile.device.startswith("cuda"):
        return _semi_structured_candidates(ctx, built, measure, make)
    if mode == "unstructured" and ctx.profile.target_size_ratio is not None:
        return _unstructured_candidates(ctx, built, measure, make)
    return []


def _fits(built: list) -> list:
    return [
        b
        for b in built
        if b.candidate.within_budget and not b.candidate.note and b.candidate.sparsity == "none"
    ]


def _semi_structured_candidates(ctx, built: list, measure: Callable, make: Callable) -> list:
    """2:4 on the two fastest half-precision candidates within budget."""
    bases = sorted(
        (b for b in _fits(built) if b.candidate.precision in precision.HALF),
        key=lambda b: b.candidate.latency_ms,
    )[:2]
    out = []
    for base in bases:
        ctx.check()
        start = time.perf_counter()
        c = base.candidate
        sparse_float, masked = prune_2to4(base.float_module, ctx.probe, ctx.profile.ridge)
        if not masked:
            continue
        module = precision.HalfPrecision(copy.deepcopy(sparse_float), c.precision, "2:4").eval()
        module = precision.place(module, ctx.profile.device)
        ctx.tick("sparsity", start)
        info = dict(ratio=c.ratio, allocation=c.allocation, precision=c.precision, sparsity="2:4")
        try:
            cand = measure(ctx, module, sparse_float, **info)
        except RuntimeError as err:  # kernels missing at run time: say so, keep nothing
            cand = dataclasses.replace(
                c, **info, within_budget=False, note=f"2:4 failed: {err}"[:200]
            )
            out.append(make(module, sparse_float, cand, base.steps))
            continue
        detail = f"2:4 on {masked} Linear layers, {module.semi_structured} on sparse kernels"
        if not module.semi_structured:
            cand.note = "2:4 kernels unavailable on this device (dense weights with zeros)"
        elif cand.latency_ms > SEMI_MIN_GAIN * c.latency_ms:
            cand.note = f"no speed-up over dense {c.precision}"
        step = {"step": "sparsity", "kept": not cand.note, "detail": detail}
        out.append(make(module, sparse_float, cand, [*base.steps, step], None, base.smoothing))
    return out


def _unstructured_candidates(ctx, built: list, measure: Callable, make: Callable) -> list:
    """Magnitude pruning to the size budget on the three smallest candidates in budget (they
    need the least thinning, which costs the least quality)."""
    target = ctx.profile.target_size_ratio * compact.stored_bytes(ctx.original.state_dict())
    bases = sorted(_fits(built), key=lambda b: (b.candidate.params, -b.candidate.metric))
    out, seen = [], set()
    for base in bases:
        if len(out) == 3 or time.monotonic() > ctx.deadline:
            break
        key = (id(base.float_module), base.candidate.precision)
        density = density_for(base.float_module, target)
        if key in seen or density is None or density >= 1.0:
            continue  # done, nothing to thin, or already within the size budget
        seen.add(key)
        ctx.check()
        start = time.perf_counter()
        c = base.candidate
        sparse_float = sparsify(base.float_module, density, ctx.probe, ctx.profile.ridge)
        dtype, quantization = precision.split_label(c.precision)
        # The same int8 smoothing scales as the dense base (the layers keep names and shapes).
        module = precision.apply(sparse_float, dtype, quantization, smoothing=base.smoothing)
        module = module.eval()
        ctx.tick("sparsity", start)
        info = dict(
            ratio=c.ratio, allocation=c.allocation, precision=c.precision, sparsity="unstructured"
        )
        cand = measure(ctx, module, sparse_float, **info)
        cand.params = nonzero_params(sparse_float)
        size = compact.stored_bytes(sparse_float.state_dict())
        detail = (
            f"unstructured: {density:.1%} of each weight row kept and refit, stored {size} bytes "
            f"({size / target * ctx.profile.target_size_ratio:.3f} of the original's)"
        )
        step = {"step": "sparsity", "kept": True, "detail": detail}
        out.append(make(module, sparse_float, cand, [*base.steps, step], None, base.smoothing))
    return out
