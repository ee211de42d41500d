"""The registry: originals, variants and their reports in the BentoML model store, plus the
active pointer of each model (a small JSON file that survives restarts).

Tags are ``<model>:original`` and ``<model>:<profile>-<time>-<hex>``; a variant's model-store
directory holds exactly what :meth:`compression.CompressedModel.save` wrote (weights, plan with
checksum, report.json, report.png). bentoml is imported lazily, and only its model store is
used: the registry runs without a server.

Ids are checked against the form the registry issues (:func:`check_variant_id`) before they
reach the store, and a lookup must return the variant of exactly that id: BentoML's moving
alias ``latest`` (or any other alias) is never resolved, never stored in a pointer. A pointer
records whether an operator chose it (``pinned``), so a restart does not override that choice.

A store that cannot be written (a full disk, a read-only home) degrades the service, never
stops it: the registry starts anyway (originals serve), a variant is stored only when the store
has its size plus ``min_free_bytes`` free (else :class:`StoreUnavailable`, 507), and pointer
writes that fail leave what serves unchanged (see the variant manager).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from service.serving.errors import BadRequest, StoreUnavailable, UnknownVariant, VariantRefused

log = logging.getLogger("slimserve")
ORIGINAL = "original"
# What the registry issues: "<profile>-<yyyymmdd>-<hhmmss>-<4 hex>" (lowercase), or "original".
VARIANT_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
# BentoML resolves these as moving aliases of a model's versions; they are never variant ids.
ALIASES = frozenset({"latest"})


def _store_name(model: str) -> str:
    return model.lower().replace("/", "-")


def check_variant_id(vid: object) -> str:
    """``vid`` if it has the form of an id the registry issues, else :class:`BadRequest` (400).

    >>> check_variant_id("cpu-20250101-120000-ab12")
    'cpu-20250101-120000-ab12'
    """
    if not isinstance(vid, str) or not VARIANT_ID.fullmatch(vid) or vid in ALIASES:
        shown = repr(vid)[:60] if isinstance(vid, str) else type(vid).__name__
        raise BadRequest(
            "a variant id is 'original' or what the registry issued, e.g. "
            "'cpu-20250101-120000-ab12' (lowercase letters, digits, '.', '_', '-'; at most 100 "
            f"characters; aliases such as 'latest' are not ids); got {shown}"
        )
    return vid


def _valid_id(vid: object) -> bool:
    try:
        check_variant_id(vid)
        return True
    except BadRequest:
        return False


def _labels_report(variant_dir: Path) -> dict:
    """report.json, for a store entry's labels; :class:`VariantRefused` if it is not a report."""
    try:
        report = json.loads((variant_dir / "report.json").read_text())
    except (OSError, ValueError):
        report = None
    if not isinstance(report, dict) or not isinstance(report.get("accepted"), bool):
        raise VariantRefused("the variant's report.json is missing or not a compression report")
    return report


def _profile_slug(profile: str) -> str:
    """A profile name as it may appear in a variant id (the id's form is checked)."""
    return re.sub(r"[^a-z0-9]+", "-", profile.lower()).strip("-")[:40] or "custom"


class Registry:
    """Variants of every model and which one is active."""

    def __init__(self, home: Path, min_free_bytes: int = 256 << 20) -> None:
        self.home = Path(home)
        self.pointers = self.home / "active"
        self.min_free_bytes = min_free_bytes
        try:
            self.pointers.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a read-only or full home: serve the originals anyway
            log.warning(
                "registry: cannot create %s (%s); variants cannot be stored",
                self.pointers,
                err.strerror,
            )
        self._lock = threading.Lock()

    # ---- space -------------------------------------------------------------------------------

    def store_path(self) -> Path:
        """Where BentoML's model store keeps variants (BENTOML_HOME/models)."""
        from bentoml._internal.configuration.containers import BentoMLContainer

        return Path(BentoMLContainer.model_store.get()._path)

    def check_space(self, needed: int, what: str) -> None:
        """:class:`StoreUnavailable` (507) unless the store has ``needed`` bytes plus the
        ``min_free_bytes`` margin free (a full disk must not stop serving, nor corrupt files)."""
        path = self.store_path()
        while not path.exists() and path != path.parent:
            path = path.parent
        if not os.access(path, os.W_OK):
            raise StoreUnavailable(
                f"{what}: the variant store is read-only; the variants stored so far keep serving"
            )
        free = shutil.disk_usage(path).free
        if free < needed + self.min_free_bytes:
            raise StoreUnavailable(
                f"{what} needs {needed / 1e6:.1f} MB and the variant store keeps "
                f"{self.min_free_bytes / 1e6:.0f} MB free (SLIMSERVE_MIN_FREE_BYTES), but has "
                f"{free / 1e6:.1f} MB free; the variants stored so far keep serving"
            )

    # ---- model store -------------------------------------------------------------------------

    def ensure_original(self, model: str, source: str) -> None:
        """Record the original in the store (its weights are rebuilt from ``source``)."""
        import bentoml

        tag = f"{_store_name(model)}:{ORIGINAL}"
        try:
            bentoml.models.get(tag)
            return
        except bentoml.exceptions.NotFound:
            pass
        try:
            with bentoml.models.create(
                tag, labels={"slimserve": "original"}, metadata={"source": source}
            ) as stored:
                Path(stored.path, "source.json").write_text(json.dumps({"source": source}))
        except OSError as err:  # the original serves from its source: its record can wait
            log.warning("registry: cannot record %s's original (%s)", model, err.strerror)

    def add_variant(
        self,
        model: str,
        variant_dir: Path,
        profile: str,
        verify: Callable[[Path], object] | None = None,
    ) -> str:
        """Copy a saved variant into the store; returns its id.

        ``verify``: called on the copy before the store takes it (loads it, say); whatever it
        raises leaves nothing in the store, so no variant is labelled accepted unverified.
        """
        import bentoml

        report = _labels_report(Path(variant_dir))
        size = sum(f.stat().st_size for f in Path(variant_dir).iterdir() if f.is_file())
        self.check_space(size, f"storing a variant of {model!r}")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        vid = check_variant_id(f"{_profile_slug(profile)}-{stamp}-{secrets.token_hex(2)}")
        labels = {
            "slimserve": "variant",
            "profile": profile,
            "accepted": str(report["accepted"]).lower(),
        }
        metadata = {k: report.get(k) for k in ("speedup", "metric", "metric_after", "params_after")}
        copy: Path | None = None
        try:
            with bentoml.models.create(
                f"{_store_name(model)}:{vid}", labels=labels, metadata=metadata
            ) as stored:
                copy = Path(stored.path)
                for item in Path(variant_dir).iterdir():
                    shutil.copy2(item, copy / item.name)
                if verify is not None:
                    verify(copy)
        except OSError as err:  # full or read-only: nothing half-written stays in the store
            raise StoreUnavailable(
                f"cannot store a variant of {model!r}: {err.strerror or err}; the variants "
                "stored so far keep serving"
            ) from None
        finally:  # BentoML builds an entry in a temporary directory, copied in on success
            if copy is not None and not copy.is_relative_to(self.store_path()):
                shutil.rmtree(copy, ignore_errors=True)
        return vid

    def discard(self, model: str, vid: str) -> None:
        """Delete a stored variant (one refused right after it was stored)."""
        import bentoml

        bentoml.models.delete(self._stored(model, vid).tag)

    def _stored(self, model: str, vid: str):
        """The store entry of exactly ``vid`` (never an alias), or :class:`UnknownVariant`."""
        import bentoml

        check_variant_id(vid)
        try:
            stored = bentoml.models.get(f"{_store_name(model)}:{vid}")
        except bentoml.exceptions.BentoMLException:  # NotFound, or a tag the store refuses
            stored = None
        if stored is None or stored.tag.version != vid:
            raise UnknownVariant(
                f"model {model!r} has no variant {vid!r}; GET /admin/models/{model}/variants "
                "lists them"
            )
        return stored

    def variant_path(self, model: str, vid: str) -> Path:
        return Path(self._stored(model, vid).path)

    def accepted_variants(self, model: str, profile: str) -> list[str]:
        """Stored variants of ``model`` accepted for ``profile``, newest first."""
        rows = self._variant_rows(model)
        return [r["id"] for r in rows if r["profile"] == profile and r["accepted"]]

    def _variant_rows(self, model: str) -> list[dict]:
        """Compressed variants of ``model`` (labels only, no reports), newest first."""
        import bentoml

        rows = [
            {
                "id": m.tag.version,
                "profile": m.info.labels.get("profile"),
                "accepted": m.info.labels.get("accepted") == "true",
                "created": m.info.creation_time,
            }
            for m in bentoml.models.list(_store_name(model))
            if m.info.labels.get("slimserve") == "variant"
        ]
        return sorted(rows, key=lambda r: r["created"], reverse=True)

    def prune(self, model: str, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest variants of ``model``; returns the deleted ids.

        The active variant and the one a rollback would return to are never deleted; deleted
        ids leave the rollback stack.
        """
        import bentoml

        with self._lock:
            data = self.pointer(model)
            protected = {data["variant"], *data["history"][-1:]}
            rows = self._variant_rows(model)
            doomed = [r["id"] for r in rows[keep:] if r["id"] not in protected]
            for vid in doomed:
                bentoml.models.delete(f"{_store_name(model)}:{vid}")
            if doomed and self._pointer(model).exists():
                history = [v for v in data["history"] if v not in doomed]
                self._write_pointer(model, {**data, "history": history})
        if doomed:
            log.info("model %s: deleted %d old variant(s): %s", model, len(doomed), doomed)
        return doomed

    def report(self, model: str, vid: str) -> dict | None:
        if vid == ORIGINAL:
            return None
        path = self.variant_path(model, vid) / "report.json"
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):  # missing or corrupted: refused when it is loaded
            return None
        return report if isinstance(report, dict) else None

    def variants(self, model: str) -> list[dict]:
        """Every stored variant of ``model``, the original first, then newest first."""
        import bentoml

        active = self.active(model)
        rows = []
        for stored in bentoml.models.list(_store_name(model)):
            vid = stored.tag.version
            labels = stored.info.labels
            original = labels.get("slimserve") == "original"
            rows.append(
                {
                    "id": vid,
                    "active": vid == active,
                    "profile": None if original else labels.get("profile"),
                    "accepted": True if original else labels.get("accepted") == "true",
                    "report": None if original else self.report(model, vid),
                    "created": stored.info.creation_time.isoformat(),
                }
            )
        rows.sort(key=lambda r: (r["id"] != ORIGINAL, r["created"]), reverse=False)
        return (
            [rows[0], *sorted(rows[1:], key=lambda r: r["created"], reverse=True)] if rows else []
        )

    # ---- active pointers ---------------------------------------------------------------------

    def _pointer(self, model: str) -> Path:
        return self.pointers / f"{_store_name(model)}.json"

    def pointer(self, model: str) -> dict:
        """``{"variant", "history", "pinned"}``; a missing or unreadable file is the original.

        A pointer whose ids do not have the registry's form (an alias such as ``latest``
        written by an older version, a hand edit) reads as ``{"variant": <as written>,
        "invalid": True}``: :meth:`VariantManager.restore` repairs it at start-up.
        """
        try:
            data = json.loads(self._pointer(model).read_text())
        except (OSError, ValueError):
            return {"variant": ORIGINAL, "history": [], "pinned": False}
        if not isinstance(data, dict):
            return {"variant": ORIGINAL, "history": [], "pinned": False, "invalid": True}
        variant, history = data.get("variant"), data.get("history", [])
        if not isinstance(history, list):
            history = []
        out = {
            "variant": variant if _valid_id(variant) else str(variant)[:100],
            "history": [h for h in history if _valid_id(h)],
            "pinned": data.get("pinned") is True,
        }
        if not _valid_id(variant):
            out["invalid"] = True
        return out

    def active(self, model: str) -> str:
        return self.pointer(model)["variant"]

    def pinned(self, model: str) -> bool:
        """Whether an operator chose the active variant (activate or rollback)."""
        return self.pointer(model)["pinned"]

    def _write_pointer(self, model: str, data: dict) -> None:
        """Replace the pointer file atomically (write a temporary file, then rename)."""
        tmp = self._pointer(model).with_suffix(f".{os.getpid()}.tmp")
        body = {
            "variant": data["variant"],
            "history": data["history"],
            "pinned": bool(data.get("pinned")),
            "time": time.time(),
        }
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(body))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._pointer(model))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def set_active(self, model: str, vid: str, remember: bool = True, pinned: bool = False) -> str:
        """Point ``model`` at ``vid``; the variant it replaces goes on the rollback stack.

        ``pinned``: an operator's choice, which a restart respects (no auto-compression).
        """
        check_variant_id(vid)
        with self._lock:
            data = self.pointer(model)
            previous = data["variant"]
            history = data["history"]
            if remember and previous != vid and not data.get("invalid"):
                history = [*history, previous][-20:]
            self._write_pointer(model, {"variant": vid, "history": history, "pinned": pinned})
            return previous

    def repair(self, model: str, vid: str, drop: set[str]) -> None:
        """Point ``model`` at ``vid`` after start-up refused the pointer's variant(s) ``drop``."""
        with self._lock:
            data = self.pointer(model)
            history = [h for h in data["history"] if h not in drop and h != vid]
            self._write_pointer(
                model, {"variant": vid, "history": history, "pinned": data["pinned"]}
            )

    def previous(self, model: str) -> str | None:
        """The variant a rollback would return to (the top of the stack), or None."""
        history = self.pointer(model)["history"]
        return history[-1] if history else None

    def pop_previous(self, model: str, pinned: bool = False) -> str | None:
        """The variant active before the last swap (removed from the stack), or None."""
        with self._lock:
            data = self.pointer(model)
            history = data["history"]
            if not history:
                return None
            previous = history.pop()
            self._write_pointer(model, {"variant": previous, "history": history, "pinned": pinned})
            return previous

    def pointer_mtime(self, model: str) -> float:
        try:
            return self._pointer(model).stat().st_mtime
        except FileNotFoundError:
            return 0.0
