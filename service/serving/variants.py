"""The variant manager: which variant serves each model, and how that changes.

Loads variants (the two most recent per model stay resident, so rollback and re-activation are
one swap), swaps them into the data plane, writes the active pointer only after a swap
succeeded, rolls back, follows pointers that other workers wrote, queues compression jobs and
takes their results. Nothing here imports a web framework.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path

from compression.errors import CompressionError, ProfileError, VariantError
from compression.variant import load_variant
from service.serving import metrics
from service.serving.dataplane import DataPlane
from service.serving.errors import BadRequest, Conflict, VariantRefused
from service.serving.jobs import Job, JobRunner
from service.serving.livedata import write_live_calibration
from service.serving.profiles import resolve_profile
from service.serving.registry import ORIGINAL, Registry
from service.serving.runtime import Active
from service.serving.settings import Settings

log = logging.getLogger("slimserve")

# Compressed variants kept loaded per model (besides the original, always loaded).
RESIDENT_VARIANTS = 2


class VariantManager:
    """Activate, roll back and follow variants; turn finished jobs into variants."""

    def __init__(
        self, settings: Settings, plane: DataPlane, registry: Registry, jobs: JobRunner
    ) -> None:
        self.settings = settings
        self.plane = plane
        self.registry = registry
        self.jobs = jobs
        self.profile, self.profile_path = resolve_profile(settings.profile, settings.profiles_dir)
        self._mtimes: dict[str, float] = {}
        self._resident: OrderedDict[tuple[str, str], Active] = OrderedDict()
        # Held across a swap and its pointer write, so the follower never sees one without the other.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    # ---- life cycle --------------------------------------------------------------------------

    def restore(self, name: str) -> None:
        """At start-up: serve the variant the pointer names, or keep the original if refused."""
        self._mtimes[name] = self.registry.pointer_mtime(name)
        wanted = self.registry.active(name)
        if wanted == ORIGINAL:
            return
        try:
            self._swap_to(name, wanted, reason="restore")
        except (VariantRefused, CompressionError) as err:
            log.error(
                "model %s: active variant %s refused (%s); serving the original", name, wanted, err
            )
            metrics.series().refused.labels(name).inc()

    def adopt(self, name: str, directory: str) -> str | None:
        """Store a variant shipped with the model (a task directory) once; serve it if accepted.

        Returns its id, or None when the model already has stored variants (a restart).
        """
        if any(v["id"] != ORIGINAL for v in self.registry.variants(name)):
            return None
        report = json.loads((Path(directory) / "report.json").read_text())
        vid = self.registry.add_variant(name, Path(directory), report["profile"])
        if report.get("accepted"):
            self.activate(name, vid, reason="shipped")
        return vid

    def start(self) -> None:
        """Follow the pointers other workers write (a daemon thread until :meth:`close`)."""
        self._follower = threading.Thread(
            target=self._follow_pointers, name="pointers", daemon=True
        )
        self._follower.start()

    def close(self) -> None:
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=self.settings.poll_s + 1)

    # ---- swaps -------------------------------------------------------------------------------

    def _load(self, name: str, vid: str) -> Active:
        """The variant ready to serve: from memory if it served recently, else from the store."""
        if vid == ORIGINAL:
            return Active(ORIGINAL, "none", self.plane.originals[name])
        key = (name, vid)
        if key in self._resident:
            self._resident.move_to_end(key)
            return self._resident[key]
        path = self.registry.variant_path(name, vid)
        try:
            variant = load_variant(path, model=self.plane.bundles[name].factory())
        except VariantError as err:
            metrics.series().refused.labels(name).inc()
            raise VariantRefused(f"variant {vid!r} of {name!r} refused: {err}") from None
        report = variant.report.to_dict()
        active = Active(vid, report["profile"], variant.module.eval(), report)
        self._resident[key] = active
        mine = [k for k in self._resident if k[0] == name]
        for old in mine[: max(0, len(mine) - RESIDENT_VARIANTS)]:
            del self._resident[old]
        return active

    def _swap_to(self, name: str, vid: str, reason: str) -> Active:
        with self._lock:
            active = self._load(name, vid)
            old = self.plane.runtime.swap(name, active)
        if active.report:
            metrics.record_variant(name, vid, active.profile, active.report)
            metrics.record_variant(name, ORIGINAL, "none", _original_figures(active.report))
        metrics.record_swap(name, (old.variant, old.profile), (vid, active.profile), reason)
        return old

    def activate(self, name: str, vid: str, reason: str = "manual") -> dict:
        """Serve ``vid`` (after its checksum passes), then record it as active."""
        self.plane.served(name)
        with self._lock:
            self._swap_to(name, vid, reason)
            self.registry.set_active(name, vid)
            self._mtimes[name] = self.registry.pointer_mtime(name)
        return {"model": name, "active_variant": vid}

    def rollback(self, name: str) -> dict:
        """Back to the variant active before the last swap; the pointer moves only on success."""
        self.plane.served(name)
        with self._lock:
            previous = self.registry.previous(name)
            if previous is None:
                raise Conflict(f"model {name!r} has no earlier variant to roll back to")
            self._swap_to(name, previous, "rollback")
            self.registry.pop_previous(name)
            self._mtimes[name] = self.registry.pointer_mtime(name)
        return {"model": name, "active_variant": previous}

    def _follow_pointers(self) -> None:
        """Other workers may swap: follow the registry's active pointers."""
        while not self._stop.wait(self.settings.poll_s):
            for name, served in list(self.plane.runtime.models.items()):
                with self._lock:
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
            except Exception as err:  # keep following; this worker keeps what it serves
                log.error("model %s: cannot follow pointer to %s: %s", name, wanted, err)
                metrics.series().refused.labels(name).inc()

    def variants(self, name: str) -> list[dict]:
        self.plane.served(name)
        return self.registry.variants(name)

    # ---- jobs --------------------------------------------------------------------------------

    def compress(self, name: str, profile: str | None = None) -> Job:
        """Queue a compression job for ``name`` (202 in the admin API)."""
        self.plane.served(name)
        try:
            profile_name, path = resolve_profile(
                profile or self.profile, self.settings.profiles_dir
            )
        except ProfileError as err:
            raise BadRequest(str(err)) from None
        from compression.profiles import get_profile

        limit = self.settings.job_timeout_s or get_profile(path or profile_name).time_limit_s
        live = None
        reservoir = self.plane.runtime.models[name].reservoir
        if reservoir is not None:
            rows = reservoir.snapshot()
            if len(rows) < 8:
                raise Conflict(
                    f"model {name!r} calibrates on live traffic and has {len(rows)} samples; "
                    "send at least 8 requests first"
                )
            live = write_live_calibration(rows, self.settings.home / "live" / name)
        source = self.plane.bundles[name].source
        return self.jobs.submit(name, source, profile_name, path, limit, live)

    def auto_compress(self, name: str) -> None:
        """Compress at start-up: now, or once enough live traffic has been sampled."""
        served = self.plane.runtime.models[name]
        if served.reservoir is None:
            self.compress(name, self.profile)
            return

        def wait_for_traffic() -> None:
            while len(served.reservoir.items) < self.settings.live_min_samples:
                if self._stop.wait(1.0):
                    return
            self.compress(name, self.profile)

        threading.Thread(target=wait_for_traffic, name=f"live-{name}", daemon=True).start()

    def job_done(self, job: Job, out: Path | None) -> None:
        """Store a finished job's variant; activate it when it was accepted."""
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


def _original_figures(report: dict) -> dict:
    """The original's figures, as measured by a compression report."""
    return {
        "metric": report["metric"],
        "metric_after": report["metric_before"],
        "budget": report.get("budget", 0.0),
        "speedup": 1.0,
        "params_after": report["params_before"],
        "macs_after": report["macs_before"],
        "task_metrics": {"after": (report.get("task_metrics") or {}).get("before")},
    }
