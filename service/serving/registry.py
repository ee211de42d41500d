"""The registry: originals, variants and their reports in the BentoML model store, plus the
active pointer of each model (a small JSON file that survives restarts).

Tags are ``<model>:original`` and ``<model>:<profile>-<time>-<hex>``; a variant's model-store
directory holds exactly what :meth:`compression.CompressedModel.save` wrote (weights, plan with
checksum, report.json, report.png). bentoml is imported lazily, and only its model store is
used: the registry runs without a server.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

from service.serving.errors import UnknownVariant

ORIGINAL = "original"


def _store_name(model: str) -> str:
    return model.lower().replace("/", "-")


class Registry:
    """Variants of every model and which one is active."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.pointers = self.home / "active"
        self.pointers.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

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
        with bentoml.models.create(
            tag, labels={"slimserve": "original"}, metadata={"source": source}
        ) as stored:
            Path(stored.path, "source.json").write_text(json.dumps({"source": source}))

    def add_variant(self, model: str, variant_dir: Path, profile: str) -> str:
        """Copy a saved variant into the store; returns its id."""
        import bentoml

        report = json.loads((Path(variant_dir) / "report.json").read_text())
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        vid = f"{profile}-{stamp}-{secrets.token_hex(2)}".lower()
        labels = {
            "slimserve": "variant",
            "profile": profile,
            "accepted": str(report["accepted"]).lower(),
        }
        metadata = {k: report[k] for k in ("speedup", "metric", "metric_after", "params_after")}
        with bentoml.models.create(
            f"{_store_name(model)}:{vid}", labels=labels, metadata=metadata
        ) as stored:
            for item in Path(variant_dir).iterdir():
                shutil.copy2(item, Path(stored.path) / item.name)
        return vid

    def variant_path(self, model: str, vid: str) -> Path:
        import bentoml

        try:
            return Path(bentoml.models.get(f"{_store_name(model)}:{vid}").path)
        except bentoml.exceptions.NotFound:
            raise UnknownVariant(
                f"model {model!r} has no variant {vid!r}; GET /admin/models/{model}/variants "
                "lists them"
            ) from None

    def report(self, model: str, vid: str) -> dict | None:
        if vid == ORIGINAL:
            return None
        path = self.variant_path(model, vid) / "report.json"
        return json.loads(path.read_text()) if path.is_file() else None

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
        try:
            return json.loads(self._pointer(model).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"variant": ORIGINAL, "history": []}

    def active(self, model: str) -> str:
        return self.pointer(model)["variant"]

    def set_active(self, model: str, vid: str, remember: bool = True) -> str:
        """Point ``model`` at ``vid``; the variant it replaces goes on the rollback stack."""
        with self._lock:
            data = self.pointer(model)
            previous = data["variant"]
            history = data.get("history", [])
            if remember and previous != vid:
                history = [*history, previous][-20:]
            tmp = self._pointer(model).with_suffix(".tmp")
            tmp.write_text(json.dumps({"variant": vid, "history": history, "time": time.time()}))
            os.replace(tmp, self._pointer(model))
            return previous

    def previous(self, model: str) -> str | None:
        """The variant a rollback would return to (the top of the stack), or None."""
        history = self.pointer(model).get("history", [])
        return history[-1] if history else None

    def pop_previous(self, model: str) -> str | None:
        """The variant active before the last swap (removed from the stack), or None."""
        with self._lock:
            data = self.pointer(model)
            history = data.get("history", [])
            if not history:
                return None
            previous = history.pop()
            tmp = self._pointer(model).with_suffix(".tmp")
            tmp.write_text(
                json.dumps({"variant": previous, "history": history, "time": time.time()})
            )
            os.replace(tmp, self._pointer(model))
            return previous

    def pointer_mtime(self, model: str) -> float:
        try:
            return self._pointer(model).stat().st_mtime
        except FileNotFoundError:
            return 0.0
