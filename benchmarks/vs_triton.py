"""The same compressed variant served by SlimServe and by a real Triton Inference Server.

    python -m benchmarks.vs_triton [--quick] [--readme] [--duration S] [--concurrency 1,8,32]

Starts ``slimserve serve`` (digits-cnn, no background compression), compresses digits-cnn for
the cpu profile through the admin API and activates that variant; then serves the very same
variant directory from Triton (PyTriton, ``deploy/triton/serve_variant.py --variant`` in
``.venv-triton``: TorchScript export, dynamic batching). The servers run one after the other,
never together, with the same largest batch, and get the same tritonclient.http load (binary
tensors, one 8x8 digit per request) at each concurrency: throughput, p50/p99 latency, failed
requests, and SlimServe / Triton ratios. SlimServe picks its torch threads itself (per model);
Triton runs once per thread count in ``--triton-threads`` (default 1 and all cores) and each
cell is compared with Triton's better run, so the anchor is Triton at its best.

Needs .venv-triton (``bash deploy/triton/install-venv.sh``); without it, says so and exits 0.
Writes benchmarks/results/vs_triton.json and .md; --readme replaces the VS_TRITON block.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.load_test import digit_batch
from benchmarks.loadgen import Target, run_load, wait_for
from service.launch import SlimServer, TritonServer

NAME = "vs_triton"
TRITON_MODEL = "digits-cnn-compressed"


def sweep(label: str, target: Target, args, threads: int | None = None) -> list[dict]:
    wait_for(target)
    rows = []
    for c in args.concurrency:
        row = {"server": label, "threads": threads, "concurrency": c} | run_load(
            target, c, args.duration, args.warmup
        ).summary()
        rows.append(row)
        print(
            f"{label:9} c={c:<3} {row['throughput_rps']:8.1f} rps  p50 {row['p50_ms']:7.2f} ms  "
            f"p99 {row['p99_ms']:7.2f} ms  failed {row['failed']}",
            flush=True,
        )
    return rows


def answer(target: Target, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as tc

    client = tc.InferenceServerClient(target.address)
    inp = tc.InferInput(target.input_name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    try:
        return client.infer(target.model, [inp]).as_numpy(target.output_name)
    finally:
        client.close()


def run(args) -> dict:
    home = Path(args.home or tempfile.mkdtemp(prefix="slimserve-vs-triton-"))
    x = digit_batch(args.batch)
    check = digit_batch(16)
    result: dict = {"settings": {k: v for k, v in vars(args).items() if k != "readme"}}
    try:
        env = {"SLIMSERVE_MAX_BATCH_SIZE": str(args.max_batch_size)}
        if args.threads:
            env["SLIMSERVE_THREADS"] = str(args.threads)
        slim = SlimServer(home, "digits-cnn", **env)
        with slim.start():
            served = slim.admin("GET", "/models", check=True).json()["models"]
            models = {m["name"]: m for m in served}
            slim_threads = models["digits-cnn"]["threads"]
            job = slim.compress("digits-cnn", args.profile)
            vid, report = job["variant"], job["report"]
            slim.activate("digits-cnn", vid)
            variant_dir = slim.variant_dir("digits-cnn", vid)
            result["variant"] = {
                "id": vid, "state": job["state"], "ratio": report["ratio"],
                "allocation": report["allocation"], "precision": report["precision"],
                "macs_x": round(report["macs_before"] / max(report["macs_after"], 1), 2),
                "metric": report["metric"], "metric_after": report["metric_after"],
            }  # fmt: skip
            target = Target(slim.address, "digits-cnn", "INPUT", "SCORES", x)
            rows = sweep("slimserve", target, args, slim_threads)
            slim_answer = answer(target, check)
        for threads in args.triton_threads:
            log = home / f"triton-{threads}.log"
            triton = TritonServer(
                log,
                variant=variant_dir,
                name=TRITON_MODEL,
                max_batch_size=args.max_batch_size,
                threads=threads,
            )
            with triton.start(timeout=args.start_timeout):
                target = Target(triton.address, TRITON_MODEL, "INPUT__0", "OUTPUT__0", x)
                rows += sweep("triton", target, args, threads)
                triton_answer = answer(target, check)
    finally:
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    result["slimserve_threads"] = slim_threads
    result["same_answers_max_abs_diff"] = float(np.abs(slim_answer - triton_answer).max())
    result["rows"] = rows
    result["ratios"] = ratios(rows)
    return result


def best_triton(rows: list[dict], c: int) -> dict | None:
    """Triton's run with the highest throughput at concurrency ``c``."""
    runs = [r for r in rows if r["server"] == "triton" and r["concurrency"] == c]
    return max(runs, key=lambda r: r["throughput_rps"], default=None)


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for s in sorted(rows, key=lambda r: r["concurrency"]):
        c = s["concurrency"]
        t = best_triton(rows, c)
        if s["server"] != "slimserve" or t is None:
            continue
        out.append(
            {
                "concurrency": c,
                "triton_threads": t["threads"],
                "throughput": round(s["throughput_rps"] / max(t["throughput_rps"], 1e-9), 2),
                "p50": round(s["p50_ms"] / max(t["p50_ms"], 1e-9), 2),
                "p99": round(s["p99_ms"] / max(t["p99_ms"], 1e-9), 2),
            }
        )
    return out


def markdown(result: dict, command: str) -> str:
    s, v = result["settings"], result["variant"]
    lines = [
        f"Measured {result['date']} on {common.describe_machine(result['machine'])} "
        f"(`{command}`): the same compressed digits-cnn variant (`{v['id']}`, {v['state']}, "
        f"{v['ratio']:.0%} {v['allocation']}, {v['precision']}, {v['macs_x']}× fewer MACs, "
        f"{v['metric']} {v['metric_after']:.4f}) served by SlimServe and by Triton (PyTriton, "
        f"dynamic batching) one after the other, largest batch {s['max_batch_size']} each; "
        f"SlimServe chose {result['slimserve_threads']} torch thread(s), Triton ran with "
        f"{' and '.join(map(str, s['triton_threads']))} and each row compares with its better "
        f"run; tritonclient.http with binary tensors, {s['batch']} "
        f"digit(s) per request, {s['duration']} s per cell after {s['warmup']} s warm-up; "
        f"answers agree to {result['same_answers_max_abs_diff']:.1e}.",
        "",
    ]
    slim = {r["concurrency"]: r for r in result["rows"] if r["server"] == "slimserve"}
    rows = []
    for ratio in result["ratios"]:
        c = ratio["concurrency"]
        a, b = slim[c], best_triton(result["rows"], c)
        rows.append(
            [str(c), f"{a['throughput_rps']:.1f}", a["p50_ms"], a["p99_ms"], str(a["failed"]),
             f"{b['throughput_rps']:.1f}", b["p50_ms"], b["p99_ms"], str(b["failed"]),
             str(b["threads"]), ratio["throughput"], ratio["p99"]]
        )  # fmt: skip
    header = ["concurrency", "SlimServe req/s", "p50 ms", "p99 ms", "failed"]
    header += ["Triton req/s", "p50 ms", "p99 ms", "failed", "Triton threads"]
    header += ["req/s ratio", "p99 ratio"]
    lines += common.table(header, rows)
    lines += ["", "Ratios are SlimServe / Triton (target: req/s ratio ≥ 1 at concurrency 32)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (seconds per cell)")
    p.add_argument("--readme", action="store_true", help="update the README block")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--duration", type=float, default=15.0, help="seconds measured per cell")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds discarded per cell")
    p.add_argument("--batch", type=int, default=1, help="samples per request")
    p.add_argument("--profile", default="cpu", help="profile of the compressed variant")
    p.add_argument(
        "--threads", type=int, default=None, help="SlimServe thread budget (SLIMSERVE_THREADS)"
    )
    p.add_argument("--triton-threads", default=None, help="Triton torch threads (1,all cores)")
    p.add_argument("--max-batch-size", type=int, default=32, help="largest batch, both servers")
    p.add_argument("--start-timeout", type=float, default=600)
    p.add_argument("--home", help="keep the servers' files here (default: a temp dir)")
    args = p.parse_args(argv)
    reason = TritonServer.unavailable()
    if reason:
        print(f"vs_triton: skipped: {reason}")
        sys.exit(0)
    if args.quick:
        args.duration, args.warmup = 2.0, 0.5
    cores = os.cpu_count() or 1
    args.triton_threads = sorted(
        {int(t) for t in str(args.triton_threads or f"1,{cores}").split(",")}
    )
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    result = {"date": common.stamp(), "machine": common.machine()} | run(args)
    command = "python -m benchmarks.vs_triton" + (" --quick" if args.quick else "")
    md = markdown(result, command)
    common.finish(NAME, result, md, md if args.readme else None)


if __name__ == "__main__":
    main()
