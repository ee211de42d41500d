"""Which variant serves each model, and how that changes: load, swap, activate, roll back.

Loads variants (the two most recent per model stay resident, so rollback and re-activation are
one swap), swaps them into the data plane, writes the active pointer only after a swap
succeeded, rolls back, follows pointers that other workers wrote, and at start-up serves what
the pointer names (or a variant a task directory ships). Nothing here starts a job:
:mod:`service.serving.variants` adds the compression flow on top. No web framework either.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

from compression.core.errors import VariantError
from compression.output.checks import read_report
from compression.output.variant import load_variant
from service.serving import metrics
from service.serving.dataplane import DataPlane
from service.serving.errors import Conflict, StoreUnavailable, VariantRefused
from service.serving.registry import ORIGINAL, Registry, check_variant_id
from service.serving.runtime import Active
from service.serving.settings import Settings

log = logging.getLogger("slimserve")

# Compressed variants kept loaded per model (besides the original, always loaded).
RESIDENT_VARIANTS = 2


def refuse(name: str, reason: str, message: str) -> None:
    """One log line and ``slimserve_store_refusals_total{model, reason}``: what the service would
    not store or serve, and why; the model keeps serving what it served (else its original)."""
    metrics.record_refusal(name, reason)
    log.error("model %s: %s [%s]; what served keeps serving", name, message, reason)


def store_reason(err: StoreUnavailable) -> str:
    """The refusal reason of a store that cannot take a variant."""
    return "store_read_only" if "read-only" in str(err).lower() else "store_full"


class VariantSwaps:
    """Activate, roll back and follow variants; restore what served before a restart."""

    def __init__(self, settings: Settings, plane: DataPlane, registry: Registry) -> None:
        self.settings = settings
        self.plane = plane
        self.registry = registry
        self._mtimes: dict[str, float] = {}
        self._resident: OrderedDict[tuple[str, str], Active] = OrderedDict()
        # Held across a swap and its pointer write, so the follower never sees one without the other.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

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
        for vid in dict.fromkeys([*candidates, *reversed(data["history"])]):  # each once
            if vid == ORIGINAL:
                break
            try:
                self._swap_to(name, vid, reason="restore")
                serving = vid
                break
            # Refused, deleted, unreadable: whatever a variant's files do, the model starts
            # (on the last good variant, else its original); a bug shows in the log line.
            except Exception as err:
                if not isinstance(err, VariantRefused):  # VariantRefused is counted at load
                    metrics.series().refused.labels(name).inc()
                refuse(name, "variant_corrupted", f"variant {vid} refused at start-up: {err}")
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

        Returns its id, or None when the model already has stored variants (a restart) or the
        variant is refused (its files fail their checks, or the store cannot take it: one log
        line and ``slimserve_store_refusals_total``; the original serves). It is stored only
        after it loaded, so nothing unverified is labelled accepted.
        """
        if any(v["id"] != ORIGINAL for v in self.registry.variants(name)):
            return None
        return self.store_verified(name, Path(directory), "shipped", "shipped_corrupted")

    def store_verified(self, name: str, directory: Path, reason: str, refusal: str) -> str | None:
        """Store the variant in ``directory`` once it loads here; serve it if it was accepted.

        Its id, or None if it was refused: ``refusal`` (its files) or the store's reason, one
        log line and one count; what served keeps serving. ``reason``: the swap's.
        """
        try:
            report = read_report(directory)
            verify = self._verifier(name, directory)
            vid = self.registry.add_variant(name, directory, report.profile, verify=verify)
        except (VariantError, VariantRefused) as err:
            refuse(name, refusal, f"{reason} variant in {directory} refused: {err}")
            return None
        except StoreUnavailable as err:
            refuse(name, store_reason(err), f"{reason} variant in {directory} not stored: {err}")
            return None
        if report.accepted:
            try:
                self.activate(name, vid, reason=reason)
            except VariantRefused as err:  # the stored copy differs from the one that loaded
                self.registry.discard(name, vid)
                refuse(name, refusal, f"{reason} variant {vid} refused and deleted: {err}")
                return None
            except StoreUnavailable as err:  # stored and verified; the pointer cannot move
                refuse(name, store_reason(err), f"{reason} variant {vid} not activated: {err}")
        return vid

    def _verifier(self, name: str, source: Path):
        """What :meth:`Registry.add_variant` calls on its copy of ``source`` before storing it:
        the variant must load onto a fresh original (every file checked, the plan replayed).
        Errors name the file (``plan.json is corrupted: ...``), not the copy's directory."""

        def verify(copy: Path) -> None:
            try:
                self._load_files(name, copy)
            except VariantError as err:  # name the file, not where the copy lies
                reason = str(err).replace(f"{copy}/", "").replace(str(copy), "its directory")
                raise VariantError(reason) from None

        return verify

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
            return Active(ORIGINAL, "none", self.plane.served_originals[name])
        key = (name, vid)
        if key in self._resident:
            self._resident.move_to_end(key)
            return self._resident[key]
        active = self._read(name, vid, self.registry.variant_path(name, vid))
        self._resident[key] = active
        mine = [k for k in self._resident if k[0] == name]
        for old in mine[: max(0, len(mine) - RESIDENT_VARIANTS)]:
            del self._resident[old]
        return active

    def _read(self, name: str, vid: str, path: Path) -> Active:
        """The variant in ``path`` loaded onto a fresh original; :class:`VariantRefused` (409,
        counted) if any of its files fails its checks."""
        try:
            variant = self._load_files(name, path)
        except VariantError as err:
            metrics.series().refused.labels(name).inc()
            # No server path to a client: "weights.safetensors: checksum ... does not match".
            reason = str(err).replace(f"{path}/", "").replace(str(path), "its directory")
            raise VariantRefused(f"variant {vid!r} of {name!r} refused: {reason}") from None
        report = variant.report.to_dict()
        return Active(vid, report["profile"], variant.module.eval(), report)

    def _load_files(self, name: str, path: Path):
        served = self.plane.runtime.models.get(name)
        threads = served.threads if served is not None else None  # torch's budget, for ORT
        return load_variant(path, model=self.plane.bundles[name].factory(), threads=threads)

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
            self._swap_recorded(
                name,
                vid,
                reason,
                lambda: self.registry.set_active(name, vid, pinned=pinned),
                f"{vid!r} as {name!r}'s active variant",
            )
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
            self._swap_recorded(
                name,
                previous,
                "rollback",
                lambda: self.registry.pop_previous(name, pinned=pinned),
                f"the rollback of {name!r}",
            )
        return {"model": name, "active_variant": previous}

    def _swap_recorded(self, name: str, vid: str, reason: str, record, what: str) -> None:
        """Swap ``name`` to ``vid``, then ``record()`` it in the registry; when that write
        fails, what served before serves again and :class:`StoreUnavailable` says so."""
        old = self._swap_to(name, vid, reason)
        try:
            record()
        except OSError as err:
            self._undo_swap(name, old)
            raise StoreUnavailable(
                f"cannot record {what} ({err.strerror}); {old.variant!r} still serves"
            ) from None
        self._mtimes[name] = self.registry.pointer_mtime(name)

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

    def forget(self, name: str, vids: list[str]) -> None:
        """Drop variants deleted from the store from memory too."""
        with self._lock:
            for vid in vids:
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
