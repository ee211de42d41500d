"""Issue 28: a fleet compresses once per (model, profile, hardware), on real processes.

Real ``slimserve serve`` replicas and ``slimserve worker`` processes share a store: a real S3
server (SeaweedFS on localhost) or a directory. Three replicas starting together run exactly
one compression and all serve its variant; a worker SIGKILLed while holding the lease is
replaced once the lease expires, and serving replicas with jobs off never compress; a flipped
byte in the store is refused, counted on ``/metrics``, and the original keeps serving.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from service.launch import FleetWorker, SlimServer, metric_value, start_all

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "digits-mlp"
ROW = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]}


def _fleet_env(store: str, profiles: Path, **extra: str) -> dict[str, str]:
    return {
        "SLIMSERVE_VARIANT_CACHE": store,
        "SLIMSERVE_AUTO_COMPRESS": "true",
        "SLIMSERVE_CANARY": "false",
        "SLIMSERVE_PROFILE": "fast",
        "SLIMSERVE_PROFILES_DIR": str(profiles),
        "SLIMSERVE_FLEET_POLL_S": "1",
        **extra,
    }


def _active(server: SlimServer) -> str:
    models = server.admin("GET", "/models", check=True).json()["models"]
    return next(m["active_variant"] for m in models if m["name"] == MODEL)


def _wait_serving_variant(servers: list[SlimServer], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_active(s) == "original" for s in servers):
        if time.monotonic() > deadline:
            states = [(_active(s), s.tail(1500)) for s in servers]
            raise TimeoutError(f"not every replica serves a variant: {states}")
        time.sleep(0.5)


def _jobs(server: SlimServer) -> list[dict]:
    return server.admin("GET", "/jobs", check=True).json()["jobs"]


def _answer(server: SlimServer) -> tuple[str, list[float]]:
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=ROW, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["x-slimserve-variant"], r.json()["outputs"][0]["data"]


def _lease_events(server: SlimServer, event: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return metric_value(text, "slimserve_fleet_lease_events_total", model=MODEL, event=event)


def test_three_replicas_starting_together_on_s3_compress_once_and_all_serve_it(
    tmp_path, s3_server, fast_profiles_dir
):
    s3 = s3_server
    env = _fleet_env(s3.url_for("fleet"), fast_profiles_dir, **s3.env())
    replicas = [SlimServer(tmp_path / f"replica-{i}", MODEL, **env) for i in range(3)]
    start_all(replicas)  # together, as a rollout starts them
    try:
        _wait_serving_variant(replicas, timeout=300)
        jobs = [_jobs(r) for r in replicas]
        assert sum(len(j) for j in jobs) == 1, jobs  # one compression across the fleet
        holder = next(r for r, j in zip(replicas, jobs, strict=True) if j)
        assert _lease_events(holder, "acquired") == 1
        answers = [_answer(r) for r in replicas]
        assert all(variant != "original" for variant, _ in answers)
        assert all(out == answers[0][1] for _, out in answers)  # the same variant everywhere
        for r in replicas:
            if r is not holder:
                assert _lease_events(r, "adopted") == 1
    finally:
        for r in replicas:
            r.stop()


def test_a_killed_lease_holder_is_replaced_and_jobs_off_replicas_never_compress(
    tmp_path, fast_profiles_dir
):
    store = tmp_path / "store"
    env = _fleet_env(str(store), fast_profiles_dir, SLIMSERVE_LEASE_TTL_S="5")
    first = FleetWorker(tmp_path / "worker-1", MODEL, **env).start()
    serving = corrupt = None
    try:
        first.wait_for_line("compressing for the fleet", timeout=180)
        text = httpx.get(f"http://{first.address}/metrics", timeout=10).text  # the worker's own
        assert (
            metric_value(text, "slimserve_fleet_lease_events_total", model=MODEL, event="acquired")
            == 1
        )
        first.kill()  # SIGKILL mid-job: its lease stays behind until it expires
        leases = list(store.glob("leases/*/*.json"))
        assert len(leases) == 1 and not list(store.glob("variants/*/manifest.json"))
        serving = SlimServer(tmp_path / "serving", MODEL, SLIMSERVE_JOBS="false", **env).start()
        second = FleetWorker(tmp_path / "worker-2", MODEL, **env).start(once=True)
        assert second.wait(timeout=300) == 0, second.tail()
        assert "lease taken_over (generation 2)" in second.tail(1 << 20)
        _wait_serving_variant([serving], timeout=30)
        assert _jobs(serving) == []  # its cores served only
        assert _lease_events(serving, "adopted") == 1

        # A flipped byte in the store: refused, counted once, the original serves.
        manifest = next(store.glob("variants/*/manifest.json"))
        version = json.loads(manifest.read_text())["version"]
        weights = manifest.parent / version / "weights.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
        corrupt = SlimServer(tmp_path / "late", MODEL, SLIMSERVE_JOBS="false", **env).start()
        time.sleep(3)  # three polls of the store: still counted once
        text = httpx.get(f"{corrupt.url}/metrics", timeout=10).text
        refused = metric_value(
            text, "slimserve_store_refusals_total", model=MODEL, reason="cache_corrupted"
        )
        assert refused == 1
        assert _answer(corrupt)[0] == "original" and _jobs(corrupt) == []
        assert _answer(serving)[0] != "original"  # what was adopted before keeps serving
    finally:
        for proc in (first, serving, corrupt):
            if proc is not None:
                proc.stop()
