"""What the closed loop costs and how fast it acts: shadow overhead and time to roll back.

    python -m benchmarks.shadow [--duration 8] [--rounds 3] [--readme]

Two real servers serve the same compressed digits-cnn variant (the second takes it from the
first one's variant cache, so both serve identical weights): one with shadow evaluation off
(``SLIMSERVE_SHADOW_FRACTION=0``), one with the default settings. They are loaded in
alternating rounds (tritonclient, concurrency 8 and 32), so a busy neighbour hits both alike;
the table gives each cell's median over rounds. Then, on the shadowed server under load, a
deliberately bad variant (90 % of the channels cut, accepted by a 100-point budget) is
activated, and the time until shadow evaluation has swapped the original back is measured,
with the failed requests (target: none). Writes benchmarks/results/shadow.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.common import describe_machine, finish, machine, stamp, table
from benchmarks.load_test import targets
from benchmarks.loadgen import run_load, wait_for
from service.launch import SlimServer, metric_samples

EXTREME = """\
name: extreme
device: cpu
dtype: float32
quantization: none
ratios: [0.9]
# Torch only: the runtime step would also offer ONNX Runtime of the original, a faithful
# and faster variant; this profile must give a bad one.
runtimes: [torch]
allocation: uniform
max_drop: 1.0
latency_repeats: 3
"""


def _digits_traffic(server: SlimServer):
    """One held-out digit per request, cycling through scikit-learn's test digits: live traffic
    that varies as real users' does (one repeated image says nothing about a variant)."""
    from service.models.digits import digits_split

    target = targets(server, 1)["digits-cnn"]
    return dataclasses.replace(target, pool=digits_split()[2].numpy())


def _active(server: SlimServer, model: str = "digits-cnn") -> str:
    models = server.admin("GET", "/models", check=True).json()["models"]
    return next(m["active_variant"] for m in models if m["name"] == model)


def overhead(off: SlimServer, on: SlimServer, rounds: int, duration: float) -> list[dict]:
    cells: dict[tuple[str, int], list[dict]] = {}
    for _ in range(rounds):
        for label, server in (("off", off), ("on", on)):
            target = _digits_traffic(server)
            for c in (8, 32):
                cells.setdefault((label, c), []).append(run_load(target, c, duration).summary())
    rows = []
    for c in (8, 32):
        off_c, on_c = cells[("off", c)], cells[("on", c)]
        p99_off = statistics.median(r["p99_ms"] for r in off_c)
        p99_on = statistics.median(r["p99_ms"] for r in on_c)
        rows.append(
            {
                "concurrency": c,
                "rps_off": statistics.median(r["throughput_rps"] for r in off_c),
                "rps_on": statistics.median(r["throughput_rps"] for r in on_c),
                "p99_ms_off": p99_off,
                "p99_ms_on": p99_on,
                "p99_ratio": round(p99_on / p99_off, 3),
                "failed": sum(r["failed"] for r in off_c + on_c),
            }
        )
    return rows


def time_to_rollback(server: SlimServer, duration: float = 60.0) -> dict:
    job = server.compress("digits-cnn", "extreme")
    bad = job["variant"]
    target = _digits_traffic(server)
    result: dict = {"variant": bad}

    def during(begin: float, end: float) -> None:
        while time.perf_counter() < begin:
            time.sleep(0.05)
        start = time.perf_counter()
        server.activate("digits-cnn", bad)
        result["activated_s"] = round(time.perf_counter() - start, 3)
        while time.perf_counter() < end:
            if _active(server) == "original":
                result["rollback_s"] = round(time.perf_counter() - start, 2)
                return
            time.sleep(0.1)

    run = run_load(target, 16, duration, during=during)
    result["load"] = run.summary()
    text = httpx.get(f"{server.url}/metrics", timeout=60).text
    result["live_fidelity"] = [
        {**labels, "value": value}
        for labels, value in metric_samples(text, "slimserve_live_fidelity")
    ]
    return result


def markdown(result: dict) -> str:
    lines = [
        f"Measured {result['when']} on {describe_machine(result['machine'])} "
        "(`python -m benchmarks.shadow`): digits-cnn, one compressed variant, tritonclient, "
        "one held-out digit per request (cycling through the test split), "
        f"{result['rounds']} alternating rounds of {result['duration']:.0f} s per cell, medians; "
        "shadow on = the defaults (5 % of batches, at most 20 a second, 64-sample window).",
        "",
    ]
    rows = [
        [
            r["concurrency"],
            f"{r['rps_off']:.0f}",
            f"{r['rps_on']:.0f}",
            f"{r['p99_ms_off']:.2f}",
            f"{r['p99_ms_on']:.2f}",
            f"{r['p99_ratio']:.2f}",
            r["failed"],
        ]
        for r in result["overhead"]
    ]
    header = ["c", "req/s off", "req/s on", "p99 ms off", "p99 ms on", "p99 on/off", "failed"]
    lines += table(header, rows)
    rb = result["rollback"]
    lines += [
        "",
        f"Time to roll back a bad variant (90 % of channels cut) under load at c=16: "
        f"**{rb.get('rollback_s', 'not within the run')} s** from its activation to the "
        f"original serving again; {rb['load']['failed']} of {rb['load']['requests']} requests "
        "failed.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--readme", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="slimserve-shadow-") as tmp:
        root = Path(tmp)
        (root / "profiles").mkdir()
        (root / "profiles" / "extreme.yaml").write_text(EXTREME)
        common = {
            "SLIMSERVE_CANARY": "false",
            "SLIMSERVE_VARIANT_CACHE": str(root / "cache"),
            "SLIMSERVE_PROFILES_DIR": str(root / "profiles"),
        }
        off = SlimServer(root / "off", "digits-cnn", SLIMSERVE_SHADOW_FRACTION="0", **common)
        with off.start():
            variant = off.compress("digits-cnn", "cpu")["variant"]
            on = SlimServer(root / "on", "digits-cnn", SLIMSERVE_AUTO_COMPRESS="true", **common)
            with on.start():
                deadline = time.monotonic() + 120
                while _active(on) == "original" and time.monotonic() < deadline:
                    time.sleep(0.5)  # serves the cached variant: no job
                for server in (off, on):
                    wait_for(targets(server, 1)["digits-cnn"])
                result = {
                    "when": stamp(),
                    "machine": machine(),
                    "variant": variant,
                    "on_served": _active(on),
                    "duration": args.duration,
                    "rounds": args.rounds,
                    "overhead": overhead(off, on, args.rounds, args.duration),
                }
                result["rollback"] = time_to_rollback(on)
    md = markdown(result)
    finish("shadow", result, md, md if args.readme else None)


if __name__ == "__main__":
    threading.current_thread().name = "shadow-benchmark"
    main()
