"""Prune for the task, or for the embedding? Three ways to get a small classifier, one split.

    python -m benchmarks.task_pruning [--tasks python-topics,digits-parity] [--profile cpu]
                                      [--readme]

For each task (model: ``minilm`` for ``python-topics``, ``digits-cnn`` for ``digits-parity``):

- (a) **task-aware**: train the head on the pretrained model, then compress the task model
  against the labels (``compress(..., task=...)``: Taylor importance on the task loss, refits
  that keep the head's inputs, the profile's ``max_drop`` on accuracy);
- (b) **fidelity, then head**: compress the pretrained model for output fidelity (what the
  service does without labels), then train the same head on the pruned model;
- (c) **unpruned**: the head on the uncompressed model.

Same train/validation split, same head, same profile (int8 off, so the columns compare pruning).
Latencies of (a), (b), (c) are timed in interleaved rounds in this one process. Writes
benchmarks/results/task_pruning.json and .md; with --readme, the README block.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks.common import (
    Timer,
    describe_machine,
    finish,
    machine,
    stamp,
    table,
    update_readme,
)
from compression.evaluation.measure import latency_ms, macs_params
from compression.profiles import get_profile
from compression.task import Task, compress_task, evaluate, fit_head
from service.models.sources import resolve
from service.models.tasks import make_task

MODELS = {"python-topics": "minilm", "digits-parity": "digits-cnn"}


def interleaved_latency(models: dict, batch, rounds: int = 5, repeats: int = 5) -> dict:
    """Median latency (ms) of each model, timed round-robin so load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(latency_ms(model, batch, "cpu", repeats=repeats, warmup=1))
    return {k: statistics.median(v) for k, v in times.items()}


def run_task(task_name: str, profile_name: str) -> list[dict]:
    bundle = resolve(MODELS[task_name])
    profile = get_profile(profile_name).model_copy(update={"quantization": "none"})
    task, validation, _, _ = make_task(bundle, task_name, None)
    example = task.train[0][0]
    rows = {}

    with Timer() as t:
        unpruned, _ = fit_head(bundle.factory(), task)
    rows["c"] = {"way": "(c) unpruned, head fine-tuned", "model": unpruned, "seconds": t.seconds}

    with Timer() as t:
        variant = compress_task(unpruned, profile, task, validation=validation)
    rows["a"] = {
        "way": "(a) fine-tune head, then prune for the task",
        "model": variant.module,
        "seconds": t.seconds + rows["c"]["seconds"],
        "report": variant.report,
    }

    with Timer() as t:
        # What the service does without labels: keep the model's outputs (cosine fidelity).
        fidelity = bundle.compress(
            profile,
            validation=[(x, None) for x, _ in validation],
            metric="cosine",
        )
        pruned_task, _ = fit_head(fidelity.module, Task(train=task.train, labels=task.labels))
    rows["b"] = {
        "way": "(b) prune for output fidelity, then fine-tune head",
        "model": pruned_task,
        "seconds": t.seconds,
        "report": fidelity.report,
    }

    lat = interleaved_latency({k: r["model"] for k, r in rows.items()}, example)
    macs_c, params_c = macs_params(unpruned, example)
    out = []
    for key in ("a", "b", "c"):
        r = rows[key]
        macs, params = macs_params(r["model"], example)
        m = evaluate(r["model"], validation)
        out.append(
            {
                "task": task_name,
                "model": MODELS[task_name],
                "way": r["way"],
                **m,
                "macs_reduction": round(macs_c / macs, 3),
                "params_reduction": round(params_c / params, 3),
                "latency_ms": round(lat[key], 3),
                "speedup": round(lat["c"] / lat[key], 3),
                "seconds": round(r["seconds"], 1),
                "accepted": r["report"].accepted if "report" in r else None,
                "chosen": (
                    f"{r['report'].ratio:.0%} {r['report'].allocation}" if "report" in r else "–"
                ),
            }
        )
    return out


def markdown(result: dict) -> str:
    end = result["machine"].get("load_average_end")
    busy = (
        f" Load average {end[0]} at the end: the machine was shared; latencies and the "
        "profile's time limit (which stops the search) were affected."
        if end and end[0] > 2 * (result["machine"]["cores"] or 1)
        else ""
    )
    lines = [
        f"Measured {result['when']} on {describe_machine(result['machine'])}; profile "
        f"`{result['profile']}` with int8 off; validation: a stratified 30 % hold-out "
        f"(`python -m benchmarks.task_pruning --readme`, {result['seconds'] / 60:.0f} min).{busy}",
        "",
    ]
    header = [
        "task",
        "way",
        "accuracy",
        "macro-F1",
        "precision",
        "recall",
        "MACs×",
        "speed-up",
        "chosen",
        "s",
    ]
    rows = [
        [
            f"{r['task']} ({r['model']})",
            r["way"],
            f"{r['accuracy']:.4f}",
            f"{r['macro_f1']:.4f}",
            f"{r['precision']:.4f}",
            f"{r['recall']:.4f}",
            f"{r['macs_reduction']:.2f}",
            f"{r['speedup']:.2f}",
            r["chosen"],
            f"{r['seconds']:.0f}",
        ]
        for r in result["rows"]
    ]
    return "\n".join(lines + table(header, rows)) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="python-topics,digits-parity")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--readme", action="store_true", help="update the README block")
    p.add_argument("--render", action="store_true", help="re-render the last results only")
    args = p.parse_args(argv)
    if args.render:
        from benchmarks.common import RESULTS

        result = json.loads((RESULTS / "task_pruning.json").read_text())
        md = markdown(result)
        (RESULTS / "task_pruning.md").write_text(md)
        if args.readme:
            update_readme("task_pruning", md)
        print(md)
        return
    torch.manual_seed(0)
    started = time.perf_counter()
    result = {"when": stamp(), "machine": machine(), "profile": args.profile, "rows": []}
    for name in args.tasks.split(","):
        result["rows"] += run_task(name.strip(), args.profile)
    result["seconds"] = round(time.perf_counter() - started, 1)
    md = markdown(result)
    finish("task_pruning", result, md, md if args.readme else None)


if __name__ == "__main__":
    main()
