"""The gpu profile on a real GPU: digits-cnn and MiniLM compressed for ``gpu``, measured on CUDA.

    python -m benchmarks.gpu_profile [--models digits-cnn,minilm] [--readme]

For each model: ``compress(model, "gpu")`` end to end on CUDA (scores, rebuild, verify, the
float16/bfloat16 and 2:4 steps), then the chosen variant re-timed against the float32 original
on the same GPU at several batch sizes (CUDA events, medians of interleaved rounds), its
fidelity (accuracy, or cosine and neighbour recall@10 for MiniLM), the compression's seconds,
and what every precision/sparsity step measured. Writes benchmarks/results/gpu_profile.json and
gpu_profile.md (and with --readme the README block). Without CUDA it says so and exits 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks.common import describe_machine, finish, machine, stamp, table
from compression.core.inputs import batch_size, concat, index
from compression.evaluation import metrics
from compression.evaluation.measure import latency_ms
from compression.forms import precision
from service.models import resolve

NAME = "gpu_profile"
BATCHES = {"digits-cnn": (1, 128, 1024), "minilm": (1, 32, 128)}


def _batch(bundle, n: int):
    """``n`` validation samples (repeated when the validation set is smaller)."""
    x = concat([b for b, _ in bundle.validation])
    while batch_size(x) < n:
        x = concat([x, x])
    return index(x, slice(0, n))


def _interleaved(modules: dict, batch, rounds: int = 5) -> dict[str, float]:
    """Median latency (ms) of each module, timed in turn round after round on CUDA."""
    times: dict[str, list[float]] = {k: [] for k in modules}
    for _ in range(rounds):
        for key, module in modules.items():
            times[key].append(latency_ms(module, batch, "cuda", repeats=10, min_seconds=0.1))
    return {k: statistics.median(v) for k, v in times.items()}


def _steps(report) -> list[dict]:
    """What each precision/sparsity candidate measured (fastest of each kind)."""
    best: dict[tuple[str, str], object] = {}
    for c in report.candidates:
        key = (c.precision, c.sparsity)
        if key not in best or c.latency_ms < best[key].latency_ms:
            best[key] = c
    return [
        {
            "precision": p,
            "sparsity": s,
            "ratio": c.ratio,
            "latency_ms": c.latency_ms,
            "metric": c.metric,
            "within_budget": c.within_budget,
            "note": c.note,
        }
        for (p, s), c in sorted(best.items())
    ]


def run_model(name: str) -> dict:
    bundle = resolve(name)
    start = time.perf_counter()
    variant = bundle.compress("gpu")
    seconds = time.perf_counter() - start
    r = variant.report
    original = bundle.factory().eval().cuda()
    chosen = precision.place(variant.module.eval(), "cuda")
    timings = []
    for n in BATCHES[name]:
        batch = _batch(bundle, n)
        batch = {k: v.cuda() for k, v in batch.items()} if isinstance(batch, dict) else batch.cuda()
        ms = _interleaved({"original": original, "variant": chosen}, batch)
        timings.append(
            {
                "batch": n,
                "original_ms": round(ms["original"], 4),
                "variant_ms": round(ms["variant"], 4),
                "speedup": round(ms["original"] / ms["variant"], 3),
            }
        )
    row = {
        "model": name,
        "accepted": r.accepted,
        "reason": r.reason,
        "speedup": r.speedup,
        "latency_ms_before": r.latency_ms_before,
        "latency_ms_after": r.latency_ms_after,
        "metric": r.metric,
        "before": round(r.metric_before, 4),
        "after": round(r.metric_after, 4),
        "fidelity": r.fidelity,
        "recall@10": r.neighbour_recall,
        "macs_x": round(r.macs_reduction, 2),
        "params_x": round(r.params_reduction, 2),
        "ratio": r.ratio,
        "allocation": r.allocation,
        "precision": r.precision,
        "sparsity": r.sparsity,
        "seconds": round(seconds, 1),
        "timings": r.timings,
        "by_batch": timings,
        "steps_tried": _steps(r),
    }
    if bundle.metric == "cosine":  # recall on the same validation data, from the outputs
        reference = metrics.outputs(original, [(to_cuda(x), y) for x, y in bundle.validation])
        got = metrics.outputs(chosen, [(to_cuda(x), y) for x, y in bundle.validation])
        row["recall@10"] = round(metrics.neighbour_recall(got, reference), 4)
    print(row, flush=True)
    return row


def to_cuda(x):
    return {k: v.cuda() for k, v in x.items()} if isinstance(x, dict) else x.cuda()


def markdown(result: dict) -> str:
    lines = [
        f"Measured {result['date']} on **{result['gpu']}** (CUDA {result['cuda']}; host "
        f"{describe_machine(result['machine'])}), `python -m benchmarks.gpu_profile`. Speed-up "
        "is over the float32 original on the same GPU (CUDA events, profile batch "
        f"{result['latency_batch']}); no fine-tuning.",
        "",
    ]
    lines += table(
        [
            "model",
            "accepted",
            "speed-up",
            "metric",
            "before",
            "after",
            "recall@10",
            "MACs×",
            "pruned",
            "precision",
            "2:4",
            "seconds",
        ],
        [
            [
                r["model"],
                "yes" if r["accepted"] else "no",
                f"{r['speedup']:.2f}x",
                r["metric"],
                f"{r['before']:.4f}",
                f"{r['after']:.4f}",
                "–" if r["recall@10"] is None else f"{r['recall@10']:.4f}",
                f"{r['macs_x']:.2f}",
                f"{r['ratio']:.0%} {r['allocation']}",
                r["precision"],
                "yes" if r["sparsity"] == "2:4" else "no",
                f"{r['seconds']:.1f}",
            ]
            for r in result["rows"]
        ],
    )
    lines += ["", "Chosen variant vs the float32 original by batch size (ms, median):", ""]
    lines += table(
        ["model", "batch", "original", "variant", "speed-up"],
        [
            [
                r["model"],
                str(t["batch"]),
                f"{t['original_ms']:.3f}",
                f"{t['variant_ms']:.3f}",
                f"{t['speedup']:.2f}x",
            ]
            for r in result["rows"]
            for t in r["by_batch"]
        ],
    )
    lines += ["", "Each precision / sparsity step, fastest candidate of each kind:", ""]
    lines += table(
        ["model", "precision", "sparsity", "pruned", "latency ms", "metric", "kept?"],
        [
            [
                r["model"],
                s["precision"],
                s["sparsity"],
                f"{s['ratio']:.0%}",
                f"{s['latency_ms']:.3f}",
                f"{s['metric']:.4f}",
                "over budget" if not s["within_budget"] else (s["note"] or "candidate"),
            ]
            for r in result["rows"]
            for s in r["steps_tried"]
        ],
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="digits-cnn,minilm")
    parser.add_argument("--readme", action="store_true", help="update the README block")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks.gpu_profile: no CUDA device here; nothing measured", file=sys.stderr)
        sys.exit(2)
    from compression import PROFILES

    rows = [run_model(name) for name in args.models.split(",")]
    result = {
        "date": stamp(),
        "gpu": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "capability": list(torch.cuda.get_device_capability()),
        "latency_batch": PROFILES["gpu"].latency_batch,
        "machine": machine(),
        "rows": rows,
    }
    text = markdown(result)
    finish(NAME, result, text, readme=text if args.readme else None)


if __name__ == "__main__":
    main()
