"""Do a variant's claims hold on text it never saw? Several MiniLM variants, each claim rule.

    python -m benchmarks.claims [--ratios 0.1,0.2,0.3] [--readme]

Builds MiniLM variants the way the cpu profile's search does (global split, full rebuild, on
the built-in calibration sentences): each amount in ``--ratios`` in float32 and in torch int8
on packed tokens (``compression.forms.packing``, what the cpu profile serves for MiniLM), the 20 %
structure (or the first amount) in ONNX Runtime int8 and torch int8, and the unpruned model
in both int8s; beside them the engine's int8 now, inputs smoothed into the weights
(``compression.forms.smoothing``) on packed tokens, for the unpruned model and every amount, and the
unpruned model in bfloat16 on packed tokens. Each is measured on the engine's two evaluation splits (selection: sentences in
the calibration's register; confirmation: the IDLE user guide) and on held-out text from a third
source (``benchmarks.heldout``, package READMEs; recall@10 in pools of 192 sentences, the
confirmation split's size). Per variant, for cosine fidelity and neighbour recall@10:

- *shift only*: the claim rule before this benchmark was written (the confirmation figure less
  the loss it added over selection; a better confirmation figure stood as measured);
- *own claim*: :func:`compression.search.splits.claim` (the larger of the two losses, less 1.645
  standard errors of the confirmation figure's mean);
- *claim*: what the engine claims now: the own claim, and for recall also no higher than its
  loss per unit of cosine loss leaves at the cosine claim (:func:`compression.search.splits.recall_claim`);
- *held-out*: the figure on the third source. A claim holds when it is no higher than
  held-out + 0.005.

Writes benchmarks/results/claims.json and .md; --readme replaces the CLAIMS block.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks import common
from benchmarks.compression_quality import heldout, quality

NAME = "claims"
SLACK = 0.005  # a claim holds when the held-out figure is at most this much below it


def shift_only(sel: float, conf: float) -> float:
    """The previous claim rule, for a figure whose original value is 1.0."""
    return conf - max(0.0, (1.0 - conf) - (1.0 - sel))


def variants(ctx, ratios: list[float]) -> dict:
    """``{label: module}`` of the variants measured (see the module docstring)."""
    from compression.forms import packing, precision, runtimes
    from compression.search import context as search
    from compression.search import precision_step

    def int8s(label: str, module) -> dict:
        out = {f"{label} torch-int8": precision.apply(module, "float32", "int8-dynamic").eval()}
        found, _ = runtimes.candidates(module, ctx.example_inputs, [ctx.example_inputs], 2)
        if found:
            out[f"{label} onnxruntime-int8"] = dict(found)["onnxruntime-int8"]
        return out

    def smoothed(module):  # the engine's int8: inputs smoothed (strength chosen on the first)
        scales, _, _ = precision_step.int8_smoothing(ctx, module)
        int8 = precision.apply(module, "float32", "int8-dynamic", smoothing=scales)
        return packing.served(int8.eval())

    out = int8s("0%", ctx.original)
    out["0% torch-int8 smoothed packed"] = smoothed(ctx.original)
    out["0% bfloat16 packed"] = packing.served(precision.apply(ctx.original, "bfloat16", "none"))
    pick = 0.2 if 0.2 in ratios else ratios[0]
    for r in ratios:
        built = search.build(ctx, r, "global")
        out[f"{r:.0%} global float32"] = built.module
        int8 = precision.apply(built.module, "float32", "int8-dynamic").eval()
        out[f"{r:.0%} global torch-int8 packed"] = packing.served(int8)
        out[f"{r:.0%} global torch-int8 smoothed packed"] = smoothed(built.module)
        if r == pick:
            out.update(int8s(f"{r:.0%} global", built.module))
    return out


def run(ratios: list[float]) -> dict:
    from compression import PROFILES, pipeline
    from compression.evaluation import metrics
    from compression.search import splits
    from service.models.sources import resolve

    bundle = resolve("minilm")
    start = time.perf_counter()
    ctx = pipeline.prepare(
        bundle.factory(), PROFILES["cpu"], bundle.example_inputs, bundle.calibration,
        bundle.validation, "cosine", lambda *a: None, lambda: False, time.monotonic() + 1e5,
    )  # fmt: skip
    ctx.packed = True  # the cpu profile serves MiniLM on packed tokens (its smoothing sees them)
    data = heldout(bundle)
    reference = metrics.outputs(ctx.original, data)
    rows = []
    for label, module in variants(ctx, ratios).items():
        sel = splits.measure(module, ctx.selection, "cosine", 0.8)
        (conf, errors) = splits.measure_with_errors(module, ctx.confirmation, "cosine", 0.8)
        held = quality(bundle, module, data, reference)
        row = {"variant": label}
        for i, key, held_key in ((1, "cosine", "heldout"), (2, "recall", "heldout_recall")):
            own = splits.claim(1.0, sel[i], 1.0, (conf[i], errors[i]))
            row[key] = {
                "selection": round(sel[i], 4),
                "confirmation": round(conf[i], 4),
                "standard_error": round(errors[i], 4),
                "shift_only": round(shift_only(sel[i], conf[i]), 4),
                "own": round(own, 4),
                "claim": round(own, 4),
                "heldout": held[held_key],
            }
        cos = row["cosine"]["claim"]  # the recall claim follows the cosine claim
        row["recall"]["claim"] = round(
            splits.recall_claim(row["recall"]["own"], conf[2], conf[1], cos), 4
        )
        rows.append(row)
        print(row, flush=True)
    return {
        "machine": common.machine(),
        "date": common.stamp(),
        "seconds": round(time.perf_counter() - start, 1),
        "slack": SLACK,
        "rows": rows,
    }


def holds(figures: dict, rule: str) -> bool:
    return figures[rule] <= figures["heldout"] + SLACK


def markdown(result: dict) -> str:
    lines = [
        f"Measured {result['date']} on {common.describe_machine(result['machine'])} "
        "(`python -m benchmarks.claims --readme`). MiniLM variants built as the cpu profile's "
        "search builds them; *sel* / *conf*: the engine's selection and confirmation splits "
        "(192 sentences each); *shift only*: the first claim rule; *own claim*: the larger "
        "loss, less 1.645 standard errors; *claim*: the engine's now (for recall, also no "
        "higher than its loss per unit of cosine loss leaves at the cosine claim, "
        "`splits.recall_claim`); *held-out*: package READMEs, a "
        f"source neither split has seen. ✗: the claim is more than {SLACK} above held-out.",
        "",
    ]
    header = ["variant", "figure", "sel", "conf", "shift only", "own claim", "claim", "held-out"]
    table = []
    for row in result["rows"]:
        for key in ("cosine", "recall"):
            f = row[key]
            table.append(
                [
                    row["variant"],
                    key,
                    f"{f['selection']:.4f}",
                    f"{f['confirmation']:.4f}",
                    f"{f['shift_only']:.4f}" + ("" if holds(f, "shift_only") else " ✗"),
                    f"{f['own']:.4f}" + ("" if holds(f, "own") else " ✗"),
                    f"{f['claim']:.4f}" + ("" if holds(f, "claim") else " ✗"),
                    f"{f['heldout']:.4f}",
                ]
            )
    lines += common.table(header, table)
    for rule in ("shift_only", "own", "claim"):
        n = sum(holds(r[k], rule) for r in result["rows"] for k in ("cosine", "recall"))
        lines.append(f"\n*{rule.replace('_', ' ')}*: {n} of {2 * len(result['rows'])} claims hold.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratios", default="0.1,0.2,0.3")
    parser.add_argument("--readme", action="store_true", help="update the README block")
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = run([float(r) for r in args.ratios.split(",")])
    table = markdown(result)
    common.finish(NAME, result, table, readme=table if args.readme else None)


if __name__ == "__main__":
    main()
