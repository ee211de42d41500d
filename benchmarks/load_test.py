"""Load test of a real ``slimserve serve``: original vs compressed, batched vs unbatched.

    python -m benchmarks.load_test [--quick] [--readme] [--duration S] [--concurrency 1,8,32]

Starts ``slimserve serve`` (digits-cnn and minilm, no background compression) on a free port,
compresses digits-cnn for the cpu profile through the admin API, and drives the v2 endpoint with
tritonclient.http (binary tensors, one 8x8 digit per request) at each concurrency for a fixed
duration: throughput, p50/p99 latency and failed requests, for the original and the compressed
variant (switched with the admin ``activate`` call). Then the same on a second server started
with ``SLIMSERVE_MAX_BATCH_SIZE=1`` (no micro-batching), after the first has stopped.

Also: the HTTP overhead (p50 of one request at concurrency 1 minus the p50 of an in-process
forward of the same model on the same input), a hot swap under load (p99 while activate
calls alternate the variants vs the steady p99; failed requests must be 0), and isolation:
digits-cnn's p50/p99 alone and while minilm is saturated with 64-sentence requests
(benchmarks/isolation.py).

Writes benchmarks/results/load_test.json and .md; --readme replaces the LOAD_TEST block.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common, isolation
from benchmarks.loadgen import Target, run_load, wait_for
from service.launch import SlimServer

NAME = "load_test"
SENTENCE = "Structured pruning removes whole channels, so the smaller model is really faster."


def digit_batch(n: int) -> np.ndarray:
    from service.models.digits import digits_split

    return np.ascontiguousarray(digits_split()[2][:n].numpy())


def targets(server: SlimServer, batch: int) -> dict[str, Target]:
    x = digit_batch(batch)
    text = np.array([SENTENCE.encode()] * batch, dtype=object)
    return {
        "digits-cnn": Target(server.address, "digits-cnn", "INPUT", "SCORES", x),
        "minilm": Target(server.address, "minilm", "TEXT", "EMBEDDING", text, "BYTES"),
    }


def in_process_p50(module, x: np.ndarray, repeats: int, threads: int) -> float:
    """p50 of ``module(torch.from_numpy(x)).numpy()`` in this process, in milliseconds."""
    import torch

    torch.set_num_threads(threads)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 10):
            start = time.perf_counter()
            module(torch.from_numpy(x)).numpy()
            if i >= 10:  # warm-up
                times.append((time.perf_counter() - start) * 1000.0)
    return common.percentile(times, 50)


def sweep(server, batching, variants, models, args) -> list[dict]:
    """Every (model, variant, concurrency) cell on one server."""
    rows = []
    tg = targets(server, args.batch)
    for model in models:
        for variant in variants if model == "digits-cnn" else ["original"]:
            server.activate(model, variant)
            wait_for(tg[model])
            for c in args.concurrency:
                run = run_load(tg[model], c, args.duration, args.warmup)
                row = {"batching": batching, "model": model, "variant": variant, "concurrency": c}
                rows.append(row | run.summary())
                print(
                    f"{batching:9} {model:10} {variant:24} c={c:<3} "
                    f"{rows[-1]['throughput_rps']:8.1f} rps  p50 {rows[-1]['p50_ms']:7.2f} ms  "
                    f"p99 {rows[-1]['p99_ms']:7.2f} ms  failed {rows[-1]['failed']}",
                    flush=True,
                )
    return rows


def hot_swap(server, variant: str, args) -> dict:
    """Steady p99 on the original, then the same load while activate calls alternate."""
    target = targets(server, args.batch)["digits-cnn"]
    c = args.swap_concurrency
    server.activate("digits-cnn", "original")
    steady = run_load(target, c, args.swap_duration, args.warmup).summary()
    windows: list[tuple[float, float]] = []

    def swapper(begin: float, end: float) -> None:
        gap = (end - begin) / (args.swaps + 1)
        for i in range(args.swaps):
            time.sleep(max(0.0, begin + (i + 1) * gap - time.perf_counter()))
            start = time.perf_counter()
            server.activate("digits-cnn", variant if i % 2 == 0 else "original")
            windows.append((start, time.perf_counter()))

    run = run_load(target, c, args.swap_duration, args.warmup, during=swapper)
    during, near = run.summary(), run.overlapping(windows, pad=0.05)
    result = {
        "concurrency": c,
        "swaps": len(windows),
        "activate_ms": [round((b - a) * 1000, 1) for a, b in windows],
        "steady": steady,
        "during": during,
        "overlapping_swaps": near,
        "p99_ratio": round(during["p99_ms"] / steady["p99_ms"], 2),
        "failed": during["failed"],
    }
    print(
        f"hot swap c={c}: steady p99 {steady['p99_ms']} ms, during {during['p99_ms']} ms, "
        f"overlapping {near['p99_ms']} ms, failed {result['failed']}",
        flush=True,
    )
    return result


def overheads(rows: list[dict], in_process: dict[str, float]) -> list[dict]:
    out = []
    for r in rows:
        if r["model"] == "digits-cnn" and r["concurrency"] == 1 and r["variant"] in in_process:
            local = in_process[r["variant"]]
            out.append(
                {
                    "batching": r["batching"],
                    "variant": r["variant"],
                    "http_p50_ms": r["p50_ms"],
                    "in_process_p50_ms": round(local, 3),
                    "overhead_ms": round(r["p50_ms"] - local, 3),
                }
            )
    return out


def run(args) -> dict:
    from compression import load_variant
    from service.models.sources import resolve

    home = Path(args.home or tempfile.mkdtemp(prefix="slimserve-bench-"))
    env = {"SLIMSERVE_THREADS": str(args.threads)} if args.threads else {}
    result: dict = {"settings": {k: v for k, v in vars(args).items() if k != "readme"}}
    bundle = resolve("digits-cnn")
    x = digit_batch(args.batch)
    try:
        batched = SlimServer(home, args.serve_models, **env)
        with batched.start():
            served = batched.admin("GET", "/models", check=True).json()["models"]
            result["threads"] = {m["name"]: m["threads"] for m in served}
            threads = result["threads"]["digits-cnn"]  # in-process forwards: the same
            t0 = time.perf_counter()
            job = batched.compress("digits-cnn", args.profile)
            vid, report = job["variant"], job["report"]
            print(f"compressed digits-cnn -> {vid} in {time.perf_counter() - t0:.1f} s", flush=True)
            result["variant"] = {
                "id": vid,
                "state": job["state"],
                "job_seconds": round(time.perf_counter() - t0, 1),
                **{k: report.get(k) for k in ("macs_before", "macs_after", "params_before",
                                              "params_after", "speedup", "metric",
                                              "metric_before", "metric_after", "precision",
                                              "ratio", "allocation")},
            }  # fmt: skip
            variant = load_variant(batched.variant_dir("digits-cnn", vid), model=bundle.factory())
            in_process = {
                "original": in_process_p50(bundle.factory(), x, args.inproc_repeats, threads),
                vid: in_process_p50(variant.module.eval(), x, args.inproc_repeats, threads),
            }
            variants = ["original", vid]
            rows = sweep(batched, "batched", variants, args.models, args)
            result["hot_swap"] = hot_swap(batched, vid, args)
            if "minilm" in args.serve_models.split(","):
                batched.activate("digits-cnn", "original")
                result["isolation"] = isolation.measure(batched.address, args.duration, args.warmup)
        unbatched = SlimServer(home, args.serve_models, SLIMSERVE_MAX_BATCH_SIZE="1", **env)
        with unbatched.start():
            rows += sweep(unbatched, "unbatched", variants, args.models, args)
    finally:
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    result["rows"] = rows
    result["in_process_p50_ms"] = {k: round(v, 3) for k, v in in_process.items()}
    result["http_overhead"] = overheads(rows, in_process)
    return result


def markdown(result: dict, command: str) -> str:
    s, v = result["settings"], result["variant"]
    lines = [
        f"Measured {result['date']} on {common.describe_machine(result['machine'])} "
        f"(`{command}`): tritonclient.http, binary tensors, {s['batch']} digit(s) per request, "
        f"{s['duration']} s per cell after {s['warmup']} s warm-up; client and server share the "
        f"machine; server torch threads per model "
        f"{', '.join(f'{m} {t}' for m, t in result['threads'].items())}"
        f"{' (set)' if s['threads'] else ' (its own choice)'}.",
        "",
        f"Compressed variant `{v['id']}` ({v['state']}, cpu profile, "
        f"{v['ratio']:.0%} {v['allocation']}, {v['precision']}): MACs "
        f"{v['macs_before'] / max(v['macs_after'], 1):.2f}× fewer, params "
        f"{v['params_before'] / max(v['params_after'], 1):.2f}× fewer, {v['metric']} "
        f"{v['metric_before']:.4f} → {v['metric_after']:.4f}; job {v['job_seconds']} s.",
        "",
    ]
    rows = [
        [r["model"], r["batching"], "original" if r["variant"] == "original" else "compressed",
         str(r["concurrency"]), f"{r['throughput_rps']:.1f}", r["p50_ms"], r["p99_ms"],
         str(r["failed"])]
        for r in result["rows"]
    ]  # fmt: skip
    header = ["model", "server", "variant", "concurrency", "req/s", "p50 ms", "p99 ms", "failed"]
    lines += common.table(header, rows)
    lines += [
        "",
        "HTTP overhead (p50 at concurrency 1 minus an in-process forward, same input):",
        "",
    ]
    lines += common.table(
        ["server", "variant", "HTTP p50 ms", "in-process p50 ms", "overhead ms"],
        [
            [o["batching"], "original" if o["variant"] == "original" else "compressed",
             o["http_p50_ms"], o["in_process_p50_ms"], o["overhead_ms"]]
            for o in result["http_overhead"]
        ],
    )  # fmt: skip
    h = result["hot_swap"]
    lines += [
        "",
        f"Hot swap under load (batched server, concurrency {h['concurrency']}, {h['swaps']} "
        f"activate calls alternating compressed/original, each "
        f"{min(h['activate_ms'], default=0):.0f}–{max(h['activate_ms'], default=0):.0f} ms):",
        "",
    ]
    lines += common.table(
        ["window", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "failed"],
        [
            ["steady (original)", str(h["steady"]["requests"]), f"{h['steady']['throughput_rps']:.1f}",
             h["steady"]["p50_ms"], h["steady"]["p99_ms"], h["steady"]["max_ms"],
             str(h["steady"]["failed"])],
            ["with swaps", str(h["during"]["requests"]), f"{h['during']['throughput_rps']:.1f}",
             h["during"]["p50_ms"], h["during"]["p99_ms"], h["during"]["max_ms"],
             str(h["during"]["failed"])],
            ["in flight during an activate call", str(h["overlapping_swaps"]["requests"]), "",
             h["overlapping_swaps"]["p50_ms"], h["overlapping_swaps"]["p99_ms"],
             h["overlapping_swaps"]["max_ms"], str(h["overlapping_swaps"]["failed"])],
        ],
    )  # fmt: skip
    overhead = next(
        (
            o
            for o in result["http_overhead"]
            if o["batching"] == "batched" and o["variant"] == "original"
        ),
        None,
    )
    if "isolation" in result:
        lines += ["", "digits-cnn beside a saturated minilm (one forward lane per model):", ""]
        lines += common.table(
            ["minilm load", "digits req/s", "digits p50 ms", "digits p99 ms", "minilm sentences/s"],
            [
                [row[1], row[2], row[3], row[4], row[6]]
                for row in isolation.table_rows("batched", result["isolation"])
            ],
        )
    lines += ["", "Against the design targets:", ""]
    if overhead:
        lines.append(
            f"- HTTP overhead p50 (batched server, original): {overhead['overhead_ms']:.2f} ms "
            "(target ≤ 1.5 ms)."
        )
    lines.append(
        f"- Hot swap: p99 with swaps / steady p99 = {h['p99_ratio']}×, {h['failed']} failed "
        "(target ≤ 2×, 0 failed)."
    )
    return "\n".join(lines) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (seconds per cell)")
    p.add_argument("--readme", action="store_true", help="update the README block")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--duration", type=float, default=15.0, help="seconds measured per cell")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds discarded per cell")
    p.add_argument("--batch", type=int, default=1, help="samples per request")
    p.add_argument(
        "--models", default=None, help="models under load (default digits-cnn,minilm; quick: cnn)"
    )
    p.add_argument("--profile", default="cpu", help="profile of the compressed variant")
    p.add_argument(
        "--threads", type=int, default=None, help="server thread budget (SLIMSERVE_THREADS)"
    )
    p.add_argument("--swap-concurrency", type=int, default=8)
    p.add_argument("--swap-duration", type=float, default=15.0)
    p.add_argument("--swaps", type=int, default=6)
    p.add_argument("--inproc-repeats", type=int, default=500)
    p.add_argument("--home", help="keep the servers' SLIMSERVE_HOME here (default: a temp dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.swap_duration, args.swaps = 2.0, 0.5, 3.0, 2
        args.inproc_repeats = 100

    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    args.models = args.models or ("digits-cnn" if args.quick else "digits-cnn,minilm")
    args.models = [m for m in args.models.split(",") if m]
    args.serve_models = ",".join(dict.fromkeys(["digits-cnn", "minilm", *args.models]))
    return args


def main(argv=None) -> None:
    args = parse(argv)
    machine = common.machine()
    result = {"date": common.stamp(), "machine": machine} | run(args)
    command = "python -m benchmarks.load_test" + (" --quick" if args.quick else "")
    md = markdown(result, command)
    common.finish(NAME, result, md, md if args.readme else None)


if __name__ == "__main__":
    main()
