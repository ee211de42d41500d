"""Does a busy model slow a fast one? digits-cnn latency while minilm is saturated.

    python -m benchmarks.isolation [--quick] [--address HOST:PORT] [--duration S]
                                   [--baseline CHECKOUT]

One client sends single digits to digits-cnn (tritonclient.http, binary tensors) for a fixed
time: alone, then while another process keeps minilm busy with 64-sentence requests at
concurrency 1 and at concurrency 4 (each request is then split into micro-batches of the
server's batch size). Reports digits-cnn's p50/p99 and minilm's throughput in each cell.

Starts ``slimserve serve`` (digits-cnn and minilm) on a free port unless ``--address`` names a
running server. ``--baseline DIR`` first measures the server of another checkout (e.g. a git
worktree of an earlier commit, run with ``PYTHONPATH=DIR``) the same way, for a before/after
table on the same machine. Part of ``benchmarks.load_test``, which records it in
load_test.json; alone it writes benchmarks/results/isolation.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.loadgen import Target, run_load, wait_for

NAME = "isolation"
SENTENCE = "Structured pruning removes whole channels, so the smaller model is really faster."

# The minilm load, in a process of its own: its client's CPU is not this process's GIL.
_BACKGROUND = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from benchmarks.loadgen import Target, run_load
    address, concurrency, batch, seconds, sentence = sys.argv[1:6]
    text = np.array([sentence.encode()] * int(batch), dtype=object)
    target = Target(address, "minilm", "TEXT", "EMBEDDING", text, "BYTES")
    summary = run_load(target, int(concurrency), float(seconds), 0.0).summary()
    print(json.dumps(summary), flush=True)
    """
)


def _describe(checkout: Path) -> str:
    """The commit a checkout is at (its short hash), or its path."""
    found = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return found.stdout.strip() or str(checkout)


def digits_target(address: str) -> Target:
    from service.models.digits import digits_split

    x = np.ascontiguousarray(digits_split()[2][:1].numpy())
    return Target(address, "digits-cnn", "INPUT", "SCORES", x)


def measure(address: str, duration: float, warmup: float, batch: int = 64) -> dict:
    """digits-cnn alone, then beside minilm load at concurrency 1 and 4."""
    digits = digits_target(address)
    text = np.array([SENTENCE.encode()] * batch, dtype=object)
    wait_for(digits)
    wait_for(Target(address, "minilm", "TEXT", "EMBEDDING", text, "BYTES"))
    cells = [{"minilm_concurrency": 0, "digits": run_load(digits, 1, duration, warmup).summary()}]
    print(f"digits-cnn alone: {_line(cells[-1]['digits'])}", flush=True)
    for concurrency in (1, 4):
        background = subprocess.Popen(
            [sys.executable, "-c", _BACKGROUND, address, str(concurrency), str(batch),
             str(duration + 2 * warmup), SENTENCE],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            digits_run = run_load(digits, 1, duration, warmup).summary()
            minilm = json.loads(background.communicate(timeout=duration * 4 + 120)[0])
        finally:
            if background.poll() is None:
                background.kill()
        cells.append(
            {
                "minilm_concurrency": concurrency,
                "minilm_batch": batch,
                "digits": digits_run,
                "minilm": minilm,
            }
        )
        print(
            f"digits-cnn beside minilm c={concurrency} x{batch}: {_line(digits_run)}; minilm "
            f"{minilm['throughput_rps']} req/s ({minilm['throughput_rps'] * batch:.0f} "
            f"sentences/s), p50 {minilm['p50_ms']} ms",
            flush=True,
        )
    return {"duration": duration, "warmup": warmup, "cells": cells}


def _line(s: dict) -> str:
    return f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, {s['throughput_rps']} req/s, failed {s['failed']}"


def markdown(result: dict, command: str) -> str:
    iso = result["isolation"]
    builds = [("this build", iso)]
    if "baseline" in result:
        builds.insert(0, (f"baseline ({result['baseline']['checkout']})", result["baseline"]))
    lines = [
        f"Measured {result['date']} on {common.describe_machine(result['machine'])} "
        f"(`{command}`): one tritonclient.http client sends one digit per request to digits-cnn "
        f"for {iso['duration']} s per cell while another process keeps minilm busy with "
        "64-sentence requests; client and server share the machine.",
        "",
    ]
    rows = []
    for build, measured in builds:
        rows += table_rows(build, measured)
    header = ["server", "minilm load", "digits req/s", "digits p50 ms", "digits p99 ms",
              "digits failed", "minilm sentences/s", "minilm failed"]  # fmt: skip
    return "\n".join(lines + common.table(header, rows)) + "\n"


def table_rows(build: str, measured: dict) -> list[list]:
    rows = []
    for cell in measured["cells"]:
        d, m = cell["digits"], cell.get("minilm")
        rows.append(
            [
                build,
                "none" if not cell["minilm_concurrency"] else f"c={cell['minilm_concurrency']} x64",
                f"{d['throughput_rps']:.1f}", d["p50_ms"], d["p99_ms"], str(d["failed"]),
                "" if m is None else f"{m['throughput_rps'] * cell['minilm_batch']:.0f}",
                "" if m is None else str(m["failed"]),
            ]
        )  # fmt: skip
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--address", help="a running server (host:port); default: start one")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--baseline", help="another checkout whose server is measured first")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 3.0, 0.5
    result = {"date": common.stamp(), "machine": common.machine(), "settings": vars(args)}
    from service.launch import SlimServer

    if args.baseline:
        home = Path(tempfile.mkdtemp(prefix="slimserve-isolation-base-"))
        checkout = Path(args.baseline).resolve()
        base = SlimServer(home, "digits-cnn,minilm", PYTHONPATH=str(checkout))
        here = Path.cwd()
        os.chdir(checkout)  # `python -m` puts the working directory first on sys.path
        try:
            base.start()
        finally:
            os.chdir(here)
        with base:
            print(f"baseline: the server of {args.baseline}", flush=True)
            result["baseline"] = measure(base.address, args.duration, args.warmup)
            result["baseline"]["checkout"] = _describe(checkout)
    if args.address:
        result["isolation"] = measure(args.address, args.duration, args.warmup)
    else:
        home = Path(tempfile.mkdtemp(prefix="slimserve-isolation-"))
        with SlimServer(home, "digits-cnn,minilm").start() as server:
            result["isolation"] = measure(server.address, args.duration, args.warmup)
    command = "python -m benchmarks.isolation" + (" --quick" if args.quick else "")
    if args.baseline:
        command += f" --baseline <checkout of {result['baseline']['checkout']}>"
    common.finish(NAME, result, markdown(result, command))


if __name__ == "__main__":
    main()
