"""The variant manager: the swaps of :mod:`service.serving.swaps`, plus compression jobs.

Queues compression jobs (a profile by name, configured or sent inline; calibration on live
traffic where asked for or where the model ships no data), compresses at start-up unless an
operator's choice or an accepted variant says otherwise, and takes a finished job's result:
stored, old variants retained within the limit, activated (or handed to the live loop as a
canary) when accepted. Nothing here imports a web framework.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from compression.core.errors import ProfileError, VariantError
from compression.output.checks import verify_files
from compression.profiles import get_profile, profile_from_dict
from service.serving import metrics
from service.serving.dataplane import DataPlane
from service.serving.errors import BadRequest, Conflict, ServiceError, StoreUnavailable
from service.serving.jobs import Job, JobRunner
from service.serving.livedata import write_live_calibration
from service.serving.profiles import resolve_profile
from service.serving.registry import Registry
from service.serving.settings import Settings
from service.serving.swaps import VariantSwaps, refuse, store_reason

log = logging.getLogger("slimserve")


class VariantManager(VariantSwaps):
    """Activate, roll back and follow variants; turn finished jobs into variants."""

    def __init__(
        self, settings: Settings, plane: DataPlane, registry: Registry, jobs: JobRunner
    ) -> None:
        super().__init__(settings, plane, registry)
        self.registry.min_free_bytes = settings.min_free_bytes
        self.jobs = jobs
        self.profile, self.profile_path = resolve_profile(settings.profile, settings.profiles_dir)
        # The live loop's hooks (service/serving/liveloop.py): an accepted job's variant goes
        # to it (canary) instead of serving at once; at start it may serve a cached variant.
        self.on_accepted: Callable[[str, str], None] | None = None
        self.on_start: Callable[[str], bool] | None = None
        # The fleet's hook (service/serving/fleet.py): a finished job's outcome for the lease.
        self.on_finished: Callable[[Job], None] | None = None
        # ... and a start-up job this replica could not start (its own store full or read-only).
        self.on_not_started: Callable[[str, str], None] | None = None
        self.jobs_enabled = True  # this worker runs jobs (the leader of its home)

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
        already holds a variant accepted for this model and profile whose files pass their
        checks (a restart recompresses nothing). A store that cannot take a variant (full, or
        under ``SLIMSERVE_MIN_FREE_BYTES`` free) skips it: one log line, one count, the
        originals serve.
        """
        served = self.plane.runtime.models[name]
        if self.registry.pinned(name):
            log.info(
                "model %s: the operator chose %s; no compression at start-up",
                name,
                self.registry.active(name),
            )
            return
        accepted = self._intact_accepted(name)
        if accepted is not None:
            log.info(
                "model %s: variant %s is accepted for profile %s; no recompression",
                name,
                accepted,
                self.profile,
            )
            return
        try:
            if self.on_start is not None and self.on_start(name):
                return  # the fleet answers: a variant adopted, or another replica compresses
            if not self.jobs_enabled:
                return
            if served.reservoir is None or not self.calibrates_live(name):
                self.compress(name, self.profile, auto=True)
                return
        except StoreUnavailable as err:
            refuse(name, store_reason(err), f"no compression at start-up: {err}")
            if self.on_not_started is not None:
                self.on_not_started(name, str(err))
            return

        def wait_for_traffic() -> None:
            while len(served.reservoir.items) < self.settings.live_min_samples:
                if self._stop.wait(1.0):
                    return
            try:
                self.compress(name, self.profile, auto=True)
            except StoreUnavailable as err:
                refuse(name, store_reason(err), f"no compression on live traffic: {err}")
                if self.on_not_started is not None:
                    self.on_not_started(name, str(err))

        threading.Thread(target=wait_for_traffic, name=f"live-{name}", daemon=True).start()

    def _intact_accepted(self, name: str) -> str | None:
        """The newest variant accepted for the service's profile whose files pass their checks
        (a corrupted one is counted and passed over: it would never serve)."""
        for vid in self.registry.accepted_variants(name, self.profile):
            try:
                verify_files(self.registry.variant_path(name, vid))
                return vid
            except (VariantError, ServiceError) as err:
                refuse(name, "variant_corrupted", f"accepted variant {vid} passed over: {err}")
        return None

    def job_done(self, job: Job, out: Path | None) -> None:
        """Store a finished job's variant; activate it when it was accepted."""
        s = metrics.series()
        outcome = job.outcome or job.state
        try:
            if out is not None and job.report is not None:
                # An accepted variant is stored only once it loads here.
                verify = self._verifier(job.model, out) if job.report["accepted"] else None
                job.variant = self.registry.add_variant(job.model, out, job.profile, verify)
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
            if self.on_finished is not None:
                self.on_finished(job)

    def _retain(self, name: str) -> None:
        """Keep at most ``max_variants`` stored variants of ``name`` (never the active one or
        the one a rollback returns to); deleted ones leave memory too."""
        try:
            deleted = self.registry.prune(name, self.settings.max_variants)
        except Exception as err:  # retention must never fail a job
            log.warning("model %s: cannot delete old variants: %s", name, err)
            return
        self.forget(name, deleted)
