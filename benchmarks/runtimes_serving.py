"""Serving torch vs ONNX Runtime variants of the same model, under the same load.

    python -m benchmarks.runtimes_serving [--quick] [--readme] [--rounds N] [--duration S]
        [--concurrency 1,32] [--models digits-cnn,minilm]

Starts one real ``slimserve serve`` (digits-cnn and minilm, no background compression, no
shadow evaluation, no canary: what is activated serves, and nothing rolls it back mid-run) and
compresses each model through the admin API twice, with the cpu profile pinned to one runtime
each time (an inline profile: ``runtimes: [torch]``, then ``runtimes: [onnxruntime]``), its
``threads`` set to the thread budget the server gives that model, so ONNX Runtime's session and
torch's lane run on the same number of threads. Then, per model and concurrency, it drives the
v2 endpoint with tritonclient.http (binary tensors, one digit or one sentence per request) in
interleaved rounds: each round activates the original, the torch variant and the ONNX Runtime
variant in turn (the order rotates every round) and loads each for ``--duration`` seconds after
``--warmup``, so a busy moment of the machine falls on every variant alike. Per variant: the
requests of all rounds pooled (throughput, p50, p99, failed) and each round's throughput.

Writes benchmarks/results/runtimes_serving.json and .md; --readme replaces the
RUNTIMES_SERVING block.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.load_test import targets
from benchmarks.loadgen import Run, run_load, wait_for
from service.launch import SlimServer

NAME = "runtimes_serving"
RUNTIMES = ("torch", "onnxruntime")
LABELS = {"original": "original", "torch": "torch variant", "onnxruntime": "ONNX Runtime variant"}
# What the server runs with: the variant activated here serves, and stays until the next round.
SERVER_ENV = {"SLIMSERVE_SHADOW_FRACTION": "0", "SLIMSERVE_CANARY": "false"}
REPORT_KEYS = ("accepted", "precision", "ratio", "allocation", "speedup", "metric",
               "metric_before", "metric_after", "macs_before", "macs_after", "runtimes")  # fmt: skip


def pinned_profile(runtime: str, threads: int, args) -> dict:
    """The cpu profile as an inline mapping, pinned to one runtime, on the model's threads."""
    from compression import PROFILES

    profile = PROFILES["cpu"].model_dump()
    profile |= {"name": f"cpu-{runtime}", "runtimes": [runtime], "threads": threads}
    # The search stops trying amounts at the time limit; the runtime step, verification and
    # saving come after it, and a job runs at most 1.2x its limit + 60 s: room for a busy machine.
    profile["time_limit_s"] = args.job_limit
    if args.quick:
        profile |= {"latency_repeats": 3, "ratios": [0.3, 0.5], "allocation": "uniform"}
    return profile


def compress(server: SlimServer, model: str, runtime: str, threads: int, args) -> dict:
    """One pinned compression job through the admin API: the variant and what served it, or
    the job's error (that variant is then left out of the load, the others still run)."""
    start = time.perf_counter()
    try:
        job = server.compress(
            model, pinned_profile(runtime, threads, args), timeout=args.job_limit * 1.2 + 120
        )
    except (RuntimeError, TimeoutError) as err:
        seconds = time.perf_counter() - start
        print(f"compressing {model} pinned to {runtime} failed: {err}", flush=True)
        return {"pinned": runtime, "error": str(err)[:400], "job_seconds": round(seconds, 1)}
    seconds = time.perf_counter() - start
    vid, report = job["variant"], job["report"]
    plan = json.loads((server.variant_dir(model, vid) / "plan.json").read_text())
    out = {
        "id": vid,
        "state": job["state"],
        "pinned": runtime,
        "served_by": plan.get("runtime", "torch"),
        "job_seconds": round(seconds, 1),
        **{k: report.get(k) for k in REPORT_KEYS},
    }
    print(
        f"compressed {model} pinned to {runtime} -> {vid} ({out['served_by']}, "
        f"{out['precision']}, ratio {out['ratio']}, speed-up {out['speedup']}) in {seconds:.1f} s",
        flush=True,
    )
    return out


def pooled(runs: list[Run]) -> dict:
    """Every round's measured requests together: throughput over the summed windows,
    latency percentiles of all successful requests, failures; and each round's throughput."""
    latencies: list[float] = []
    done = requests = failed = 0
    seconds = 0.0
    errors: set[str] = set()
    for run in runs:
        s, e, ok = (np.asarray(v, dtype=float) for v in (run.starts, run.ends, run.ok))
        ok = ok.astype(bool)
        inside = (s >= run.begin) & (s < run.end)
        latencies += ((e[inside & ok] - s[inside & ok]) * 1000.0).tolist()
        done += int(((e >= run.begin) & (e < run.end) & ok).sum())
        requests += int(inside.sum())
        failed += int((inside & ~ok).sum())
        seconds += run.end - run.begin
        errors |= set(run.errors)
    return {
        "requests": requests,
        "failed": failed,
        "throughput_rps": round(done / max(seconds, 1e-9), 1),
        **common.latency_summary(latencies),
        "rounds_rps": [r.summary()["throughput_rps"] for r in runs],
        "errors": sorted(errors)[:5],
    }


def interleaved(server: SlimServer, model: str, variants: dict[str, str], args) -> list[dict]:
    """Rounds of (original, torch, onnxruntime) in rotating order at each concurrency."""
    target = targets(server, 1)[model]
    rows = []
    for c in args.concurrency:
        runs: dict[str, list[Run]] = {kind: [] for kind in variants}
        kinds = list(variants)
        for r in range(args.rounds):
            for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                server.activate(model, variants[kind])
                wait_for(target)
                run = run_load(target, c, args.duration, args.warmup)
                runs[kind].append(run)
                s = run.summary()
                print(
                    f"{model:10} c={c:<3} round {r + 1} {kind:11} {s['throughput_rps']:8.1f} rps "
                    f"p50 {s['p50_ms']:7.2f} ms p99 {s['p99_ms']:7.2f} ms failed {s['failed']}",
                    flush=True,
                )
        for kind in kinds:
            row = {"model": model, "variant": kind, "id": variants[kind], "concurrency": c}
            rows.append(row | pooled(runs[kind]))
    return rows


def run(args) -> dict:
    home = Path(args.home or tempfile.mkdtemp(prefix="slimserve-runtimes-"))
    result: dict = {
        "settings": {k: v for k, v in vars(args).items() if k != "readme"},
        "server_env": SERVER_ENV,
        "variants": {},
        "rows": [],
    }
    try:
        server = SlimServer(home, args.serve_models, **SERVER_ENV)
        with server.start():
            served = server.admin("GET", "/models", check=True).json()["models"]
            result["threads"] = {m["name"]: m["threads"] for m in served}
            for model in args.models:
                threads = result["threads"][model]
                made = {rt: compress(server, model, rt, threads, args) for rt in RUNTIMES}
                result["variants"][model] = made
                variants = {"original": "original"}
                variants |= {rt: v["id"] for rt, v in made.items() if "id" in v}
                result["rows"] += interleaved(server, model, variants, args)
                server.activate(model, "original")
    finally:
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    result["targets"] = verdicts(result["rows"])
    return result


def _row(rows: list[dict], model: str, variant: str, c: int) -> dict | None:
    return next(
        (r for r in rows if (r["model"], r["variant"], r["concurrency"]) == (model, variant, c)),
        None,
    )


def verdicts(rows: list[dict]) -> list[dict]:
    """ONNX Runtime / torch variant per model and concurrency (the issue's target: digits-cnn
    throughput at concurrency 32 not lower than the torch path)."""
    out = []
    for r in rows:
        if r["variant"] != "onnxruntime":
            continue
        torch_row = _row(rows, r["model"], "torch", r["concurrency"])
        original = _row(rows, r["model"], "original", r["concurrency"])
        if torch_row is None:
            continue
        out.append(
            {
                "model": r["model"],
                "concurrency": r["concurrency"],
                "rps_ratio": round(r["throughput_rps"] / max(torch_row["throughput_rps"], 1e-9), 2),
                "p99_ratio": round(r["p99_ms"] / max(torch_row["p99_ms"], 1e-9), 2),
                "rps_ratio_to_original": round(
                    r["throughput_rps"] / max(original["throughput_rps"], 1e-9), 2
                )
                if original
                else None,
            }
        )
    return out


def markdown(result: dict, command: str) -> str:
    s = result["settings"]
    end = result["machine"].get("load_average_end") or [round(x, 2) for x in os.getloadavg()]
    end = end[0]
    lines = [
        f"Measured {result['date']} on {common.describe_machine(result['machine'])} "
        f"(`{command}`): one `slimserve serve` (shadow evaluation and canary off), "
        f"tritonclient.http with binary tensors, one digit or one sentence per request; "
        f"{s['rounds']} interleaved rounds per concurrency, each activating the original, the "
        f"torch and the ONNX Runtime variant in rotating order, {s['duration']} s measured per "
        f"variant and round after {s['warmup']} s warm-up (figures pool the rounds); client and "
        f"server share the machine (load average {end} at the end). Server threads per model: "
        f"{', '.join(f'{m} {t}' for m, t in result['threads'].items())}; each variant was "
        "compressed with the cpu profile pinned to one runtime (`runtimes: [torch]` or "
        "`[onnxruntime]`) and `threads` set to that budget, which ONNX Runtime serves with.",
        "",
    ]
    variant_rows = []
    for model, made in result["variants"].items():
        for v in made.values():
            if "error" in v:
                error = v["error"][:160].replace("|", "/")
                failed = f"job failed after {v['job_seconds']} s: {error}"
                variant_rows.append([model, f"`{v['pinned']}`", "–", failed, *["–"] * 7])
                continue
            macs = v["macs_before"] / max(v["macs_after"] or 1, 1)
            variant_rows.append(
                [model, f"`{v['pinned']}`", f"`{v['id']}`", v["served_by"], str(v["precision"]),
                 f"{v['ratio']:.0%} {v['allocation']}", f"{macs:.2f}×",
                 f"{v['speedup']:.2f}×" if v["speedup"] else "–",
                 f"{v['metric']} {v['metric_before']:.4f} → {v['metric_after']:.4f}",
                 "yes" if v["accepted"] else "no", f"{v['job_seconds']} s"]
            )  # fmt: skip
    lines += common.table(
        ["model", "pinned", "variant", "served by", "precision", "pruned", "MACs fewer",
         "measured speed-up", "metric", "accepted", "job"],
        variant_rows,
    )  # fmt: skip
    lines += [""]
    lines += common.table(
        ["model", "concurrency", "variant", "req/s", "req/s per round", "p50 ms", "p99 ms",
         "requests", "failed"],
        [
            [r["model"], str(r["concurrency"]), LABELS[r["variant"]],
             f"{r['throughput_rps']:.1f}", " / ".join(f"{x:.0f}" for x in r["rounds_rps"]),
             r["p50_ms"], r["p99_ms"], str(r["requests"]), str(r["failed"])]
            for r in result["rows"]
        ],
    )  # fmt: skip
    lines += ["", "ONNX Runtime variant / torch variant (same model, same load):", ""]
    lines += common.table(
        ["model", "concurrency", "req/s ratio", "p99 ratio", "req/s ratio to the original"],
        [
            [t["model"], str(t["concurrency"]), t["rps_ratio"], t["p99_ratio"],
             t["rps_ratio_to_original"]]
            for t in result["targets"]
        ],
    )  # fmt: skip
    target = next(
        (t for t in result["targets"] if (t["model"], t["concurrency"]) == ("digits-cnn", 32)),
        None,
    )
    if target is not None:
        held = "held" if target["rps_ratio"] >= 1.0 else "missed"
        lines += [
            "",
            f"Target (issue 10): digits-cnn throughput at concurrency 32 under ONNX Runtime not "
            f"lower than the torch path: {target['rps_ratio']:.2f}× ({held}).",
        ]
    return "\n".join(lines) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (digits-cnn, seconds)")
    p.add_argument("--readme", action="store_true", help="update the README block")
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds per concurrency")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per variant")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds discarded per variant")
    p.add_argument("--models", default=None, help="default digits-cnn,minilm; quick: digits-cnn")
    p.add_argument(
        "--job-limit", type=float, default=600.0, help="time_limit_s of each compression job"
    )
    p.add_argument("--home", help="keep the server's SLIMSERVE_HOME here (default: a temp dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 2, 1.5, 0.5
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    args.models = args.models or ("digits-cnn" if args.quick else "digits-cnn,minilm")
    args.models = [m for m in args.models.split(",") if m]
    args.serve_models = ",".join(dict.fromkeys(["digits-cnn", "minilm", *args.models]))
    return args


def main(argv=None) -> None:
    args = parse(argv)
    result = {"date": common.stamp(), "machine": common.machine()} | run(args)
    command = "python -m benchmarks.runtimes_serving" + (" --quick" if args.quick else "")
    md = markdown(result, command)
    common.finish(NAME, result, md, md if args.readme else None)


if __name__ == "__main__":
    main()
