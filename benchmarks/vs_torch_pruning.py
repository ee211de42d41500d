"""SlimServe's rebuild against Torch-Pruning's magnitude pruning, same groups, same amounts.

    python -m benchmarks.vs_torch_pruning [--quick] [--readme] [--models digits-cnn,minilm]

For each built-in and three pruning amounts, in one run, on the same data split and seed:

- ``torch-pruning``      Torch-Pruning's group magnitude (L2) importance, uniform amount per
                         group, structural pruning, nothing else;
- ``slimserve``          the same groups and amount, SlimServe's default importance (``lsq``)
                         and its rebuild ladder (BN recalibration, bias compensation, ridge
                         refit), no fine-tuning;
- ``slimserve+distill``  the same plus the time-boxed distillation step.

Per variant: MACs and params reduction, measured CPU speed-up at batch 32 and batch 1 (median
latency, warm-up, original and variant timed alternately), speed-up realism (measured speed-up
/ MAC reduction), the metric (held-out accuracy for the digits models; for minilm the cosine
fidelity of mean-pooled embeddings and neighbour recall@10), and the seconds it took (scoring +
prune + rebuild). Then ``compress()`` with the default cpu profile per model, and where its
time went (``report.timings``). One Pareto plot per model in benchmarks/results/.

Writes benchmarks/results/vs_torch_pruning.json and .md; --readme replaces the
VS_TORCH_PRUNING block of README.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from benchmarks import common
from benchmarks.plots import pareto_plot

NAME = "vs_torch_pruning"
LEVELS = {"digits-cnn": [0.3, 0.5, 0.7], "digits-mlp": [0.3, 0.5, 0.7], "minilm": [0.2, 0.3, 0.5]}
DISTILL_S = {"digits-cnn": 5.0, "digits-mlp": 5.0, "minilm": 20.0}
METHODS = ("torch-pruning", "slimserve", "slimserve+distill")
LADDER = ["bn", "bias", "refit"]
K = 10  # neighbour recall@K


@dataclass
class Setup:
    """One model with everything measured once and shared by all its variants."""

    name: str
    original: nn.Module
    example: object
    calibration: object
    validation: list
    batch32: object
    batch1: object
    labelled: bool
    units: list
    scores: dict  # method kind -> per-unit channel scores
    scoring_s: dict
    stats: dict
    reference: torch.Tensor
    reference_val: list


def setup(name: str) -> Setup:
    from compression import PROFILES
    from compression.core.inputs import concat, index, materialize
    from compression.evaluation.metrics import outputs
    from compression.recovery import rebuild
    from compression.structure import graph, importance
    from service.models.sources import resolve

    bundle = resolve(name)
    profile = PROFILES["cpu"]
    original = bundle.factory().eval()
    size = profile.calibration_size
    calibration = index(
        concat(materialize(bundle.calibration, "calibration", size)), slice(0, size)
    )
    validation = list(bundle.validation)
    if bundle.is_text:
        from service.models.text import sentence_split

        sentences = sentence_split()[1]
        batch32, batch1 = bundle.tokenize(sentences[:32]), bundle.tokenize(sentences[:1])
    else:
        x = torch.cat([v[0] for v in validation])
        batch32, batch1 = x[:32], x[:1]
    units = graph.find_units(original, bundle.example_inputs)
    start = time.perf_counter()
    magnitude = graph.library_scores(
        copy.deepcopy(original), bundle.example_inputs, units, "magnitude"
    )
    mid = time.perf_counter()
    stats, lsq = importance.score_units(original, bundle.example_inputs, units, "lsq", calibration)
    end = time.perf_counter()
    return Setup(
        name=name,
        original=original,
        example=bundle.example_inputs,
        calibration=calibration,
        validation=validation,
        batch32=batch32,
        batch1=batch1,
        labelled=not bundle.is_text,
        units=units,
        scores={"magnitude": magnitude, "lsq": lsq},
        scoring_s={"magnitude": mid - start, "lsq": end - mid},
        stats=stats,
        reference=rebuild.reference_outputs(original, calibration),
        reference_val=outputs(original, validation),
    )


def build(s: Setup, method: str, ratio: float, distill_s: float) -> tuple[nn.Module, float, list]:
    """The pruned (and rebuilt) variant, the seconds it took, and the rebuild records."""
    from compression import PROFILES
    from compression.recovery import rebuild
    from compression.structure import allocation, graph

    kind = "magnitude" if method == "torch-pruning" else "lsq"
    start = time.perf_counter()
    removed = allocation.allocate(s.units, s.scores[kind], ratio, "uniform")
    model = copy.deepcopy(s.original)
    graph.prune(model, s.example, removed)
    records = []
    if method != "torch-pruning":
        steps = LADDER + (["distill"] if method == "slimserve+distill" else [])
        records = rebuild.rebuild(
            model, s.original, s.units, removed, s.calibration, s.reference, s.stats, steps,
            PROFILES["cpu"].ridge, distill_s,
        )  # fmt: skip
    model.eval()
    return model, s.scoring_s[kind] + time.perf_counter() - start, [r.to_dict() for r in records]


def quality(s: Setup, model: nn.Module) -> dict:
    from compression.evaluation import metrics

    out = metrics.outputs(model, s.validation)
    if s.labelled:
        return {"accuracy": round(metrics.score("accuracy", out, s.validation, None), 4)}
    return {
        "cosine": round(metrics.cosine(out, s.reference_val), 4),
        "recall@10": round(metrics.neighbour_recall(out, s.reference_val, K), 4),
    }


def speedup(original: nn.Module, variant: nn.Module, batch, repeats: int, budget_s: float) -> float:
    """Median latency of the original over the variant's on ``batch``.

    The two forwards alternate one by one (after a warm-up), so both meet the same background
    load on a shared machine; at least ``repeats`` pairs, more while ``budget_s`` allows.
    """
    from compression.core.inputs import call

    def timed(model) -> float:
        start = time.perf_counter()
        call(model, batch)
        return time.perf_counter() - start

    with torch.inference_mode():
        for _ in range(3):
            pair = timed(original) + timed(variant)
        pairs = min(2000, max(repeats, int(budget_s / max(pair, 1e-6))))
        before, after = [], []
        for _ in range(pairs):
            before.append(timed(original))
            after.append(timed(variant))
    return statistics.median(before) / max(statistics.median(after), 1e-12)


def compare(name: str, args) -> dict:
    """Every method at every level for one model."""
    from compression.evaluation.measure import macs_params

    torch.manual_seed(0)
    s = setup(name)
    macs0, params0 = macs_params(s.original, s.example)
    base = {"method": "original", "ratio": 0.0, "macs_x": 1.0, "params_x": 1.0}
    base |= {"speedup_b32": 1.0, "speedup_b1": 1.0, "seconds": 0.0} | quality(s, s.original)
    rows = [base]
    distill_s = args.distill_s if args.distill_s is not None else DISTILL_S[name]
    for ratio in LEVELS[name][1:2] if args.quick else LEVELS[name]:
        for method in METHODS:
            model, seconds, records = build(s, method, ratio, distill_s)
            macs, params = macs_params(model, s.example)
            sp32 = speedup(s.original, model, s.batch32, args.repeats, args.budget_s)
            sp1 = speedup(s.original, model, s.batch1, args.repeats, args.budget_s)
            row = {
                "method": method,
                "ratio": ratio,
                "macs_x": round(macs0 / macs, 3),
                "params_x": round(params0 / params, 3),
                "speedup_b32": round(sp32, 3),
                "speedup_b1": round(sp1, 3),
                "realism_b32": round(sp32 / (macs0 / macs), 3),
                "realism_b1": round(sp1 / (macs0 / macs), 3),
                "seconds": round(seconds, 2),
                **quality(s, model),
                "steps": records,
            }
            rows.append(row)
            print(name, {k: v for k, v in row.items() if k != "steps"}, flush=True)
    scoring = {k: round(v, 2) for k, v in s.scoring_s.items()}
    return {
        "model": name, "macs": macs0, "params": params0, "distill_s": distill_s,
        "scoring_s": scoring, "rows": rows,
    }  # fmt: skip


def compress_timings(name: str) -> dict:
    """``compress()`` with the default cpu profile, and where its time went."""
    from service.models.sources import resolve

    bundle = resolve(name)
    start = time.perf_counter()
    v = bundle.compress("cpu")
    seconds = time.perf_counter() - start
    r = v.report
    timings = dict(r.timings)
    timings["other"] = round(seconds - sum(timings.values()), 3)
    row = {
        "model": name, "profile": "cpu", "accepted": r.accepted, "ratio": r.ratio,
        "allocation": r.allocation, "precision": r.precision, "speedup": r.speedup,
        "macs_x": round(r.macs_reduction, 2), "metric": r.metric,
        "metric_after": r.metric_after, "seconds": round(seconds, 1), "timings": timings,
        "candidates": len(r.candidates),
    }  # fmt: skip
    print("compress", row, flush=True)
    return row


# ---- Markdown -----------------------------------------------------------------------------


def metric_columns(model: dict) -> list[tuple[str, str]]:
    if "accuracy" in model["rows"][0]:
        return [("accuracy", "held-out accuracy")]
    return [("cosine", "cosine fidelity"), ("recall@10", "neighbour recall@10")]


def model_table(model: dict) -> list[str]:
    cols = metric_columns(model)
    header = ["method", "pruned", "MACs×", "params×", "speed-up b32", "speed-up b1"]
    header += ["realism b32", "realism b1", *[c[0] for c in cols], "seconds"]
    rows = []
    for r in model["rows"]:
        rows.append(
            [r["method"], f"{r['ratio']:.0%}", r["macs_x"], r["params_x"], r["speedup_b32"],
             r["speedup_b1"], r.get("realism_b32"), r.get("realism_b1"),
             *[f"{r[c[0]]:.4f}" for c in cols], r["seconds"]]
        )  # fmt: skip
    return common.table(header, rows)


def target_lines(result: dict) -> list[str]:
    """The DESIGN targets this benchmark speaks to, read off the rows."""
    lines = []
    for m in result["models"]:
        rows = [r for r in m["rows"] if r["method"] == "slimserve"]
        if m["model"] == "minilm":
            ok = [r for r in rows if r["cosine"] >= 0.95 and r["recall@10"] >= 0.80]
            best = max(ok, key=lambda r: r["speedup_b32"], default=None)
            got = (
                f"{best['speedup_b32']:.2f}× at {best['ratio']:.0%} (cosine {best['cosine']:.3f}, "
                f"recall@10 {best['recall@10']:.3f})"
                if best
                else "no level within cosine ≥ 0.95 and recall@10 ≥ 0.80"
            )
            lines.append(f"- MiniLM, no fine-tuning: fastest within budget {got}; target ≥ 1.8×.")
        elif m["model"] == "digits-cnn":
            top = m["rows"][0]["accuracy"]
            ok = [r for r in rows if r["accuracy"] >= top - 0.01]
            best = max(ok, key=lambda r: r["macs_x"], default=None)
            got = (
                f"{best['macs_x']:.2f}× fewer MACs at {best['ratio']:.0%} (accuracy "
                f"{best['accuracy']:.4f} from {top:.4f})"
                if best
                else "no level within 1 point"
            )
            lines.append(f"- digits-cnn, no fine-tuning, ≤ 1 point drop: {got}; target ≥ 3.5×.")
    realism = [
        f"{m['model']} {r['method']} {r['ratio']:.0%}: {r['realism_b32']:.2f} (b32) / "
        f"{r['realism_b1']:.2f} (b1) at {r['macs_x']:.1f}× MACs"
        for m in result["models"]
        for r in m["rows"]
        if r["method"] == "slimserve" and 2.0 <= r["macs_x"] <= 4.0
    ]
    if realism:
        lines.append(
            "- Speed-up realism at 2–4× MAC reduction (target ≥ 0.85): " + "; ".join(realism)
        )
    return lines


def markdown(result: dict, command: str, images: str) -> str:
    lines = [
        f"Measured {result['date']} on {common.describe_machine(result['machine'])} "
        f"(`{command}`). Uniform amount per group, same groups, same data split, seed 0; "
        "speed-up = median latency of the original / the variant, forwards alternating one by "
        f"one after a warm-up (≥ {result['settings']['repeats']} pairs, "
        f"≈ {result['settings']['budget_s']:g} s per figure); "
        "realism = speed-up / MAC reduction; seconds = scoring + prune + rebuild.",
        "",
    ]
    for m in result["models"]:
        lines += [
            f"**{m['model']}** (scoring: magnitude {m['scoring_s']['magnitude']} s, lsq "
            f"{m['scoring_s']['lsq']} s; distillation {m['distill_s']:g} s):",
            "",
        ]
        lines += model_table(m)
        lines += ["", f"![{m['model']} Pareto]({images}{m['model']}-pareto.png)", ""]
    if result["timings"]:
        lines += ["`compress()` with the default cpu profile, where the time goes (seconds):", ""]
        keys = ["scoring", "prune_rebuild", "verify", "precision", "other"]
        lines += common.table(
            ["model", "accepted", "chosen", "speed-up", "MACs×", "total", *keys],
            [
                [t["model"], "yes" if t["accepted"] else "no",
                 f"{t['ratio']:.0%} {t['allocation']} {t['precision']}", t["speedup"],
                 t["macs_x"], t["seconds"], *[t["timings"].get(k, 0.0) for k in keys]]
                for t in result["timings"]
            ],
        )  # fmt: skip
        lines.append("")
    lines += ["Against the design targets:", "", *target_lines(result)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="middle level only, short timings, 1 s distillation"
    )
    p.add_argument("--readme", action="store_true", help="update the README block")
    p.add_argument("--models", default="digits-cnn,digits-mlp,minilm")
    p.add_argument("--repeats", type=int, default=10, help="least timed pairs per speed-up")
    p.add_argument("--budget-s", type=float, default=4.0, help="timing budget per speed-up")
    p.add_argument("--distill-s", type=float, default=None, help="override distillation time")
    p.add_argument("--threads", type=int, default=2, help="torch threads (cpu profile: 2)")
    p.add_argument("--no-timings", action="store_true", help="skip the compress() timings")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.budget_s = 3, 0.5
        args.distill_s = 1.0 if args.distill_s is None else args.distill_s
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    result = {"date": common.stamp(), "machine": common.machine()}
    result["settings"] = {k: v for k, v in vars(args).items() if k != "readme"}
    result["models"] = [compare(m, args) for m in models]
    result["timings"] = [] if args.no_timings else [compress_timings(m) for m in models]
    for m in result["models"]:
        path = common.RESULTS / f"{m['model']}-pareto.png"
        pareto_plot(m["model"], m["rows"], metric_columns(m), path)
    command = "python -m benchmarks.vs_torch_pruning" + (" --quick" if args.quick else "")
    md = markdown(result, command, images="")
    readme = markdown(result, command, images="benchmarks/results/") if args.readme else None
    common.finish(NAME, result, md, readme)


if __name__ == "__main__":
    main()
