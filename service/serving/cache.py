"""Variants shared by replicas: accepted variants in a store every replica reads.

A variant is reused only where it was measured: the key is the model's content (a hash of its
weights), the profile (its full settings), the hardware (CPU model and instruction-set flags,
or the GPU's name) and the torch version. A new replica on the same hardware finds the
variant its peers accepted and serves it at once, with no job; on other hardware the key
differs and it compresses for itself::

    cache = VariantCache(open_store("s3://bucket/variants"), secret=b"...")
    key = cache.key(model_digest(model), profile)
    cache.fetch(key, Path("download")) or cache.put(key, variant_dir)

An entry is ``variants/<key>/<version>/<file>`` for each of the variant's files, then
``variants/<key>/manifest.json``, written last: every file's sha256 and size, the plan's
sha256, whether the variant was accepted and, with a secret, the signature. A reader sees an
entry only once its manifest exists, so never half a variant; a replacement writes a new version
and then the manifest, so a reader sees the old variant or the new one.

A replica trusts no entry it has not checked (:meth:`VariantCache.fetch`): every downloaded
file must have the size and sha256 its manifest lists (a flipped byte, a truncated or a missing
object is refused), then pass the engine's checks (JSON objects of the expected shape, every
checksum of the plan); with a secret (``SLIMSERVE_CACHE_KEY``) the manifest must hold the
HMAC-SHA256, under that secret, of the entry's key and every file's sha256, so an entry whose
weights were replaced and whose checksums were recomputed by someone without the secret is
refused too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import uuid
from functools import lru_cache
from pathlib import Path

import torch

from compression.core.errors import VariantError
from compression.output.checks import PLAN_FILE, verify_files
from service.serving.stores import Store

MANIFEST = "manifest.json"


class CacheRefused(Exception):
    """A cache entry this replica will not adopt; ``reason`` is ``cache_corrupted`` (its files
    fail their checks: changed, truncated, missing) or ``cache_untrusted`` (no valid keyed
    digest)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def model_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state (names, dtypes, shapes and bytes), independent of its object."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@lru_cache(maxsize=1)
def hardware_fingerprint() -> str:
    """What latency measurements depend on: the GPU's name, else the CPU's model and flags."""
    if torch.cuda.is_available():
        return "cuda:" + torch.cuda.get_device_name(0)
    model, flags = platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model.startswith("cpu:"):
                model = "cpu:" + value.strip()
            elif key.strip() == "flags" and not flags:
                flags = hashlib.sha256(" ".join(sorted(value.split())).encode()).hexdigest()[:16]
    except OSError:
        pass
    return f"{model}|flags:{flags}|cores:{os.cpu_count()}"


class VariantCache:
    """Accepted variants in a store, one entry per key (see the module's text for the layout)."""

    def __init__(self, store: Store, secret: bytes | None = None) -> None:
        self.store = store
        self.secret = secret or None  # signs what this replica publishes, checks what it adopts

    @staticmethod
    def key(model_digest: str, profile: dict) -> str:
        """The entry name of (model content, profile settings, hardware, torch version)."""
        parts = {
            "model": model_digest,
            "profile": profile,
            "hardware": hardware_fingerprint(),
            "torch": torch.__version__,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def manifest(self, key: str) -> dict | None:
        """The entry's manifest, or None where there is none.

        :class:`CacheRefused` (``cache_corrupted``) where one exists but is not a manifest.
        """
        raw = self.store.read(f"variants/{key}/{MANIFEST}")
        if raw is None:
            return None
        try:
            manifest = json.loads(raw)
            files, version = manifest["files"], manifest["version"]
            if not isinstance(files, dict) or not isinstance(version, str):
                raise TypeError("files must be an object and version a string")
            for name in files:
                _plain(name)
        except (ValueError, KeyError, TypeError) as err:
            raise CacheRefused(
                "cache_corrupted", f"cache entry {key}: unreadable {MANIFEST} ({err})"
            ) from None
        return manifest

    def fetch(self, key: str, dest: Path) -> Path | None:
        """Download the entry ``key`` into ``dest`` (a new directory) once it passes every
        check; None where there is no entry or its variant was rejected.

        :class:`CacheRefused` where it may not be adopted, with the reason.
        """
        manifest = self.manifest(key)
        if manifest is None or manifest.get("accepted") is False:
            return None
        files = manifest["files"]
        if self.secret is not None:
            signed = manifest.get("hmac_sha256")
            if not isinstance(signed, str) or not hmac.compare_digest(
                signed, self._sign(key, files)
            ):
                raise CacheRefused(
                    "cache_untrusted",
                    f"cache entry {key}: its manifest is not signed with SLIMSERVE_CACHE_KEY "
                    "(changed, or published without the key)",
                )
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=False)
        for name, expected in sorted(files.items()):
            data = self.store.read(f"variants/{key}/{manifest['version']}/{name}")
            if data is None:
                raise CacheRefused("cache_corrupted", f"cache entry {key}: {name} is missing")
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise CacheRefused(
                    "cache_corrupted",
                    f"cache entry {key}: {name} has sha256 {actual[:12]}…, its manifest "
                    f"lists {str(expected)[:12]}… ({len(data)} bytes: changed or partial)",
                )
            (dest / name).write_bytes(data)
        try:
            verify_files(dest)
        except VariantError as err:
            raise CacheRefused("cache_corrupted", f"cache entry {key}: {err}") from None
        return dest

    def _sign(self, key: str, files: dict[str, str]) -> str:
        message = json.dumps({"key": key, "files": files}, sort_keys=True).encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def put(self, key: str, variant_dir: Path, replace: bool = False) -> bool:
        """Publish a variant directory; True if the entry now holds it.

        The files go up under a new version, then the manifest: created only where none exists,
        so of two replicas publishing the same key the first stays, or, with ``replace``,
        written over the old one (a replica that promoted a newer variant after live
        verification: peers that start later serve what it serves), whose files then go.
        """
        variant_dir = Path(variant_dir)
        files = _files(variant_dir)
        if files is None:
            raise VariantError(f"{variant_dir}: not a flat variant directory")
        try:
            old = self.manifest(key)
        except CacheRefused:
            old = None  # an unreadable manifest: a replacement mends it; a plain put leaves it
            if not replace:
                return False
        digests = {f.name: _sha256(f) for f in files}
        if old is not None and old.get("plan_sha256") == digests.get(PLAN_FILE):
            return True
        if old is not None and not replace:
            return False
        version = uuid.uuid4().hex[:16]
        for f in files:
            self.store.write(f"variants/{key}/{version}/{f.name}", f.read_bytes())
        report = json.loads((variant_dir / "report.json").read_text())
        manifest = {
            "version": version,
            "files": digests,
            "sizes": {f.name: f.stat().st_size for f in files},
            "plan_sha256": digests.get(PLAN_FILE),
            "accepted": bool(isinstance(report, dict) and report.get("accepted")),
            "published_by": platform.node(),
        }
        if self.secret is not None:
            manifest["hmac_sha256"] = self._sign(key, digests)
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        if replace:
            self.store.write(f"variants/{key}/{MANIFEST}", body)
        elif not self.store.create(f"variants/{key}/{MANIFEST}", body):
            self._drop_version(key, version)  # another replica published first
            return False
        if old is not None:
            self._drop_version(key, old["version"])
        return True

    def remove(self, key: str, variant_dir: Path) -> bool:
        """Drop the entry ``key`` if it holds the variant in ``variant_dir`` (same plan)."""
        try:
            manifest = self.manifest(key)
        except CacheRefused:
            return False
        if manifest is None or manifest.get("plan_sha256") != _sha256(
            Path(variant_dir) / PLAN_FILE
        ):
            return False
        self.store.delete(f"variants/{key}/{MANIFEST}")  # readers find no entry from now on
        self._drop_version(key, manifest["version"])
        return True

    def _drop_version(self, key: str, version: str) -> None:
        for name in self.store.names(f"variants/{key}/{_plain(version)}"):
            self.store.delete(name)


def _plain(name: str) -> str:
    """A file name of an entry: one plain part."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"not a variant file name: {name!r}")
    return name


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _files(path: Path) -> list[Path] | None:
    """A variant directory's files, sorted; None if it holds anything but files."""
    try:
        items = sorted(Path(path).iterdir())
    except OSError:
        return None
    if any(not p.is_file() or p.is_symlink() for p in items):
        return None
    return items
