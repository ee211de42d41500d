"""One server, two protocols: Open Inference Protocol v2 over gRPC against HTTP binary tensors.

    python -m benchmarks.grpc_vs_http [--duration 8] [--rounds 2] [--readme]

One ``slimserve serve`` (digits-cnn and minilm, originals, no background work), driven in
interleaved rounds: per round and concurrency, HTTP (``tritonclient.http``, binary tensors,
gevent clients) then gRPC (``tritonclient.grpc.aio``, asyncio tasks on one channel), one digit or
one sentence per request. The clients run in this process on the same 2 cores as the server.
Figures pool the rounds (throughput: their median). Writes benchmarks/results/grpc_vs_http.json
and .md; --readme replaces the GRPC_VS_HTTP block.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace

from benchmarks import common
from benchmarks.load_test import targets
from benchmarks.loadgen import run_load, run_load_grpc, wait_for
from service.launch import SlimServer

NAME = "grpc_vs_http"


def server_cpu_s(server: SlimServer) -> float:
    """CPU seconds (user + system) the server's process tree has used so far."""
    import psutil

    root = psutil.Process(server.proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def run(args) -> dict:
    home = tempfile.mkdtemp(prefix="slimserve-grpc-bench-")
    server = SlimServer(
        home, models="digits-cnn,minilm", SLIMSERVE_SHADOW_FRACTION="0", SLIMSERVE_CANARY="false"
    ).start()
    cells: dict[tuple[str, str, int], list[dict]] = {}
    try:
        http_targets = targets(server, 1)
        for t in http_targets.values():
            wait_for(t)
        for r in range(args.rounds):
            for c in args.concurrency:
                for model, target in http_targets.items():
                    for protocol in ("http", "grpc"):
                        cpu = server_cpu_s(server)
                        if protocol == "http":
                            got = run_load(target, c, args.duration, args.warmup)
                        else:
                            grpc_target = replace(target, address=server.grpc_address)
                            got = run_load_grpc(grpc_target, c, args.duration, args.warmup)
                        cpu = server_cpu_s(server) - cpu
                        s = got.summary()
                        # the server's CPU per request, warm-up included: what the protocol
                        # costs the server, whatever the client in this process costs
                        s["server_cpu_ms"] = round(1000.0 * cpu / max(len(got.ok), 1), 3)
                        cells.setdefault((model, protocol, c), []).append(s)
                        print(r, model, protocol, c, s, flush=True)
    finally:
        server.stop()
    rows = []
    for (model, protocol, c), runs in cells.items():
        rows.append(
            {
                "model": model,
                "protocol": protocol,
                "concurrency": c,
                "throughput_rps": statistics.median(s["throughput_rps"] for s in runs),
                "p50_ms": statistics.median(s["p50_ms"] for s in runs),
                "p99_ms": statistics.median(s["p99_ms"] for s in runs),
                "server_cpu_ms": statistics.median(s["server_cpu_ms"] for s in runs),
                "failed": sum(s["failed"] for s in runs),
                "requests": sum(s["requests"] for s in runs),
            }
        )
    return {
        "machine": common.machine(),
        "date": common.stamp(),
        "args": {k: v for k, v in vars(args).items() if k != "readme"},
        "rows": rows,
    }


def markdown(result: dict, command: str) -> str:
    a = result["args"]
    lines = [
        f"Measured {result['date']} on {common.describe_machine(result['machine'])} "
        f"(`{command}`): one `slimserve serve`, originals, shadow evaluation off; "
        f"{a['rounds']} interleaved rounds of {a['duration']} s per cell after "
        f"{a['warmup']} s warm-up, one digit or one sentence per request; HTTP: "
        "`tritonclient.http` with binary tensors; gRPC: `tritonclient.grpc.aio`; the clients "
        "share the 2 cores with the server (so throughput counts the client's cost too). "
        "*server CPU*: the server's process tree's CPU time per request (user + system), what "
        "the protocol costs the server. Medians over rounds.",
        "",
    ]
    by = {(r["model"], r["protocol"], r["concurrency"]): r for r in result["rows"]}
    header = [
        "model", "c", "HTTP req/s (p50 / p99 ms)", "gRPC req/s (p50 / p99 ms)", "gRPC ÷ HTTP",
        "server CPU per request, HTTP / gRPC (ms)",
    ]  # fmt: skip
    table = []
    for model in sorted({r["model"] for r in result["rows"]}):
        for c in a["concurrency"]:
            h, g = by.get((model, "http", c)), by.get((model, "grpc", c))
            if not h or not g:
                continue

            def cell(r: dict) -> str:
                failed = f", {r['failed']} failed" if r["failed"] else ""
                return f"{r['throughput_rps']:.0f} ({r['p50_ms']:.1f} / {r['p99_ms']:.1f}){failed}"

            ratio = g["throughput_rps"] / max(h["throughput_rps"], 1e-9)
            cpu = f"{h['server_cpu_ms']:.3f} / {g['server_cpu_ms']:.3f}"
            table.append([model, c, cell(h), cell(g), f"{ratio:.2f}x", cpu])
    lines += common.table(header, table)
    failed = sum(r["failed"] for r in result["rows"])
    requests = sum(r["requests"] for r in result["rows"])
    lines.append(f"\n{failed} of {requests} requests failed.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--readme", action="store_true", help="update the README block")
    args = parser.parse_args(argv)
    result = run(args)
    command = "python -m benchmarks.grpc_vs_http " + " ".join(argv or sys.argv[1:])
    table = markdown(result, command.strip())
    common.finish(NAME, result, table, readme=table if args.readme else None)


if __name__ == "__main__":
    main()
