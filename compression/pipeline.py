"""One model through the engine, in the README's pipeline order.

prepare (copy, data, trace, score, reference outputs, budget) -> search (prune, rebuild,
measure every candidate) -> verify (choose, re-time against the original) -> report.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from compression.core.errors import CompressionError, DataError, UntraceableModelError
from compression.core.inputs import (
    Batch,
    batch_size,
    check_runs,
    concat,
    index,
    main_output,
    materialize,
    served_like,
    to_device,
    token_mask,
)
from compression.evaluation import kinds, metrics
from compression.evaluation.measure import torch_threads
from compression.forms import packing, runtimes
from compression.output.plan import variant_plan
from compression.output.report import build_report
from compression.output.variant import CompressedModel
from compression.profiles import DeviceProfile, get_profile
from compression.recovery import rebuild
from compression.search import context as search
from compression.search import packing_step, run, runtime_step, splits, verify
from compression.structure import graph, importance

# Samples of the calibration set on which the rebuild ladder measures its error.
PROBE_SAMPLES = 128
# Calibration samples read beyond the profile's calibration_size: no fit sees them; they bound
# how often a variant's answers differ from the original's (class scores, maps).
SPARE_SAMPLES = 2048

Progress = Callable[[float, str], None]


def _device(profile: DeviceProfile) -> str:
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise CompressionError(
            f"profile {profile.name!r} measures on CUDA, and no CUDA device is available here; "
            "use the cpu or edge profile, or a custom profile with device: cpu"
        )
    return profile.device


def compress_model(
    model: nn.Module,
    profile: str | Path | DeviceProfile,
    *,
    example_inputs: Batch | None,
    calibration: Iterable[Batch] | None,
    validation: Iterable[tuple[Batch, object]] | None = None,
    metric: metrics.Metric = "auto",
    source: str | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CompressedModel:
    """:func:`compression.compress` of one model: prepare -> search -> verify -> report."""
    if example_inputs is None or calibration is None:
        raise DataError(
            "compress needs example_inputs= and calibration= (model inputs), or task= "
            "(labelled training batches) to take both from"
        )
    started = time.perf_counter()
    profile = get_profile(profile)
    progress = progress or (lambda fraction, message: None)
    with torch_threads(profile.threads):
        ctx = prepare(
            model,
            profile,
            example_inputs,
            calibration,
            validation,
            metric,
            progress,
            should_stop or (lambda: False),
            deadline=time.monotonic() + profile.time_limit_s,
        )
        base = search.baseline(ctx)
        packed_ms, packing_note = None, "packed tokens: torch not in the profile's runtimes"
        if "torch" in profile.runtimes:
            ctx.packed, measured_ms, packing_note = packing_step.decide(ctx, base)
            packed_ms = measured_ms if ctx.packed else None  # what ONNX Runtime must beat
            if packed_ms is not None:  # the packed original is a candidate (below)
                ctx.fastest_ms = min(ctx.fastest_ms or packed_ms, packed_ms)
        candidates = run.run(ctx, base)
        served_by, runtime_notes = runtime_step.search_step(ctx, candidates, base, packed_ms)
        candidates += served_by
        runtime_notes.insert(0, packing_note)
        if ctx.packed:  # the original on packed tokens is a candidate too; all are served so
            candidates.insert(0, packed_original(ctx, base, packed_ms))
            for b in candidates:
                b.module = search.served(ctx, b.module)
        if "torch" not in profile.runtimes:  # pinned: ONNX Runtime serves, where it can
            ort = [c for c in candidates if isinstance(c.module, runtimes.OrtModule)]
            candidates = ort or candidates
        verdict = verify.verify(ctx, candidates, base)
        report = build_report(
            ctx, verdict, candidates, model=source or type(model).__name__, started=started
        )
    report.runtimes = runtime_notes
    chosen = verdict.chosen
    plan = variant_plan(model, chosen.float_module, chosen.candidate, profile, source)
    if isinstance(chosen.module, runtimes.OrtModule):
        plan["runtime"] = "onnxruntime"
    if chosen.candidate.packed:
        plan["packed"] = True
    progress(1.0, "done")
    return CompressedModel(
        module=chosen.module,
        report=report,
        float_module=chosen.float_module,
        plan=plan,
        smoothing=chosen.smoothing,
    )


def packed_original(ctx: search.SearchContext, base: search.Built, ms: float) -> search.Built:
    """The original on packed tokens as a candidate: its figures are the original's (the same
    outputs on real tokens, :func:`compression.forms.packing.check`), its latency the packed one."""
    cand = dataclasses.replace(base.candidate, latency_ms=round(ms, 4), packed=True)
    step = {"step": "runtime", "kept": True, "detail": "packed tokens, unpruned"}
    return search.Built(packing.served(ctx.original), ctx.original, cand, [step], base.confirmed)


def prepare(
    model: nn.Module,
    profile: DeviceProfile,
    example_inputs: Batch,
    calibration: Iterable[Batch],
    validation: Iterable[tuple[Batch, object]] | None,
    metric: metrics.Metric,
    progress: Progress,
    should_stop: Callable[[], bool],
    deadline: float,
) -> search.SearchContext:
    """Everything the search measures once: a copy of the original on the profile's device,
    the data, the prunable units and their scores, reference outputs and the metric's budget.
    """
    device = _device(profile)
    original = copy.deepcopy(model).eval().to(device)
    example_inputs = to_device(example_inputs, device)
    calib_list, spare, val_list, in_sample, metric, reading = _data(
        original, profile, calibration, validation, metric, device
    )
    progress(0.02, "tracing")
    calib = index(concat(calib_list), slice(0, profile.calibration_size))
    if batch_size(calib) < 2:
        raise DataError("calibration needs at least 2 samples")
    units, unprunable = _units(original, example_inputs, profile, type(model).__name__)
    # The forwards made once here run packed where packing reproduces the original (the same
    # outputs on real tokens, compression.forms.packing.check): faster wherever padding is a
    # large share of the calibration batches, as it is for sentences.
    pack_check = packing.faithful(original, profile, [x for x, _ in val_list[:2]])
    runner = packing.served(original) if pack_check[0] else original
    t = time.perf_counter()
    stats, scores = {}, {}
    if units:
        stats, scores = importance.score_units(
            original, example_inputs, units, profile.importance, calib, runner
        )
    scoring_s = time.perf_counter() - t
    probe = index(calib, slice(0, PROBE_SAMPLES))
    # Selection (every candidate) and confirmation (the chosen one): see compression.search.splits.
    selection, confirmation = splits.interleave(val_list)
    limits = (profile.max_drop, profile.min_fidelity, profile.max_perplexity_increase)
    sel = splits.evaluation(runner, selection, metric, *limits, reading)
    conf = (
        splits.evaluation(runner, confirmation, metric, *limits, reading) if confirmation else None
    )
    pool = None
    if conf is not None and splits.answered(reading) is not None:
        # No fit saw these inputs and no choice was made on them: how often a variant's
        # answers differ from the original's there bounds a labelled drop too (verify.confirm).
        unseen = [(x, None) for x, _ in confirmation] + [(x, None) for x in spare]
        pool = splits.evaluation(runner, unseen, reading.metric, *limits, reading)
    lat_source = val_list[0][0]
    if batch_size(lat_source) < profile.latency_batch or token_mask(lat_source) is not None:
        # GPU batches span several; token batches: a batch as served is drawn from all of them
        lat_source = concat([x for x, _ in val_list])
    return search.SearchContext(
        original=original,
        profile=profile,
        example_inputs=example_inputs,
        calibration=calib,
        validation=sel.data,
        metric=metric,
        reading=reading,
        pool=pool,
        units=units,
        scores=scores,
        stats=stats,
        reference=rebuild.reference_outputs(runner, probe),
        probe=probe,
        reference_val=sel.reference,
        latency_batch=served_like(lat_source, profile.latency_batch),
        budget=sel.budget,
        deadline=deadline,
        progress=progress,
        should_stop=should_stop,
        timings={"scoring": round(scoring_s, 3)},
        metric_before=sel.metric_before,
        unprunable=unprunable,
        reference_perplexity=sel.reference_perplexity,
        selection=sel,
        confirmation=conf,
        in_sample=in_sample,
        pack_check=pack_check,
    )


def _data(
    original: nn.Module,
    profile: DeviceProfile,
    calibration: Iterable[Batch],
    validation: Iterable[tuple[Batch, object]] | None,
    metric: metrics.Metric,
    device: str,
) -> tuple[list, list, list, bool, metrics.Metric, kinds.Reading | None]:
    """Calibration batches on the device, spare calibration batches (read past the fits'
    share, kept where answers are compared), validation batches (held out of the calibration
    data when none is given; in-sample when there is too little to hold out), the metric they
    are judged by, and how the outputs are read for it (:mod:`compression.evaluation.kinds`)."""
    limit = profile.calibration_size + SPARE_SAMPLES
    calib_list = [to_device(b, device) for b in materialize(calibration, "calibration", limit)]
    first = main_output(check_runs(original, calib_list[0], "calibration"))
    calib_list, spare = _spare(calib_list, profile.calibration_size)
    in_sample = False
    if validation is None:  # hold part of the calibration data out of every fit
        calib_list, held = splits.holdout(calib_list)
        in_sample = held is None
        val_list = [(b, None) for b in calib_list] if in_sample else held
    else:
        val_list = [(to_device(x, device), y) for x, y in materialize(validation, "validation")]
        check_runs(original, val_list[0][0], "validation")
    if (
        metric == "auto"
        and not metrics.has_labels(val_list)
        and metrics.is_causal_lm(original, calib_list[0])
    ):
        metric = "perplexity"  # a language model: next-token perplexity, not pooled logits
    if metric == "auto" and profile.metric != "auto":
        metric = profile.metric
    metric = metrics.resolve_metric(metric, val_list)
    reading = metrics.reading(metric, first, calib_list[0])
    if metric == "auto":  # no labels: the metric the outputs' kind calls for
        metric = reading.metric
    if splits.answered(reading) is None:
        spare = []
    return calib_list, spare, val_list, in_sample, metric, reading


def _spare(batches: list[Batch], fits: int) -> tuple[list[Batch], list[Batch]]:
    """(the batches that hold the fits' ``fits`` samples, the whole batches after them)."""
    seen = 0
    for i, b in enumerate(batches):
        seen += batch_size(b)
        if seen >= fits:
            return batches[: i + 1], batches[i + 1 :]
    return batches, []


def _units(
    original: nn.Module, example_inputs: Batch, profile: DeviceProfile, name: str
) -> tuple[list, str | None]:
    """The prunable units of ``original`` and, when there are none, why: a model that cannot
    be pruned still gets the precision step and a report."""
    unprunable = None
    try:
        units = graph.find_units(original, example_inputs, profile.trace_time_limit_s)
    except UntraceableModelError as err:
        units, unprunable = [], str(err)
    if not units and unprunable is None:
        unprunable = (
            f"{name} has no prunable group: expected Linear or Conv layers "
            "whose outputs feed other layers (the output layer is kept)"
        )
    return units, unprunable
