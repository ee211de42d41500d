"""The fleet: one compression per (model content, profile, hardware) across every replica.

Replicas that share ``SLIMSERVE_VARIANT_CACHE`` (a directory or ``s3://bucket/prefix``) find
there, per key (``service.serving.cache``): the published variant, a lease
(``service.serving.lease``) and, where a compression ended without a variant, its outcome.

At start, for each model it would compress, a replica:

1. serves the published variant, once it passes every check (no job);
2. else, where the fleet published an outcome (``outcomes/<key>.json``: the variant was
   rejected, the job failed, live traffic dropped the canary), serves the original and does not
   retry: the fleet does not compress the same key in a loop (an operator's job still runs);
3. else, where it runs jobs and takes the lease, compresses, renewing the lease meanwhile. The
   lease ends with the key's result: the variant published (at once, or once the live canary
   is promoted) or an outcome;
4. else serves the original and waits: every ``SLIMSERVE_FLEET_POLL_S`` it looks for the
   variant (adopted as in 1) or an outcome, and takes the lease over where it expired (its
   holder died) and this replica runs jobs.

``SLIMSERVE_JOBS=false`` makes a serving replica wait only; ``slimserve worker`` is a replica
that serves nothing and compresses for the fleet (``service.cli.worker``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import threading
import time
import uuid
from pathlib import Path

from compression.profiles import get_profile
from service.serving import metrics
from service.serving.cache import CacheRefused, VariantCache, model_digest
from service.serving.jobs import Job
from service.serving.lease import Lease
from service.serving.profiles import resolve_profile
from service.serving.settings import Settings
from service.serving.stores import Store, open_store
from service.serving.swaps import refuse
from service.serving.variants import VariantManager

log = logging.getLogger("slimserve.fleet")
_UNREADABLE = "unreadable manifest"


class Fleet:
    """This replica's part in the fleet: adopt, lease, publish, wait."""

    def __init__(
        self, settings: Settings, manager: VariantManager, store: Store | None = None
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.store = store or open_store(settings.variant_cache)
        secret = settings.cache_key.get_secret_value().encode() if settings.cache_key else None
        self.cache = VariantCache(self.store, secret)
        self.holder = f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.leases: dict[str, Lease] = {}  # model name -> the lease this replica holds
        self.waiting: set[str] = set()  # models whose key's result this replica waits for
        self._digests: dict[str, str] = {}
        self._refused: dict[str, str] = {}  # key -> the entry version refused here (once)
        self._cannot_compress: set[str] = set()  # models whose jobs this replica cannot start
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        manager.on_start = self.start_model
        manager.on_finished = self.finished
        manager.on_not_started = self.not_started

    # ---- keys ------------------------------------------------------------------------------

    def key(self, name: str, profile: str | None = None) -> str:
        """The key of ``name`` under the profile named ``profile`` (default: the service's),
        resolved the way this service resolves profiles: a replica with the same settings
        computes the same key whatever a job adjusted inside its own copy."""
        if name not in self._digests:
            self._digests[name] = model_digest(self.manager.plane.originals[name])
        if profile is None:
            spec = self.manager.profile_path or self.manager.profile
        else:
            resolved, path = resolve_profile(profile, self.settings.profiles_dir)
            spec = path or resolved
        settings = json.loads(json.dumps(get_profile(spec).model_dump(), default=str))
        return VariantCache.key(self._digests[name], settings)

    def _variant_key(self, name: str, vid: str) -> tuple[str, Path]:
        path = self.manager.registry.variant_path(name, vid)
        report = json.loads((path / "report.json").read_text())
        return self.key(name, report["profile"]), path

    # ---- start -----------------------------------------------------------------------------

    def start_model(self, name: str) -> bool:
        """At start: True where the fleet answers for ``name`` (a variant adopted, an outcome
        published, or another replica compressing); False: this replica holds the lease and
        compresses."""
        try:
            if self.serve_cached(name) or self._declined(name):
                return True
            if self._runs_jobs(name) and self._acquire(name):
                return False
        except Exception as err:  # the store unreachable: serve, and look again later
            refuse(name, "cache_unavailable", f"shared store {self.store.url}: {err}")
        self.watch(name)
        return True

    def watch(self, name: str) -> None:
        """Wait for ``name``'s key: adopt its variant, or take its lease once it expires."""
        with self._lock:
            self.waiting.add(name)
        log.info("model %s: waiting for the fleet's variant in %s", name, self.store.url)

    def _runs_jobs(self, name: str) -> bool:
        return (
            self.settings.jobs and self.manager.jobs_enabled and name not in self._cannot_compress
        )

    def not_started(self, name: str, reason: str) -> None:
        """This replica took the lease but could not start the job (its own store is full or
        read-only): the lease goes back at once, for a replica that can; this one adopts only.
        Nothing is published: the key itself did not fail."""
        log.warning("model %s: cannot compress here (%s); the lease goes back", name, reason)
        self._release(name)
        self._cannot_compress.add(name)
        self.watch(name)

    def serve_cached(self, name: str) -> bool:
        """Serve the variant the fleet published for ``name``, once it passes every check."""
        key = self.key(name)
        download = self.settings.home / "fleet" / f"{key}.{uuid.uuid4().hex[:8]}"
        manifest = None
        try:
            try:
                manifest = self.cache.manifest(key)
                if manifest is None or manifest["version"] == self._refused.get(key):
                    return False  # none yet, or the entry refused already (counted once)
                fetched = self.cache.fetch(key, download)
            except CacheRefused as err:
                if self._refused.get(key) == _UNREADABLE:
                    return False
                self._refused[key] = manifest["version"] if manifest else _UNREADABLE
                refuse(name, err.reason, f"shared cache entry refused: {err}")
                return False
            if fetched is None:
                return False
            # Stored only once it loads here; a refusal is logged and counted, and the
            # original keeps serving.
            vid = self.manager.store_verified(name, fetched, "cache", "cache_corrupted")
        finally:
            shutil.rmtree(download, ignore_errors=True)
        if vid is None:
            self._refused[key] = manifest["version"]
            return False
        metrics.series().fleet_leases.labels(name, "adopted").inc()
        log.info("model %s: serving variant %s from the shared cache, no job", name, vid)
        return True

    # ---- outcomes --------------------------------------------------------------------------

    def outcome(self, name: str) -> dict | None:
        """What the fleet published for ``name``'s key where no variant came of it."""
        raw = self.store.read(f"outcomes/{self.key(name)}.json")
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return {"state": "unreadable"}

    def _declined(self, name: str) -> bool:
        outcome = self.outcome(name)
        if outcome is None:
            return False
        metrics.series().fleet_leases.labels(name, "declined").inc()
        log.info(
            "model %s: the fleet compressed it for this hardware and profile without a variant "
            "(%s: %s); the original serves, no job",
            name,
            outcome.get("state"),
            outcome.get("reason", ""),
        )
        return True

    def decline(self, name: str, state: str, reason: str) -> None:
        """Publish that ``name``'s key ended without a variant, and give the lease up."""
        body = {"state": state, "reason": reason, "holder": self.holder, "when": time.time()}
        try:
            self.store.write(f"outcomes/{self.key(name)}.json", json.dumps(body).encode())
            log.info("model %s: published to the fleet: %s (%s)", name, state, reason)
        except Exception as err:
            log.warning("model %s: cannot publish the outcome %s: %s", name, state, err)
        self._release(name)

    # ---- the lease -------------------------------------------------------------------------

    def _acquire(self, name: str) -> bool:
        lease = Lease(self.store, self.key(name), self.holder, self.settings.lease_ttl_s)
        before = lease.current()
        if not lease.acquire():
            return False
        event = "acquired" if before is None or not before[1].get("expires") else "taken_over"
        metrics.series().fleet_leases.labels(name, event).inc()
        log.info("model %s: lease %s (generation %d): compressing for the fleet",
                 name, event, lease.generation)  # fmt: skip
        with self._lock:
            self.leases[name] = lease
        return True

    def _release(self, name: str) -> None:
        with self._lock:
            lease = self.leases.pop(name, None)
        if lease is None:
            return
        try:
            lease.release()
            metrics.series().fleet_leases.labels(name, "released").inc()
        except Exception as err:  # it expires on its own
            log.warning("model %s: cannot release the lease: %s", name, err)

    # ---- results ---------------------------------------------------------------------------

    def publish(self, name: str, vid: str) -> None:
        """Share a variant that serves here (under the profile it was compressed for); a
        lease held for its key ends."""
        try:
            key, path = self._variant_key(name, vid)
            self.cache.put(key, path, replace=True)  # what serves here now
            log.info("model %s: variant %s published to %s", name, vid, self.store.url)
        except Exception as err:  # a full or read-only store never fails serving
            log.warning("model %s: cannot publish variant %s: %s", name, vid, err)
        self._release(name)

    def unpublish(self, name: str, vid: str) -> None:
        """Live traffic rejected ``vid``: no replica starts on it again."""
        try:
            key, path = self._variant_key(name, vid)
            self.cache.remove(key, path)
        except Exception as err:
            log.warning("model %s: cannot remove variant %s from the cache: %s", name, vid, err)

    def finished(self, job: Job) -> None:
        """A job ended here. For the lease's job with no accepted variant, the key's outcome;
        an accepted one ends the lease when it is published (at once, or as a promoted
        canary)."""
        if not job.auto or job.model not in self.leases:
            return
        report = job.report or {}
        if report.get("accepted") and job.variant:
            return
        if job.report is not None:
            reason = str(report.get("reason") or "over budget")
            self.decline(job.model, "rejected", reason)
        else:
            self.decline(job.model, job.outcome or job.state, job.error or job.message)

    def canary_dropped(self, name: str, vid: str) -> None:
        if name in self.leases:
            self.decline(name, "rejected_live", f"canary {vid} under its live budget")

    # ---- the background ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for name in list(self.leases):
            self._release(name)

    def _run(self) -> None:
        period = min(self.settings.fleet_poll_s, self.settings.lease_ttl_s / 3)
        while not self._stop.wait(period):
            for name, lease in list(self.leases.items()):
                self._renew(name, lease)
            with self._lock:
                waiting = sorted(self.waiting)
            for name in waiting:
                try:
                    self._look(name)
                except Exception as err:
                    log.warning("model %s: the shared store %s: %s", name, self.store.url, err)

    def _renew(self, name: str, lease: Lease) -> None:
        try:
            if lease.renew():
                return
        except Exception as err:  # the store unreachable for a while: try again next period
            log.warning("model %s: cannot renew the lease: %s", name, err)
            return
        with self._lock:
            self.leases.pop(name, None)
        metrics.series().fleet_leases.labels(name, "lost").inc()
        log.warning("model %s: lease lost to another replica (this one stalled past its ttl)",
                    name)  # fmt: skip

    def _look(self, name: str) -> None:
        """A waiting model: adopt the variant, accept an outcome, or take an expired lease."""
        if self.serve_cached(name) or self._declined(name):
            with self._lock:
                self.waiting.discard(name)
            return
        if self._runs_jobs(name) and self._acquire(name):
            with self._lock:
                self.waiting.discard(name)
            try:
                self.manager.compress(name, self.manager.profile, auto=True)
            except Exception as err:
                self.not_started(name, f"could not queue the job: {err}")
