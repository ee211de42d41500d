"""The service core: models, variants, jobs and metrics wired together, with no web framework.

The BentoML class in ``service/serving/app.py`` only decodes, calls this, encodes and maps errors.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from compression.errors import CompressionError, VariantError
from compression.variant import load_variant
from service.models.sources import ModelBundle, resolve
from service.serving import metrics
from service.serving.adapters import adapter_for
from service.serving.jobs import Job, JobRunner
from service.serving.livedata import write_live_calibration
from service.serving.registry import ORIGINAL, Registry
from service.serving.runtime import Active, Overloaded, Reservoir, Runtime
from service.serving.settings import Settings

log = logging.getLogger("slimserve")


class UnknownModel(KeyError):
    """No model of that name is served (HTTP 404)."""


def resolve_profile(spec: str, profiles_dir: Path | None) -> tuple[str, str | None]:
    """(profile name, YAML path or None) for auto, a built-in name, a name in profiles_dir or a path."""
    from compression.profiles import PROFILES, get_profile

    if spec == "auto":
        spec = "gpu" if torch.cuda.is_available() else "cpu"
    if profiles_dir is not None and (Path(profiles_dir) / f"{spec}.yaml").is_file():
        path = str(Path(profiles_dir) / f"{spec}.yaml")
        return get_profile(path).name, path
    if spec in PROFILES:
        return spec, None
    profile = get_profile(spec)  # a YAML path; raises ProfileError when invalid
    return profile.name, spec


# A model whose forward costs less than this per sample (one thread, a full batch) is lighter
# than the HTTP work of its requests: it gets one torch thread and leaves the rest to the loop.
LIGHT_MODEL_MS_PER_SAMPLE = 0.5
# Compressed variants kept loaded per model (besides the original, always loaded).
RESIDENT_VARIANTS = 2


def available_cores() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores or 1, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores or 1)


class Core:
    """Everything the HTTP layer calls."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.thread_budget = settings.threads or max(1, available_cores() // settings.workers)
        torch.set_num_threads(self.thread_budget)
        self.profile, self.profile_path = resolve_profile(settings.profile, settings.profiles_dir)
        self.registry = Registry(settings.home)
        self.runtime = Runtime(settings.max_batch_size, settings.max_wait_ms, settings.queue_size)
        self.bundles: dict[str, ModelBundle] = {}
        self.originals: dict[str, torch.nn.Module] = {}
        self._mtimes: dict[str, float] = {}
        # Variants that served recently stay loaded: rollback and re-activation are one swap.
        self._resident: OrderedDict[tuple[str, str], Active] = OrderedDict()
        # Held across a swap and its pointer write, so the follower never sees one without the other.
        self._activate_lock = threading.RLock()
        for source in settings.models:
            self._load_model(source)
        self.leader = self._become_leader()
        self.jobs = JobRunner(settings.home / "jobs", self._job_done, settings.job_threads)
        if settings.auto_compress and self.leader:
            for name in self.bundles:
                self._auto_compress(name)
        threading.Thread(target=self._follow_pointers, name="pointers", daemon=True).start()
        # Models hold millions of long-lived objects; without this every full collection walks
        # them all and stalls every request in flight (~300 ms every ~2.5 s under load, measured
        # by benchmarks/load_test). Freeze what start-up built and collect young objects rarely.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 50, 1_000)
        self.ready = True

    # ---- start-up ----------------------------------------------------------------------------

    def _load_model(self, source: str) -> None:
        bundle = resolve(source)
        name = bundle.name
        module = bundle.factory().eval()
        self.bundles[name], self.originals[name] = bundle, module
        self.registry.ensure_original(name, source)
        live = self.settings.calibration == "live" or not bundle.calibration
        reservoir = Reservoir(self.settings.reservoir_size) if live else None
        adapter = adapter_for(bundle, module)
        original = Active(ORIGINAL, "none", module)
        threads = self._forward_threads(name, adapter, original)
        self.runtime.add(name, adapter, original, reservoir, threads)
        metrics.record_swap(name, None, (ORIGINAL, "none"), "start")
        wanted = self.registry.active(name)
        self._mtimes[name] = self.registry.pointer_mtime(name)
        if wanted != ORIGINAL:
            try:
                self._swap_to(name, wanted, reason="restore")
            except (VariantError, KeyError) as err:
                log.error(
                    "model %s: active variant %s refused (%s); serving the original",
                    name,
                    wanted,
                    err,
                )
                metrics.series().refused.labels(name).inc()

    def _forward_threads(self, name: str, adapter, original: Active) -> int:
        """Torch threads for this model's forwards: all cores only where compute dominates.

        The worker's event loop needs a core of its own for HTTP: at ~0.35 ms of CPU per
        request (digits-cnn, 2 cores, 2700 req/s) a light model's forward costs less than its
        requests do, and a second torch thread only takes that core from the loop. Measured
        with benchmarks/loadgen.py (tritonclient, 8 s per cell, this 2-core machine):
        digits-cnn at 1 thread 970/1320/2400 req/s at concurrency 1/8/32 vs 590/1020/2400 at
        2; minilm at 2 threads 285 req/s vs 172 at 1 (c=32).
        """
        cores = self.thread_budget
        if cores == 1:
            return 1
        n = self.settings.max_batch_size
        rows = [adapter.probe_rows(n)]
        Runtime._forward(adapter, original, rows, threads=1)  # warm-up
        times = []
        for _ in range(3):
            start = time.perf_counter()
            Runtime._forward(adapter, original, rows, threads=1)
            times.append(time.perf_counter() - start)
        per_sample_ms = sorted(times)[1] * 1000 / n
        threads = 1 if per_sample_ms < LIGHT_MODEL_MS_PER_SAMPLE else cores
        log.info(
            "model %s: %.3f ms per sample at 1 thread -> %d torch threads",
            name,
            per_sample_ms,
            threads,
        )
        return threads

    def _become_leader(self) -> bool:
        """One worker per home runs the background jobs (a lock held for the process's life)."""
        self._leader_file = open(self.settings.home / "jobs.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(self._leader_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _auto_compress(self, name: str) -> None:
        served = self.runtime.models[name]
        if served.reservoir is None:
            self.compress(name, self.profile)
            return

        def wait_for_traffic() -> None:
            while len(served.reservoir.items) < self.settings.live_min_samples:
                time.sleep(1.0)
            self.compress(name, self.profile)

        threading.Thread(target=wait_for_traffic, name=f"live-{name}", daemon=True).start()

    # ---- inference ---------------------------------------------------------------------------

    def served(self, name: str):
        try:
            return self.runtime.models[name]
        except KeyError:
            raise UnknownModel(
                f"unknown model {name!r}: this server serves {sorted(self.runtime.models)}"
            ) from None

    async def infer(self, name: str, rows: np.ndarray) -> tuple[np.ndarray, Active]:
        """Batched inference with latency and outcome metrics."""
        served = self.served(name)
        s = metrics.series()
        start = time.perf_counter()
        s.inflight.labels(name).inc()
        try:
            out, active = await self.runtime.infer(name, rows)
        except Overloaded:
            s.requests.labels(name, served.active.variant, "overloaded").inc()
            raise
        except Exception:
            s.requests.labels(name, served.active.variant, "error").inc()
            raise
        finally:
            s.inflight.labels(name).dec()
        s.latency.labels(name, active.variant, active.profile).observe(time.perf_counter() - start)
        s.requests.labels(name, active.variant, "ok").inc()
        return out, active

    def count_client_error(self, name: str) -> None:
        served = self.runtime.models.get(name)
        variant = served.active.variant if served else "none"
        label = name if served else "unknown"
        metrics.series().requests.labels(label, variant, "client_error").inc()

    # ---- variants ----------------------------------------------------------------------------

    def _load(self, name: str, vid: str) -> Active:
        """The variant ready to serve: from memory if it served recently, else from the store."""
        if vid == ORIGINAL:
            return Active(ORIGINAL, "none", self.originals[name])
        key = (name, vid)
        if key in self._resident:
            self._resident.move_to_end(key)
            return self._resident[key]
        path = self.registry.variant_path(name, vid)
        variant = load_variant(path, model=self.bundles[name].factory())
        report = variant.report.to_dict()
        active = Active(vid, report["profile"], variant.module.eval(), report)
        self._resident[key] = active
        mine = [k for k in self._resident if k[0] == name]
        for old in mine[: max(0, len(mine) - RESIDENT_VARIANTS)]:
            del self._resident[old]
        return active

    def _swap_to(self, name: str, vid: str, reason: str) -> Active:
        with self._activate_lock:
            active = self._load(name, vid)
            old = self.runtime.swap(name, active)
        if active.report:
            metrics.record_variant(name, vid, active.profile, active.report)
            metrics.record_variant(name, ORIGINAL, "none", _original_figures(active.report))
        metrics.record_swap(name, (old.variant, old.profile), (vid, active.profile), reason)
        return old

    def activate(self, name: str, vid: str, reason: str = "manual") -> dict:
        """Serve ``vid`` (after its checksum passes) and record it as active."""
        self.served(name)
        with self._activate_lock:
            try:
                self._swap_to(name, vid, reason)
            except VariantError:
                metrics.series().refused.labels(name).inc()
                raise
            self.registry.set_active(name, vid)
            self._mtimes[name] = self.registry.pointer_mtime(name)
        return {"model": name, "active_variant": vid}

    def rollback(self, name: str) -> dict:
        """Back to the variant active before the last swap."""
        self.served(name)
        with self._activate_lock:
            previous = self.registry.pop_previous(name)
            if previous is None:
                raise LookupError(f"model {name!r} has no earlier variant to roll back to")
            self._swap_to(name, previous, "rollback")
            self._mtimes[name] = self.registry.pointer_mtime(name)
        return {"model": name, "active_variant": previous}

    def _follow_pointers(self) -> None:
        """Other workers may swap: follow the registry's active pointers."""
        while True:
            time.sleep(self.settings.poll_s)
            for name, served in list(self.runtime.models.items()):
                with self._activate_lock:
                    self._follow(name, served)

    def _follow(self, name: str, served) -> None:
        mtime = self.registry.pointer_mtime(name)
        if mtime == self._mtimes.get(name):
            return
        self._mtimes[name] = mtime
        wanted = self.registry.active(name)
        if wanted != served.active.variant:
            try:
                self._swap_to(name, wanted, "sync")
            except Exception as err:
                log.error("model %s: cannot follow pointer to %s: %s", name, wanted, err)
                metrics.series().refused.labels(name).inc()

    # ---- jobs --------------------------------------------------------------------------------

    def compress(self, name: str, profile: str | None = None) -> Job:
        """Queue a compression job for ``name`` (202 in the admin API)."""
        self.served(name)
        profile_name, path = resolve_profile(profile or self.profile, self.settings.profiles_dir)
        from compression.profiles import get_profile

        limit = self.settings.job_timeout_s or get_profile(path or profile_name).time_limit_s
        live = None
        reservoir = self.runtime.models[name].reservoir
        if reservoir is not None:
            rows = reservoir.snapshot()
            if len(rows) < 8:
                raise CompressionError(
                    f"model {name!r} calibrates on live traffic and has {len(rows)} samples; "
                    "send at least 8 requests first"
                )
            live = write_live_calibration(rows, self.settings.home / "live" / name)
        return self.jobs.submit(name, self.bundles[name].source, profile_name, path, limit, live)

    def _job_done(self, job: Job, out: Path | None) -> None:
        s = metrics.series()
        outcome = job.outcome or job.state
        try:
            if out is not None and job.report is not None:
                job.variant = self.registry.add_variant(job.model, out, job.profile)
                if job.report["accepted"]:
                    self.activate(job.model, job.variant, reason="compression")
        except Exception:
            outcome = "failed"
            raise
        finally:
            s.jobs.labels(job.profile, outcome).inc()
            if job.seconds is not None:
                s.compression_seconds.labels(job.model, job.profile).observe(job.seconds)

    # ---- admin views -------------------------------------------------------------------------

    def models(self) -> list[dict]:
        return [
            {
                "name": n,
                "active_variant": s.active.variant,
                "profile": s.active.profile,
                "threads": s.threads,
            }
            for n, s in self.runtime.models.items()
        ]


def _original_figures(report: dict) -> dict:
    """The original's figures, as measured by a compression report."""
    return {
        "metric": report["metric"],
        "metric_after": report["metric_before"],
        "budget": report.get("budget", 0.0),
        "speedup": 1.0,
        "params_after": report["params_before"],
        "macs_after": report["macs_before"],
    }
