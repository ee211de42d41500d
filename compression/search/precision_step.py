"""The search's precision step: each float structure in the precisions the profile tries.

:func:`compression.search.run.run` calls :func:`with_precision` on the fastest structures within
budget, the most faithful one and the unpruned model. Each precision the profile tries
(``compression.forms.precision.options``: int8 dynamic quantization, bfloat16 beside it on a CPU that
computes it natively, float16/bfloat16 on CUDA) is a candidate measured like any other and
kept only where it is at least 5 % faster than its float structure and within budget. int8
runs on inputs smoothed into the weights (:mod:`compression.forms.smoothing`), with the strength
chosen here (:func:`int8_smoothing`).
"""

from __future__ import annotations

import time

from torch import nn

from compression.core.inputs import buckets, index
from compression.forms import precision, smoothing
from compression.search import splits
from compression.search.context import Built, SearchContext, remeasure, served

# Calibration samples whose activations give the int8 smoothing its input ranges. On MiniLM,
# ranges from 128 sentences kept clearly less held-out fidelity than from 256, and 512 added
# little more while each sample costs its share of a float forward.
RANGE_SAMPLES = 256


def with_precision(ctx: SearchContext, built: Built) -> list[Built]:
    """The profile's dtype/quantization applied to a float candidate, one per precision the
    profile tries (``precision.options``: int8, and bfloat16 on a CPU that computes it
    natively; on CUDA float16 and bfloat16)."""
    p = ctx.profile
    out = []
    c = built.candidate
    for label in precision.options(p.dtype, p.quantization, p.device, p.cpu_bfloat16):
        start = time.perf_counter()
        dtype, quantization = precision.split_label(label)
        try:
            scales, detail, figures = None, label, None
            if quantization == "int8-dynamic" and p.smoothing:
                scales, detail, figures = int8_smoothing(ctx, built.float_module)
            module = precision.apply(built.float_module, dtype, quantization, smoothing=scales)
            module = served(ctx, module.eval())
            ctx.tick("precision", start)
            cand = remeasure(ctx, module, built, label, figures)
        except (RuntimeError, ValueError, TypeError) as err:
            # A precision the model does not run in (a layer that mixes dtypes) is one fewer
            # candidate, recorded in the report; the search goes on with the others.
            ctx.failures.append(f"{label} of {c.ratio:.0%} {c.allocation}: {err}"[:300])
            continue
        if cand.latency_ms > 0.95 * c.latency_ms:  # must earn its place: >= 5% faster than float
            cand.note = "no speed-up over float32"
        step = {"step": "precision", "kept": cand.within_budget, "detail": detail}
        out.append(Built(module, built.float_module, cand, [*built.steps, step], smoothing=scales))
    return out


def int8_smoothing(ctx: SearchContext, float_module: nn.Module):
    """The int8 smoothing scales of one float structure (None: plain int8), a line for its
    steps, and its int8 figures on the selection split where they were measured (else None).

    The strength is chosen once, on the first structure quantized: the one whose int8 model
    keeps the highest fidelity on the selection split (:func:`compression.forms.smoothing.
    choose_alpha`), data the scales were not computed from; every later structure takes it
    with scales from its own activations. Chosen on the calibration error instead, MiniLM took
    0.9 (the lower calibration error) where 0.8 kept more on held-out text.

    The input ranges come from :data:`RANGE_SAMPLES` calibration samples, not the probe: a
    channel's largest value is a tail statistic: from too few samples the ranges fit the
    calibration text and the held-out fidelity falls well short of the confirmation split's
    (MiniLM, unpruned, strength 0.9: far more so from 128 sentences than from 512).
    """
    calibration = index(ctx.calibration, slice(0, RANGE_SAMPLES))
    ranges = smoothing.input_ranges(served(ctx, float_module), buckets(calibration, 8))

    def scales_for(alpha: float | None) -> dict | None:
        return None if alpha is None else smoothing.scales(float_module, ranges, alpha)

    figures = None
    if ctx.smoothing_alpha == "unset":
        floor = ctx.profile.min_neighbour_recall
        seen = {}

        def loss(alpha: float | None) -> float:
            q = served(ctx, precision.quantize_int8(float_module, scales_for(alpha)).eval())
            seen[alpha] = splits.measure(q, ctx.selection, ctx.metric, floor)
            return 1.0 - seen[alpha][1]

        ctx.smoothing_alpha, losses = smoothing.choose_alpha(loss)
        figures = seen[ctx.smoothing_alpha]
        tried = ", ".join(f"{'none' if a is None else a}: {1 - e:.4f}" for a, e in losses.items())
        how = f"chosen by fidelity on the selection split ({tried})"
    else:
        how = "as chosen on the first structure"
    alpha = ctx.smoothing_alpha
    label = "int8-dynamic, no smoothing" if alpha is None else f"int8-dynamic, smoothing {alpha}"
    return scales_for(alpha), f"{label} ({how})", figures
