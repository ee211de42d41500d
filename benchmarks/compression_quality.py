"""Compress the built-in models for each profile and record what the reports measured.

    python -m benchmarks.compression_quality [--models digits-cnn,minilm] [--profiles cpu,edge]
                                             [--readme]

Writes benchmarks/results/compression.json and compression.md; with --readme, replaces the
table between the COMPRESSION markers in README.md (regenerated, never typed by hand).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from compression import metrics
from service.models.sources import resolve

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent.parent / "README.md"
BEGIN, END = "<!-- COMPRESSION:BEGIN -->", "<!-- COMPRESSION:END -->"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def run(models: list[str], profiles: list[str]) -> dict:
    rows = []
    for name in models:
        bundle = resolve(name)
        for profile in profiles:
            start = time.perf_counter()
            variant = bundle.compress(profile)
            r = variant.report
            rows.append(
                {
                    "model": name,
                    "profile": profile,
                    "accepted": r.accepted,
                    "macs_x": round(r.macs_reduction, 2),
                    "params_x": round(r.params_reduction, 2),
                    "speedup": round(r.speedup, 2),
                    "metric": r.metric,
                    "before": round(r.metric_before, 4),
                    "after": round(r.metric_after, 4),
                    "ratio": r.ratio,
                    "allocation": r.allocation,
                    "precision": r.precision,
                    "seconds": round(time.perf_counter() - start, 1),
                    "timings": r.timings,
                }
            )
            if bundle.metric == "cosine":  # neighbour recall@10 against the original
                reference = metrics.outputs(bundle.factory(), bundle.validation)
                got = metrics.outputs(variant.module, bundle.validation)
                rows[-1]["recall@10"] = round(metrics.neighbour_recall(got, reference), 4)
            print(json.dumps(rows[-1]), flush=True)
    return {"date": date.today().isoformat(), "machine": machine(), "rows": rows}


def markdown(result: dict) -> str:
    lines = [
        f"Measured {result['date']} on {result['machine']} "
        "(`python -m benchmarks.compression_quality --readme`), no fine-tuning:",
        "",
        "| model | profile | accepted | MACs× | params× | speed-up | metric | before | after "
        "| recall@10 | pruned | precision | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['profile']} | {'yes' if r['accepted'] else 'no'} | "
            f"{r['macs_x']} | {r['params_x']} | {r['speedup']} | {r['metric']} | {r['before']} | "
            f"{r['after']} | {r.get('recall@10', '–')} | {r['ratio']:.0%} {r['allocation']} | "
            f"{r['precision']} | "
            f"{r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def update_readme(table: str) -> None:
    text = README.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    README.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="digits-cnn,digits-mlp,minilm")
    parser.add_argument("--profiles", default="cpu,edge")
    parser.add_argument("--readme", action="store_true", help="update the README table")
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = run(args.models.split(","), args.profiles.split(","))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compression.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (RESULTS / "compression.md").write_text(table)
    if args.readme:
        update_readme(table)
    print(table)


if __name__ == "__main__":
    main()
