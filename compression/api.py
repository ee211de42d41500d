"""``compress()``: the engine's one door."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from compression import graph, metrics, rebuild, search
from compression.errors import CompressionError, DataError, UntraceableModelError
from compression.inputs import (
    Batch,
    batch_size,
    check_runs,
    concat,
    index,
    materialize,
    to_device,
)
from compression.measure import latency_ms, macs_params, torch_threads
from compression.plan import structure_diff
from compression.profiles import DeviceProfile, get_profile
from compression.report import CompressionReport
from compression.variant import CompressedModel

if TYPE_CHECKING:
    from compression.task import Task

# Samples of the calibration set on which the rebuild ladder measures its error.
PROBE_SAMPLES = 128


def _device(profile: DeviceProfile) -> str:
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise CompressionError(
            f"profile {profile.name!r} measures on CUDA, and no CUDA device is available here; "
            "use the cpu or edge profile, or a custom profile with device: cpu"
        )
    return profile.device


def compress(
    model: nn.Module,
    profile: str | Path | DeviceProfile,
    *,
    example_inputs: Batch | None = None,
    calibration: Iterable[Batch] | None = None,
    validation: Iterable[tuple[Batch, object]] | None = None,
    metric: metrics.Metric = "auto",
    source: str | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    task: Task | None = None,
) -> CompressedModel:
    """Prune, rebuild and verify a smaller variant of ``model`` for a device profile.

    ``model`` is never mutated. ``calibration`` yields model inputs (no labels); ``validation``
    yields ``(inputs, labels)`` pairs, labels may be None for fidelity-only checks; without it,
    fidelity to the original is measured on the calibration inputs. ``source`` (e.g.
    ``"digits-cnn"``) is recorded so :func:`load_variant` can rebuild the model alone.

    >>> variant = compress(model, "cpu", example_inputs=x[:8], calibration=[x], validation=[(x, y)])
    >>> variant.report.accepted, variant.report.speedup  # doctest: +SKIP
    (True, 3.1)

    With ``task=`` (a :class:`compression.task.Task`: labelled training batches and class
    names) a classification head is trained on ``model`` first and the task model is
    compressed against the labels (see :mod:`compression.task`); ``calibration`` and
    ``example_inputs`` then default to the task's training inputs.
    """
    if task is not None:
        from compression.task import compress_task

        return compress_task(
            model,
            profile,
            task,
            example_inputs=example_inputs,
            calibration=calibration,
            validation=validation,
            metric="accuracy" if metric == "auto" else metric,
            source=source,
            progress=progress,
            should_stop=should_stop,
        )
    if example_inputs is None or calibration is None:
        raise DataError(
            "compress needs example_inputs= and calibration= (model inputs), or task= "
            "(labelled training batches) to take both from"
        )
    started = time.perf_counter()
    profile = get_profile(profile)
    device = _device(profile)
    progress = progress or (lambda fraction, message: None)
    should_stop = should_stop or (lambda: False)
    original = copy.deepcopy(model).eval().to(device)
    example_inputs = to_device(example_inputs, device)

    calib_list = [
        to_device(b, device)
        for b in materialize(calibration, "calibration", profile.calibration_size)
    ]
    check_runs(original, calib_list[0], "calibration")
    if validation is None:
        val_list = [(b, None) for b in calib_list]
    else:
        val_list = [(to_device(x, device), y) for x, y in materialize(validation, "validation")]
        check_runs(original, val_list[0][0], "validation")
    metric = metrics.resolve_metric(metric, val_list)
    metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")

    with torch_threads(profile.threads):
        progress(0.02, "tracing")
        calib = concat(calib_list)
        calib = index(calib, slice(0, profile.calibration_size))
        if batch_size(calib) < 2:
            raise DataError("calibration needs at least 2 samples")
        units = graph.find_units(original, example_inputs)
        if not units:
            raise UntraceableModelError(
                f"{type(model).__name__} has no prunable group: expected Linear or Conv layers "
                "whose outputs feed other layers (the output layer is kept)"
            )
        t = time.perf_counter()
        stats, scores = search.score_units(
            original, example_inputs, units, profile.importance, calib
        )
        scoring_s = time.perf_counter() - t
        probe = index(calib, slice(0, PROBE_SAMPLES))
        reference = rebuild.reference_outputs(original, probe)
        reference_val = metrics.outputs(original, val_list)
        metric_before = metrics.score(metric, reference_val, val_list, reference_val)
        labelled = metric != "cosine"
        budget = metric_before - profile.max_drop if labelled else profile.min_fidelity
        lat_source = val_list[0][0]
        latency_batch = index(lat_source, slice(0, profile.latency_batch))
        ctx = search.SearchContext(
            original=original,
            profile=profile,
            example_inputs=example_inputs,
            calibration=calib,
            validation=val_list,
            metric=metric,
            units=units,
            scores=scores,
            stats=stats,
            reference=reference,
            probe=probe,
            reference_val=reference_val,
            latency_batch=latency_batch,
            budget=budget,
            deadline=time.monotonic() + profile.time_limit_s - (time.perf_counter() - started),
            progress=progress,
            should_stop=should_stop,
            timings={"scoring": round(scoring_s, 3)},
        )
        base = search.measure(
            ctx, original, original, ratio=0.0, allocation="none", precision="float32"
        )
        base_built = search.Built(original, original, base, [])
        candidates = search.run(ctx, base_built)
        winner, reason = search.choose(ctx, candidates, base)

        progress(0.95, "verifying")
        chosen = winner or min(candidates, key=lambda b: b.candidate.ratio, default=base_built)
        # Re-measure both back to back: the reported speed-up compares like with like.
        t = time.perf_counter()
        lat_before = latency_ms(original, latency_batch, device, profile.latency_repeats)
        lat_after = latency_ms(chosen.module, latency_batch, device, profile.latency_repeats)
        ctx.tick("verify", t)
        macs_before, params_before = macs_params(original, example_inputs)
        speedup = lat_before / max(lat_after, 1e-9)
        c = chosen.candidate
        accepted = winner is not None and (
            speedup > 1.0 or c.params < params_before or c.macs < macs_before
        )
        if winner is not None and not accepted:
            reason = "no candidate within budget is faster or smaller than the original"
        target_met = accepted and (
            (profile.target_speedup is None or speedup >= profile.target_speedup)
            and (
                profile.target_size_ratio is None
                or c.params <= profile.target_size_ratio * params_before
            )
        )
        steps = list(chosen.steps)
        steps.append({"step": "precision", "kept": c.precision != "float32", "detail": c.precision})
        steps.append(
            {
                "step": "verify",
                "kept": accepted,
                "detail": f"{metric_name} {c.metric:.4f} vs budget {budget:.4f}",
            }
        )
        task_metrics = None
        if labelled and not callable(metric):  # accuracy, macro precision/recall/F1
            task_metrics = _classification_report(reference_val, chosen.module, val_list)
        report = CompressionReport(
            model=source or type(model).__name__,
            profile=profile.name,
            accepted=accepted,
            reason=reason,
            params_before=params_before,
            params_after=c.params,
            macs_before=macs_before,
            macs_after=c.macs,
            latency_ms_before=round(lat_before, 4),
            latency_ms_after=round(lat_after, 4),
            speedup=round(speedup, 4),
            metric=metric_name,
            metric_before=round(metric_before, 6),
            metric_after=c.metric,
            fidelity=c.fidelity,
            budget=round(budget, 6),
            seconds=round(time.perf_counter() - started, 2),
            steps=steps,
            ratio=c.ratio,
            allocation=c.allocation,
            importance=profile.importance,
            precision=c.precision,
            target_met=target_met,
            neighbour_recall=c.recall,
            timings=ctx.timings,
            candidates=[b.candidate for b in candidates],
            task_metrics=task_metrics,
        )
    plan = {
        "source": source,
        "profile": profile.model_dump(),
        "structure": structure_diff(model, chosen.float_module),
        "dtype": profile.dtype
        if c.precision != "float32" and profile.dtype != "float32"
        else "float32",
        "quantization": "int8-dynamic" if c.precision == "int8-dynamic" else "none",
    }
    progress(1.0, "done")
    return CompressedModel(
        module=chosen.module, report=report, float_module=chosen.float_module, plan=plan
    )


def _classification_report(reference_val: list, module: nn.Module, val_list: list) -> dict:
    """Accuracy and macro precision/recall/F1 of the original and of the chosen variant."""
    from compression.task import classification_metrics

    labels = torch.cat([torch.as_tensor(y).reshape(-1) for _, y in val_list]).numpy()
    after = metrics.outputs(module, val_list)
    return {
        "before": classification_metrics(torch.cat(reference_val).numpy(), labels),
        "after": classification_metrics(torch.cat(after).cpu().numpy(), labels),
    }
