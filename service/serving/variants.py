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
from collections.abc import Callable
from pathlib import Path

from compression.core.errors import CompressionError, ProfileError, VariantError
from compression.output.variant import load_variant
from service.serving import metrics
from service.serving.dataplane import DataPlane
from service.serving.errors import (
    BadRequest,
    Conflict,
    ServiceError,
    StoreUnavailable,
    VariantRefused,
)
from service.serving.jobs import Job, JobRunner
from service.serving.livedata import write_live_calibration
from service.serving.profiles import resolve_profile
from service.serving.registry import ORIGINAL, Registry, check_variant_id
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
        self.registry.min_free_bytes = settings.min_free_bytes
        self.jobs = jobs
        self.profile, self.profile_path = resolve_profile(settings.profile, settings.profiles_dir)
        self._mtimes: dict[str, float] = {}
        self._resident: OrderedDict[tuple[str, str], Active] = OrderedDict()
        # Held across a swap and its pointer write, so the follower never sees one without the other.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        # The live loop's hooks (service/serving/liveloop.py): an accepted job's variant goes
        # to it (canary) instead of serving at once; at start it may serve a cached variant.
        self.on_accepted: Callable[[str, str], None] | None = None
        self.on_start: Callable[[str], bool] | None = None
        self.jobs_enabled = True  # this worker runs jobs (the leader of its home)

    # ---- life cycle --------------------------------------------------------------------------

    def restore(self, name: str) -> None:
        """At start-up: serve the variant the pointer names; if it is refused (checksum, files,
        an alias or id the registry never issued), the last good one before it on the rollback
        stack, else the original, and repair the pointer to name what serves."""
        self._mtimes[name] = self.registry.pointer_mtime(name)
        data = self.registry.pointer(name)
        wanted = data["variant"]
        if wanted == ORIGINAL and not data.get("invalid"):
            return
        refused = {wanted}
        candidates = [] if data.get("invalid") else [wanted]
        serving = ORIGINAL
        for vid in [*candidates, *reversed(data["history"])]:
            if vid == ORIGINAL:
                break
            try:
                self._swap_to(name, vid, reason="restore")
                serving = vid
                break
            except (ServiceError, CompressionError) as err:  # refused, deleted, unreadable
                if not isinstance(err, VariantRefused):  # VariantRefused is counted at load
                    metrics.series().refused.labels(name).inc()
                log.error("model %s: variant %s refused at start-up: %s", name, vid, err)
                refused.add(vid)
        if serving == wanted:
            return
        if data.get("invalid"):
            metrics.series().refused.labels(name).inc()
        log.error(
            "model %s: pointer named %r; serving %s and repairing the pointer",
            name,
            wanted,
            serving,
        )
        try:
            self.registry.repair(name, serving, refused)
        except OSError as err:  # a read-only or full store: serve, repair at a later start
            log.warning("model %s: cannot repair the pointer: %s", name, err)
        self._mtimes[name] = self.registry.pointer_mtime(name)

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

    def load(self, name: str, vid: str) -> Active:
        """The variant ready to serve (or to run in shadow), checked and resident."""
        with self._lock:
            return self._load(name, vid)

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
            served = self.plane.runtime.models.get(name)
            threads = served.threads if served is not None else None  # torch's budget, for ORT
            variant = load_variant(path, model=self.plane.bundles[name].factory(), threads=threads)
        except VariantError as err:
            metrics.series().refused.labels(name).inc()
            # No server path to a client: "weights.safetensors: checksum ... does not match".
            reason = str(err).replace(f"{path}/", "").replace(str(path), "its directory")
            raise VariantRefused(f"variant {vid!r} of {name!r} refused: {reason}") from None
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

    def activate(self, name: str, vid: str, reason: str = "manual", pinned: bool = False) -> dict:
        """Serve ``vid`` (after its checksum passes), then record it as active.

        Transactional: if the pointer cannot be written, the variant served before comes back
        and :class:`StoreUnavailable` says so. ``pinned``: an operator's choice (admin API),
        which a restart respects.
        """
        self.plane.served(name)
        check_variant_id(vid)
        with self._lock:
            old = self._swap_to(name, vid, reason)
            try:
                self.registry.set_active(name, vid, pinned=pinned)
            except OSError as err:
                self._undo_swap(name, old)
                raise StoreUnavailable(
                    f"cannot record {vid!r} as {name!r}'s active variant ({err.strerror}); "
                    f"{old.variant!r} still serves"
                ) from None
            self._mtimes[name] = self.registry.pointer_mtime(name)
        return {"model": name, "active_variant": vid}

    def rollback(self, name: str, pinned: bool = True) -> dict:
        """Back to the variant active before the last swap; the pointer moves only on success.

        If the earlier variant is refused (checksum, files) or the pointer cannot be written,
        what served before keeps serving and the pointer and its history are unchanged.
        """
        self.plane.served(name)
        with self._lock:
            previous = self.registry.previous(name)
            if previous is None:
                raise Conflict(f"model {name!r} has no earlier variant to roll back to")
            old = self._swap_to(name, previous, "rollback")
            try:
                self.registry.pop_previous(name, pinned=pinned)
            except OSError as err:
                self._undo_swap(name, old)
                raise StoreUnavailable(
                    f"cannot record the rollback of {name!r} ({err.strerror}); "
                    f"{old.variant!r} still serves"
                ) from None
            self._mtimes[name] = self.registry.pointer_mtime(name)
        return {"model": name, "active_variant": previous}

    def _undo_swap(self, name: str, old: Active) -> None:
        """Serve ``old`` again (its module is in memory: nothing to load, nothing can fail)."""
        new = self.plane.runtime.swap(name, old)
        metrics.record_swap(name, (new.variant, new.profile), (old.variant, old.profile), "undo")

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

    def calibrates_live(self, name: str) -> bool:
        """Whether ``name``'s jobs calibrate on live traffic (asked for, or no shipped data)."""
        return self.settings.calibration == "live" or not self.plane.bundles[name].calibration

    def compress(
        self,
        name: str,
        profile: str | None = None,
        live: bool = False,
        profile_update: dict | None = None,
        inline: dict | None = None,
        auto: bool = False,
    ) -> Job:
        """Queue a compression job for ``name`` (202 in the admin API).

        ``live``: calibrate on the reservoir of live requests even where the model ships data
        (the closed loop's recompression); ``profile_update``: overrides of the profile.
        ``inline``: a profile sent over HTTP, already validated (``profile`` is then ignored);
        ``auto``: started by the service itself (its result does not override a pinned choice).
        """
        self.plane.served(name)
        from compression.profiles import get_profile, profile_from_dict

        try:
            if inline is not None:
                chosen = profile_from_dict(inline)
                profile_name, path = chosen.name, None
            else:
                profile_name, path = resolve_profile(
                    profile or self.profile, self.settings.profiles_dir
                )
                chosen = get_profile(path or profile_name)
        except ProfileError as err:
            raise BadRequest(str(err)) from None
        limit = min(self.settings.job_timeout_s or chosen.time_limit_s, self.settings.max_job_s)
        # A job writes its variant, then the store copies it: about twice the weights.
        weights = sum(p.numel() * p.element_size() for p in self.plane.originals[name].parameters())
        self.registry.check_space(2 * weights, f"compressing {name!r}")
        live_file = None
        reservoir = self.plane.runtime.models[name].reservoir
        if reservoir is not None and (live or self.calibrates_live(name)):
            rows = reservoir.snapshot()
            if len(rows) < 8:
                raise Conflict(
                    f"model {name!r} calibrates on live traffic and has {len(rows)} samples; "
                    "send at least 8 requests first"
                )
            live_file = write_live_calibration(rows, self.settings.home / "live" / name)
        source = self.plane.bundles[name].source
        return self.jobs.submit(
            name,
            source,
            profile_name,
            path,
            limit,
            live_file,
            profile_update=profile_update,
            profile_inline=inline,
            auto=auto,
        )

    def auto_compress(self, name: str) -> None:
        """Compress at start-up: now, or once enough live traffic has been sampled.

        Not when an operator chose the active variant (a pinned pointer), nor when the store
        already holds a variant accepted for this model and profile (a restart recompresses
        nothing).
        """
        served = self.plane.runtime.models[name]
        if self.registry.pinned(name):
            log.info(
                "model %s: the operator chose %s; no compression at start-up",
                name,
                self.registry.active(name),
            )
            return
        accepted = self.registry.accepted_variant(name, self.profile)
        if accepted is not None:
            log.info(
                "model %s: variant %s is accepted for profile %s; no recompression",
                name,
                accepted,
                self.profile,
            )
            return
        if self.on_start is not None and self.on_start(name):
            return  # served from the shared variant cache: no job
        if served.reservoir is None or not self.calibrates_live(name):
            self.compress(name, self.profile, auto=True)
            return

        def wait_for_traffic() -> None:
            while len(served.reservoir.items) < self.settings.live_min_samples:
                if self._stop.wait(1.0):
                    return
            self.compress(name, self.profile, auto=True)

        threading.Thread(target=wait_for_traffic, name=f"live-{name}", daemon=True).start()

    def job_done(self, job: Job, out: Path | None) -> None:
        """Store a finished job's variant; activate it when it was accepted."""
        s = metrics.series()
        outcome = job.outcome or job.state
        try:
            if out is not None and job.report is not None:
                job.variant = self.registry.add_variant(job.model, out, job.profile)
                self._retain(job.model)
                if job.report["accepted"] and job.auto and self.registry.pinned(job.model):
                    log.info(
                        "model %s: variant %s accepted, not activated: the operator chose %s",
                        job.model,
                        job.variant,
                        self.registry.active(job.model),
                    )
                elif job.report["accepted"] and self.on_accepted is not None:
                    self.on_accepted(job.model, job.variant)
                elif job.report["accepted"]:
                    self.activate(job.model, job.variant, reason="compression")
        except Exception:
            outcome = "failed"
            raise
        finally:
            s.jobs.labels(job.profile, outcome).inc()
            if job.seconds is not None:
                s.compression_seconds.labels(job.model, job.profile).observe(job.seconds)

    def _retain(self, name: str) -> None:
        """Keep at most ``max_variants`` stored variants of ``name`` (never the active one or
        the one a rollback returns to); deleted ones leave memory too."""
        try:
            deleted = self.registry.prune(name, self.settings.max_variants)
        except Exception as err:  # retention must never fail a job
            log.warning("model %s: cannot delete old variants: %s", name, err)
            return
        with self._lock:
            for vid in deleted:
                self._resident.pop((name, vid), None)


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
