"""``slimserve compress | models | profiles``: the engine's commands (they load torch, so
:mod:`service.cli.main` imports this module only for them).

Exit status of ``compress``: 0 accepted, 3 compressed but rejected (over budget), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from compression import PROFILES
from compression.core.errors import CompressionError, DataError
from compression.task import compress_task, fit_head
from service.models.bundle import load_array_batches, set_text_data
from service.models.sources import BUILTINS, resolve
from service.models.tasks import make_task, write_task_dir
from service.models.text import read_sentences, sentence_split

EXIT_OK, EXIT_BAD_INPUT, EXIT_REJECTED = 0, 2, 3


def _load_data(bundle, calibration: str | None, validation: str | None) -> None:

    if bundle.is_text:
        if calibration or validation:
            cal = read_sentences(calibration) if calibration else None
            val = read_sentences(validation) if validation else None
            if cal is None:
                cal = sentence_split()[0]
            set_text_data(bundle, cal, val)
        return
    if calibration:
        bundle.calibration = load_array_batches(calibration, "calibration", with_labels=False)
        bundle.example_inputs = bundle.calibration[0][:8]
    if validation:
        bundle.validation = load_array_batches(validation, "validation", with_labels=True)
    if not bundle.calibration:
        raise DataError(f"{bundle.source} has no built-in data: pass --calibration FILE.npy")


def _progress_bar(name: str):
    bar = tqdm(total=100, desc=f"compress {name}", unit="%", file=sys.stderr)

    def progress(fraction: float, message: str) -> None:
        bar.set_postfix_str(message)
        bar.update(max(0, round(fraction * 100) - bar.n))

    return bar, progress


def _compress_task(args: argparse.Namespace, bundle):
    """``--task classify``: train a head, compress the task model, write a task directory."""

    if args.task != "classify":
        raise DataError(f"--task {args.task!r}: expected 'classify'")
    if not args.train:
        raise DataError("--task classify needs --train FILE (labelled) or a built-in task")
    task, validation, train_ex, val_ex = make_task(
        bundle, args.train, args.validation, head=args.head, finetune_seconds=args.finetune_s
    )
    task_model, _ = fit_head(bundle.factory(), task)
    bar, progress = _progress_bar(f"{bundle.name} for the task")
    try:
        variant = compress_task(
            task_model,
            args.profile,
            task,
            validation=validation,
            source=bundle.source,
            progress=progress,
        )
    finally:
        bar.close()
    out = variant.save(args.out)
    write_task_dir(out, bundle, task_model, task.labels, train_ex, val_ex, name=args.name)
    return variant, out


def cmd_compress(args: argparse.Namespace) -> int:
    try:
        return _compress(args)
    except CompressionError as err:
        print(f"slimserve: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _compress(args: argparse.Namespace) -> int:
    bundle = resolve(args.model)
    if args.task:
        variant, out = _compress_task(args, bundle)
    else:
        _load_data(bundle, args.calibration, args.validation)
        bar, progress = _progress_bar(bundle.name)
        try:
            extra = {"metric": args.metric} if getattr(args, "metric", None) else {}
            variant = bundle.compress(args.profile, progress=progress, **extra)
        finally:
            bar.close()
        out = variant.save(args.out)
    r = variant.report
    summary = {
        "out": str(out),
        "accepted": r.accepted,
        "reason": r.reason,
        "speedup": r.speedup,
        "macs_reduction": round(r.macs_reduction, 3),
        "params_reduction": round(r.params_reduction, 3),
        r.metric: {"before": r.metric_before, "after": r.metric_after},
        "seconds": r.seconds,
    }
    if r.metric_reading:
        summary["metric_reading"] = r.metric_reading["why"]
    if r.claim:
        summary["claim"] = r.claim["method"]
        if r.claim.get("needed"):
            summary["cannot_verify"] = r.claim["needed"]
    if r.task_metrics:
        summary["task"] = r.task_metrics
    print(json.dumps(summary, indent=2))
    return EXIT_OK if r.accepted else EXIT_REJECTED


def cmd_models(args: argparse.Namespace) -> int:
    for name, text in BUILTINS.items():
        print(f"{name:12s} {text}")
    print("hf:DIR       a Hugging Face model directory (BERT family)")
    print("task:DIR     a task model written by `slimserve compress --task classify`")
    print("py:MOD:FN    a factory function returning an nn.Module (give --calibration)")
    return EXIT_OK


def cmd_profiles(args: argparse.Namespace) -> int:
    for name, p in PROFILES.items():
        target = (
            f"speed-up >= {p.target_speedup}x"
            if p.target_speedup
            else f"params <= {p.target_size_ratio:.0%}"
        )
        print(
            f"{name:6s} device={p.device} dtype={p.dtype} quantization={p.quantization} "
            f"round_to={p.round_to} max_drop={p.max_drop} min_fidelity={p.min_fidelity} {target}"
        )
    return EXIT_OK
