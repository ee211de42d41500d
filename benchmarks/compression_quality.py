"""What a compression claims against what it gives on data it never saw, method beside method.

    python -m benchmarks.compression_quality [--models minilm,digits-cnn] [--profiles cpu]
                                             [--baseline DIR] [--readme]

For each model and profile, in one run:

- ``slimserve``         ``compress()`` with the profile as shipped (pruning, rebuild, precision
                        and runtime steps);
- ``slimserve-prune``   the same with the precision and runtime steps off (``quantization:
                        none``, ``runtimes: [torch]``): what pruning and rebuild alone give;
- ``torch-pruning``     Torch-Pruning's magnitude importance alone, same groups, at the amount
                        ``slimserve-prune`` chose (30% where it chose none), no rebuild;
- ``previous``          with ``--baseline DIR`` (a checkout of an earlier commit, e.g.
                        ``git worktree add /tmp/base <commit>``): that checkout's ``compress()``
                        with the same profile, run in its own process, its variant loaded here.

Per row: the report's claim (metric on the selection and confirmation splits), the same metric
on held-out data from another source (``benchmarks.heldout``: for text, cosine fidelity and
neighbour recall@10 of mean-pooled embeddings against the original; for digits, accuracy on
shifted digits), the speed-up measured here (original and variant timed alternately on a
held-out batch of 32), MACs reduction and the seconds it took.

Writes benchmarks/results/compression.json and .md; --readme replaces the COMPRESSION block.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common
from benchmarks.heldout import heldout_sentences, shifted_digits

NAME = "compression"
BEGIN, END = "<!-- COMPRESSION:BEGIN -->", "<!-- COMPRESSION:END -->"
FALLBACK_RATIO = 0.3
# Recall@10 falls as the pool of candidates grows; the held-out figure is the mean over pools of
# this many sentences, the size of MiniLM's confirmation split, so claim and held-out compare.
RECALL_POOL = 192
OLD_RUN = """
import json, sys, time
from service.models.sources import resolve
bundle = resolve(sys.argv[1]); start = time.perf_counter()
variant = bundle.compress(sys.argv[2])
variant.save(sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def heldout(bundle) -> list:
    """Held-out (inputs, labels) batches of 32 for a built-in model."""
    if bundle.is_text:
        s = list(heldout_sentences())
        return [(bundle.tokenize(s[i : i + 32]), None) for i in range(0, len(s), 32)]
    x, y = shifted_digits()
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]


def quality(bundle, module, data, reference) -> dict:
    from compression.evaluation import metrics

    out = metrics.outputs(module, data)
    if not bundle.is_text:
        return {"heldout": round(metrics.score("accuracy", out, data, None), 4)}
    per_pool = RECALL_POOL // 32
    pools = [slice(i, i + per_pool) for i in range(0, len(out) - per_pool + 1, per_pool)]
    recalls = [metrics.neighbour_recall(out[p], reference[p]) for p in pools]
    return {
        "heldout": round(metrics.cosine(out, reference), 4),
        "heldout_recall": round(sum(recalls) / len(recalls), 4),
    }


def claim(report) -> dict:
    s = report.splits or {}
    sel, conf = s.get("selection", {}), s.get("confirmation", {})
    return {
        "accepted": report.accepted,
        "selection": sel.get("metric"),
        "confirmation": (conf.get("measured") or {}).get("metric"),
        "claim": conf.get("metric", report.metric_after),
        "recall": report.neighbour_recall,
        "chosen": f"{report.ratio:.0%} {report.allocation}, {report.precision}"
        + (", packed tokens" if report.packed else ""),
        "timings": report.timings,
    }


def torch_pruning_alone(bundle, ratio: float):
    """Torch-Pruning's group magnitude importance, uniform amount, no rebuild."""
    import copy

    from compression.structure import allocation, graph

    original = bundle.factory().eval()
    units = graph.find_units(original, bundle.example_inputs)
    scores = graph.library_scores(
        copy.deepcopy(original), bundle.example_inputs, units, "magnitude"
    )
    removed = allocation.allocate(units, scores, ratio, "uniform")
    graph.prune(original, bundle.example_inputs, removed)
    return original.eval()


def previous(baseline: Path, model: str, profile: str, out: Path) -> float:
    """Compress with the baseline checkout's engine in its own process; its seconds."""
    done = subprocess.run(
        [sys.executable, "-c", OLD_RUN, model, profile, str(out)],
        cwd=baseline,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(baseline)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"baseline run failed: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def run(models: list[str], profiles: list[str], baseline: Path | None) -> dict:
    from benchmarks.vs_torch_pruning import speedup
    from compression import PROFILES
    from compression.evaluation import metrics
    from compression.evaluation.measure import macs_params
    from service.models import load
    from service.models.sources import resolve

    rows = []
    for name in models:
        bundle = resolve(name)
        original = bundle.factory().eval()
        data = heldout(bundle)
        reference = metrics.outputs(original, data)
        batch = data[0][0]
        macs0, _ = macs_params(original, bundle.example_inputs)
        base = quality(bundle, original, data, reference)
        for profile in profiles:
            shipped = PROFILES[profile]
            plain = shipped.model_copy(update={"quantization": "none", "runtimes": ["torch"]})
            variants = []
            for method, prof in (("slimserve", shipped), ("slimserve-prune", plain)):
                start = time.perf_counter()
                v = bundle.compress(prof)
                seconds = time.perf_counter() - start
                variants.append((method, v.module, v.float_module, seconds, claim(v.report)))
            prune = variants[1][4]
            ratio = float(prune["chosen"].split("%")[0]) / 100 if prune["accepted"] else 0.0
            start = time.perf_counter()
            tp = torch_pruning_alone(bundle, ratio or FALLBACK_RATIO)
            variants.append(("torch-pruning", tp, tp, time.perf_counter() - start, {}))
            if baseline is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    seconds = previous(baseline, name, profile, Path(tmp) / "v")
                    v = load(Path(tmp) / "v")
                    old = claim(v.report) | {"selection": None, "confirmation": None}
                    variants.append(("previous", v.module, v.float_module, seconds, old))
            for method, module, float_module, seconds, claimed in variants:
                macs, _ = macs_params(float_module, bundle.example_inputs)
                row = {
                    "model": name,
                    "profile": profile,
                    "method": method,
                    "metric": "cosine" if bundle.is_text else "accuracy",
                    "original_heldout": base["heldout"],
                    **claimed,
                    **quality(bundle, module, data, reference),
                    "speedup": round(speedup(original, module, batch, 20, 6.0), 3),
                    "macs_x": round(macs0 / max(macs, 1), 3),
                    "seconds": round(seconds, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"machine": common.machine(), "stamp": common.stamp(), "rows": rows}


def markdown(result: dict) -> str:
    m = common.describe_machine(result["machine"])
    lines = [
        f"Measured {result['stamp']} on {m} (`python -m benchmarks.compression_quality "
        "--readme`). *selection* and *confirmation*: the report's figures on its own two "
        "splits as measured; *claim*: what the report claims (`metric_after`: the "
        "confirmation figure lowered by the loss it added over selection) and the recall@10 it "
        "claims; *held-out*: the same metric on text (or digits) from another source "
        f"(`benchmarks/heldout.py`), with the original's value in brackets, and recall@10 in "
        f"pools of {RECALL_POOL} held-out sentences; speed-up measured here, original and "
        "variant alternating, batch 32.",
        "",
        "| model | profile | method | accepted | chosen | selection | confirmation | claim "
        "| held-out | recall@10 claim | recall@10 held-out | MACs× | speed-up | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        held = f"{r['heldout']} ({r['original_heldout']})"
        lines.append(
            f"| {r['model']} | {r['profile']} | {r['method']} | "
            f"{ {True: 'yes', False: 'no'}.get(r.get('accepted'), '–') } | "
            f"{r.get('chosen') or '–'} | {common.fmt(r.get('selection'), 4)} | "
            f"{common.fmt(r.get('confirmation'), 4)} | {common.fmt(r.get('claim'), 4)} | "
            f"{held} | {common.fmt(r.get('recall'), 4)} | "
            f"{common.fmt(r.get('heldout_recall'), 4)} | {r['macs_x']} | {r['speedup']} | "
            f"{r['seconds']} |"
        )
    lines += [
        "",
        "*previous*: the engine of the `--baseline` checkout (its claim is its report's "
        "`metric_after`). *torch-pruning*: Torch-Pruning's magnitude importance alone at "
        "the amount *slimserve-prune* chose, no rebuild.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm,digits-cnn")
    parser.add_argument("--profiles", default="cpu")
    parser.add_argument("--baseline", type=Path, help="checkout of an earlier commit")
    parser.add_argument("--readme", action="store_true", help="update the README table")
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = run(args.models.split(","), args.profiles.split(","), args.baseline)
    table = markdown(result)
    common.finish(NAME, result, table, readme=table if args.readme else None)


if __name__ == "__main__":
    main()
