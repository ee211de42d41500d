"""A fleet on one machine: replicas (real processes) sharing a variant store.

    python -m benchmarks.fleet [--model digits-cnn] [--profile cpu] [--replicas 3]
                               [--load-seconds 20] [--readme]

Three parts, each on real ``slimserve serve`` / ``slimserve worker`` processes:

1. **Start together.** ``--replicas`` replicas start at once on an empty store, a directory and
   then S3 (SeaweedFS on localhost, ``service.launch.S3Server``), jobs on, canary off. Reports
   the compressions run across the fleet (goal: 1), the job's seconds, and how long after the
   job ended the last replica served its variant (goal: under 30 s).
2. **The holder killed.** A worker takes the lease and is SIGKILLed a few seconds into its job
   (lease ttl 10 s); a second worker and a serving replica with jobs off wait. Reports the
   compressions started (goal: at most 2) and the time from the kill until the serving replica
   serves the variant.
3. **Serving while the fleet compresses.** One replica serves ``--model`` to a closed-loop
   client (8 at a time, one image per request) on core 0 of the machine (the pod's CPU limit);
   p50/p99 while idle, while a compression runs *in that replica* (its job shares core 0),
   and while a worker compresses elsewhere (core 1, its own resources). Goal: with a worker,
   p99 within 10 % of idle. The client runs on core 1 in every phase.

Writes benchmarks/results/fleet.json and .md; ``--readme`` replaces the README's FLEET block.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.load_test import targets
from benchmarks.loadgen import run_load, wait_for
from service.launch import FleetWorker, S3Server, SlimServer, start_all

NAME = "fleet"


def _env(store: str, profile: str, **extra: str) -> dict[str, str]:
    return {
        "SLIMSERVE_VARIANT_CACHE": store,
        "SLIMSERVE_AUTO_COMPRESS": "true",
        "SLIMSERVE_CANARY": "false",
        "SLIMSERVE_SHADOW_FRACTION": "0",
        "SLIMSERVE_PROFILE": profile,
        "SLIMSERVE_FLEET_POLL_S": "1",
        **extra,
    }


def _active(server: SlimServer, model: str) -> str:
    models = server.admin("GET", "/models", check=True).json()["models"]
    return next(m["active_variant"] for m in models if m["name"] == model)


def _jobs(server: SlimServer) -> list[dict]:
    listed = server.admin("GET", "/jobs", check=True).json()["jobs"]
    return [server.admin("GET", f"/jobs/{j['id']}", check=True).json() for j in listed]


def _until(check, timeout: float, what: str) -> float:
    """Poll ``check()`` until true; the wall time (time.time()) it first held."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.25)
    return time.time()


def start_together(root: Path, store: str, args, extra: dict) -> dict:
    """``args.replicas`` replicas at once on an empty store: compressions and adoption lag."""
    env = _env(store, args.profile, **extra)
    replicas = [SlimServer(root / f"replica-{i}", args.model, **env) for i in range(args.replicas)]
    launched = time.time()
    try:
        start_all(replicas)
        serving = [
            _until(lambda r=r: _active(r, args.model) != "original", 900, "variant")
            for r in replicas
        ]
        jobs = [j for r in replicas for j in _jobs(r)]
        finished = [j["finished"] for j in jobs if j.get("finished")]
        job_s = [j["report"]["seconds"] for j in jobs if j.get("report")]
        return {
            "store": "s3" if store.startswith("s3://") else "directory",
            "replicas": args.replicas,
            "compressions": len(jobs),
            "job_seconds": round(max(job_s), 1) if job_s else None,
            "all_serving_after_launch_s": round(max(serving) - launched, 1),
            "last_adoption_after_job_s": round(max(serving) - max(finished), 1)
            if finished
            else None,
        }
    finally:
        for r in replicas:
            r.stop()


def holder_killed(root: Path, args) -> dict:
    """A worker SIGKILLed mid-job: who finishes, how many compressions, how long it took."""
    store = root / "store"
    env = _env(str(store), args.profile, SLIMSERVE_LEASE_TTL_S="10")
    first = FleetWorker(root / "worker-1", args.model, **env).start()
    serving = second = None
    try:
        first.wait_for_line("compressing for the fleet", timeout=300)
        serving = SlimServer(root / "serving", args.model, SLIMSERVE_JOBS="false", **env).start()
        second = FleetWorker(root / "worker-2", args.model, **env).start(once=True)
        time.sleep(args.kill_after)
        killed = time.time()
        first.kill()
        assert not list(store.glob("variants/*/manifest.json")), "finished before the kill"
        code = second.wait(timeout=900)
        adopted = _until(lambda: _active(serving, args.model) != "original", 120, "adoption")
        log = second.tail(1 << 20)
        return {
            "lease_ttl_s": 10,
            "killed_after_s": args.kill_after,
            "compressions_started": 1 + log.count("compressing for the fleet"),
            "second_worker_exit": code,
            "taken_over": "lease taken_over" in log,
            "serving_replica_jobs": len(_jobs(serving)),
            "variant_served_after_kill_s": round(adopted - killed, 1),
        }
    finally:
        for proc in (first, second, serving):
            if proc is not None:
                proc.stop()


def _pinned(cores: set[int]):
    """Start children on ``cores`` (they inherit this process's affinity), then restore."""

    class Pin:
        def __enter__(self):
            self.saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, cores)

        def __exit__(self, *exc):
            os.sched_setaffinity(0, self.saved)

    return Pin()


def serving_during(root: Path, args) -> dict:
    """p50/p99 of one replica: idle, compressing in the replica, a worker compressing."""
    if len(os.sched_getaffinity(0)) < 2:
        return {"skipped": "needs two cores (server on one, worker and client on the other)"}
    store = root / "store"
    base = {"SLIMSERVE_SHADOW_FRACTION": "0", "SLIMSERVE_CANARY": "false", "SLIMSERVE_THREADS": "1"}
    with _pinned({0}):
        server = SlimServer(root / "server", args.model, **base).start()
    rows = []
    try:
        target = targets(server, 1)[args.model]
        wait_for(target)
        os.sched_setaffinity(0, {1})  # the client, on the other core in every phase

        def phase(name: str, start=None, running=None) -> None:
            started = start() if start else None
            run = run_load(target, 8, args.load_seconds, 2.0)
            summary = run.summary()
            summary["compressing_at_end"] = bool(running and running(started))
            rows.append({"phase": name, **summary})
            print(name, summary, flush=True)

        def in_pod():
            r = server.admin(
                "POST", f"/models/{args.model}/compress", json={"profile": args.profile}
            )
            return r.json()["job"]

        def job_running(job_id):
            state = server.admin("GET", f"/jobs/{job_id}").json()["state"]
            return state in ("queued", "running")

        def worker():
            with _pinned({1}):
                w = FleetWorker(
                    root / f"worker-{len(rows)}", args.model,
                    **_env(str(store / str(len(rows))), args.profile),
                ).start()  # fmt: skip
            w.wait_for_line("compressing for the fleet", timeout=300)
            return w

        def worker_running(w):
            running = w.proc.poll() is None and "published to" not in w.tail(1 << 20)
            w.stop()
            return running

        for _ in range(args.rounds):
            phase("idle")
            phase("compressing in the replica", in_pod, job_running)
            _until(lambda: not any(j["state"] == "running" for j in _jobs(server)), 900, "job")
            phase("a worker compressing elsewhere", worker, worker_running)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        server.stop()
    return {"rows": rows, "concurrency": 8, "seconds": args.load_seconds}


def run(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="slimserve-fleet-bench-"))
    result = {
        "machine": common.machine(),
        "date": common.stamp(),
        "args": {k: v for k, v in vars(args).items() if k != "readme"},
    }
    starts = [start_together(root / "dir", str(root / "dir" / "store"), args, {})]
    with S3Server(root / "s3").start() as s3:
        starts.append(start_together(root / "s3-fleet", s3.url_for("fleet"), args, s3.env()))
    result["start_together"] = starts
    print(json.dumps(starts, indent=2), flush=True)
    result["holder_killed"] = holder_killed(root / "killed", args)
    print(json.dumps(result["holder_killed"], indent=2), flush=True)
    result["serving_during"] = serving_during(root / "serving", args)
    return result


def markdown(result: dict, command: str) -> str:
    a = result["args"]
    lines = [
        f"Measured {result['date']} on {common.describe_machine(result['machine'])} "
        f"(`{command}`): {a['model']}, profile {a['profile']}; every replica and worker a real "
        "process on this machine; S3 is SeaweedFS on localhost.",
        "",
    ]
    header = ["store", "replicas", "compressions", "job (s)", "all serving after launch (s)",
              "last adoption after the job ended (s)"]  # fmt: skip
    rows = [
        [s["store"], s["replicas"], s["compressions"], common.fmt(s["job_seconds"], 1),
         common.fmt(s["all_serving_after_launch_s"], 1),
         common.fmt(s["last_adoption_after_job_s"], 1)]
        for s in result["start_together"]
    ]  # fmt: skip
    lines += common.table(header, rows)
    k = result["holder_killed"]
    lines += [
        "",
        f"Lease holder SIGKILLed {k['killed_after_s']} s into its job (lease ttl "
        f"{k['lease_ttl_s']} s): {k['compressions_started']} compressions started in all, the "
        f"second worker {'took the lease over' if k['taken_over'] else 'did not take over'} and "
        f"exited {k['second_worker_exit']}; the serving replica (jobs off, "
        f"{k['serving_replica_jobs']} jobs) served the variant "
        f"{k['variant_served_after_kill_s']} s after the kill.",
        "",
    ]
    s = result["serving_during"]
    if "rows" in s:
        lines.append(
            f"One replica serving {a['model']} (core 0) to {s['concurrency']} closed-loop clients "
            f"(core 1), {s['seconds']} s per phase; the worker runs on core 1:"
        )
        lines.append("")
        header = ["phase", "req/s", "p50 (ms)", "p99 (ms)", "failed", "compression ran through"]
        lines += common.table(
            header,
            [[r["phase"], common.fmt(r["throughput_rps"], 0), common.fmt(r["p50_ms"], 2),
              common.fmt(r["p99_ms"], 2), r["failed"], r["compressing_at_end"]]
             for r in s["rows"]],
        )  # fmt: skip
    else:
        lines.append(f"Serving during a compression: {s['skipped']}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="digits-cnn")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--kill-after", type=float, default=4.0)
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--readme", action="store_true", help="update the README block")
    args = parser.parse_args(argv)
    result = run(args)
    command = "python -m benchmarks.fleet " + " ".join(argv or sys.argv[1:])
    table = markdown(result, command.strip())
    common.finish(NAME, result, table, readme=table if args.readme else None)


if __name__ == "__main__":
    main()
