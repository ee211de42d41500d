"""The composition root: builds the data plane, the variant manager and the job runner.

``Core(settings)`` only builds objects; :meth:`Core.start` loads the models and does what
changes the process (torch threads, background threads, the garbage collector's settings), and
:meth:`Core.close` undoes it, so a test that builds one leaves its process as it found it::

    core = Core(Settings(home=tmp, models=["digits-mlp"], auto_compress=False)).start()
    out, active = await core.plane.infer("digits-mlp", rows)
    core.close()

The HTTP app (``service/serving/app.py``) talks to ``core.plane`` for inference and to
``core.variants`` / ``core.jobs`` for the admin API.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
from pathlib import Path

import torch

from service.models import resolve
from service.serving.dataplane import DataPlane
from service.serving.fleet import Fleet
from service.serving.jobs import JobRunner
from service.serving.liveloop import LiveLoop
from service.serving.registry import ORIGINAL, Registry
from service.serving.runtime import Active, Reservoir, Runtime
from service.serving.settings import Settings
from service.serving.shadow import ShadowEvaluator
from service.serving.variants import VariantManager

log = logging.getLogger("slimserve")


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
    """Everything the HTTP layer calls, wired together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.thread_budget = settings.threads or max(1, available_cores() // settings.workers)
        self.registry = Registry(settings.home)
        self.runtime = Runtime(
            settings.max_batch_size,
            settings.max_wait_ms,
            settings.queue_size,
            max_rows=settings.max_rows_per_request,
            device=settings.device,
        )
        self.plane = DataPlane(self.runtime, self.thread_budget, settings.pack_originals)
        self.jobs = JobRunner(
            settings.home / "jobs",
            lambda job, out: self.variants.job_done(job, out),
            settings.job_threads,
        )
        self.variants = VariantManager(settings, self.plane, self.registry, self.jobs)
        self.shadow = ShadowEvaluator(
            settings.shadow_fraction,
            settings.shadow_max_per_second,
            settings.shadow_window,
            settings.shadow_min_samples,
        )
        self.runtime.on_batch = self.shadow.offer
        self.shadow.place = self.runtime.place
        # SLIMSERVE_VARIANT_CACHE: a store shared by the fleet (one compression per key).
        self.fleet = Fleet(settings, self.variants) if settings.variant_cache else None
        self.live = LiveLoop(settings, self.variants, self.shadow, self.fleet)
        self.leader = False
        self.ready = False
        self._leader_file = None
        self._saved_threads: int | None = None

    @property
    def profile(self) -> str:
        return self.variants.profile

    def start(self) -> Core:
        """Load every model (originals serve at once), restore pointers, start background work."""
        self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(self.thread_budget)
        for source in self.settings.models:
            self._add_model(source)
        self.leader = self._become_leader()
        self.variants.jobs_enabled = self.leader and self.settings.jobs
        self.jobs.start()
        self.variants.start()
        if self.fleet is not None:
            self.fleet.start()
        self.shadow.start()
        if self.settings.auto_compress and self.leader:
            for name in self.plane.bundles:
                self.variants.auto_compress(name)
        # Models hold millions of long-lived objects; without this every full collection walks
        # them all and stalls every request in flight (~300 ms every ~2.5 s under load, measured
        # by benchmarks/load_test). Freeze what start-up built and collect young objects rarely.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 50, 1_000)
        self.ready = True
        return self

    def close(self) -> None:
        """Stop background work and give the process back its collector and thread settings."""
        self.ready = False
        self.shadow.close()
        if self.fleet is not None:
            self.fleet.close()
        self.variants.close()
        self.jobs.close()
        if self._leader_file is not None:
            self._leader_file.close()
            self._leader_file = None
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)

    def _add_model(self, source: str) -> None:
        bundle = resolve(source)
        self.registry.ensure_original(bundle.name, source)
        # Every model keeps a reservoir of live inputs: jobs that calibrate on live traffic
        # (asked for, no shipped data, or the live loop's recompression) read it.
        self.plane.add_model(bundle, Reservoir(self.settings.reservoir_size))
        self.shadow.originals[bundle.name] = Active(
            ORIGINAL, "none", self.plane.served_originals[bundle.name]
        )
        self.variants.restore(bundle.name)
        if bundle.extra.get("variant_dir"):  # a task directory ships its compressed variant
            self.variants.adopt(bundle.name, bundle.extra["variant_dir"])

    def variants_view(self, name: str) -> list[dict]:
        """Stored variants of ``name`` with their live figures (shadow evaluation) beside."""
        rows = self.variants.variants(name)
        live = self.live.view(name)
        for row in rows:
            row["live"] = live.get(row["id"])
        return rows

    def _become_leader(self) -> bool:
        """One worker per home runs the background jobs (a lock held for the process's life)."""
        try:
            self._leader_file = open(self.settings.home / "jobs.lock", "a")  # noqa: SIM115
        except OSError as err:  # a read-only home: serve, run no jobs
            log.warning("cannot open the jobs lock (%s): this worker runs no jobs", err.strerror)
            return False
        try:
            fcntl.flock(self._leader_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
