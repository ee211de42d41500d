"""Variants shared by replicas: accepted variants in a directory every replica mounts.

A variant is reused only where it was measured: the key is the model's content (a hash of its
weights), the profile (its full settings), the hardware (CPU model and instruction-set flags,
or the GPU's name) and the torch version. A new replica on the same hardware finds the
variant its peers accepted and serves it at once, with no job; on other hardware the key
differs and it compresses for itself. Entries are written to a temporary name and renamed, so
a reader never sees half a variant::

    cache = VariantCache(Path("/shared/variants"), secret=b"...")
    key = cache.key(model, profile)
    cache.get(key) or cache.put(key, variant_dir)

A replica trusts no entry it has not checked (:meth:`VariantCache.verify`): its files must pass
the engine's checks (JSON objects of the expected shape, every checksum), and with a secret
(``SLIMSERVE_CACHE_KEY``) its ``signature.json`` must hold the HMAC-SHA256, under that secret,
of the entry's key and every file's sha256, so an entry whose weights were replaced and whose
checksums were recomputed by someone without the secret is refused too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import shutil
import uuid
from functools import lru_cache
from pathlib import Path

import torch

from compression.core.errors import VariantError
from compression.output.checks import sha256_file, verify_files

SIGNATURE_FILE = "signature.json"


class CacheRefused(Exception):
    """A cache entry this replica will not adopt; ``reason`` is ``cache_corrupted`` (its files
    fail their checks) or ``cache_untrusted`` (no valid keyed digest)."""

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
    """Accepted variants under ``directory/<key>/`` (the variant directory's files)."""

    def __init__(self, directory: Path, secret: bytes | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
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

    def get(self, key: str) -> Path | None:
        """The entry ``key``, or None: none, or a variant its own report calls rejected.

        An entry that cannot be read (a missing or corrupted file) is returned all the same:
        :meth:`verify` refuses it with the reason, so a replica says why it compresses.
        """
        path = self.directory / key
        if not path.is_dir():
            return None
        try:
            report = json.loads((path / "report.json").read_text())
        except (OSError, ValueError):  # missing, unreadable, not JSON, not UTF-8
            return path
        if isinstance(report, dict) and report.get("accepted") is False:
            return None
        return path

    def verify(self, key: str, path: Path) -> None:
        """:class:`CacheRefused` unless the entry ``path`` (under ``key``) may be adopted: with a
        secret, its signature first; then its files (:func:`verify_files`)."""
        files = _files(path)
        if files is None:
            raise CacheRefused(
                "cache_corrupted", f"cache entry {key}: not a flat variant directory"
            )
        if self.secret is not None:
            self._check_signature(key, path, files)
        try:
            verify_files(path)
        except VariantError as err:
            raise CacheRefused("cache_corrupted", f"cache entry {key}: {err}") from None

    def _check_signature(self, key: str, path: Path, files: list[Path]) -> None:
        try:
            signed = json.loads((path / SIGNATURE_FILE).read_text())
            digest, listed = signed["hmac_sha256"], signed["files"]
            if not isinstance(digest, str) or not isinstance(listed, dict):
                raise TypeError("hmac_sha256 must be a string and files an object")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CacheRefused(
                "cache_untrusted", f"cache entry {key}: no valid {SIGNATURE_FILE} ({err})"
            ) from None
        actual = {f.name: sha256_file(f) for f in files}
        if listed != actual or not hmac.compare_digest(digest, self._sign(key, actual)):
            raise CacheRefused(
                "cache_untrusted",
                f"cache entry {key}: its files do not match a signature made with "
                "SLIMSERVE_CACHE_KEY (changed, or published without the key)",
            )

    def _sign(self, key: str, files: dict[str, str]) -> str:
        message = json.dumps({"key": key, "files": files}, sort_keys=True).encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def _write_signature(self, key: str, path: Path) -> None:
        (path / SIGNATURE_FILE).unlink(missing_ok=True)  # a copy of an adopted entry's
        if self.secret is None:
            return
        files = {f.name: sha256_file(f) for f in _files(path) or []}
        body = {"algorithm": "hmac-sha256", "files": files, "hmac_sha256": self._sign(key, files)}
        (path / SIGNATURE_FILE).write_text(json.dumps(body, indent=2, sort_keys=True))

    def put(self, key: str, variant_dir: Path, replace: bool = False) -> Path:
        """Publish a variant directory (atomic: copied to a temporary name, then renamed).

        ``replace``: an entry holding another variant gives way (a replica that promoted a
        newer variant after live verification: peers that start later serve what it serves);
        otherwise the first entry stays.
        """
        final = self.directory / key
        if final.exists() and (not replace or _same_variant(final, Path(variant_dir))):
            return final
        tmp = self.directory / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
        shutil.copytree(variant_dir, tmp)
        self._write_signature(key, tmp)
        if final.exists():  # replace: the old entry leaves first (a reader meanwhile finds none)
            old = self.directory / f".{key}.{uuid.uuid4().hex[:8]}.removed"
            try:
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            except OSError:  # another replica replaced or removed it first
                pass
        try:
            os.rename(tmp, final)
        except OSError:  # another replica published the same key first
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def remove(self, key: str, variant_dir: Path) -> bool:
        """Drop the entry ``key`` if it holds the variant in ``variant_dir`` (same weights)."""
        entry = self.directory / key
        if not _same_variant(entry, Path(variant_dir)):
            return False
        tmp = self.directory / f".{key}.{uuid.uuid4().hex[:8]}.removed"
        os.rename(entry, tmp)  # atomic for readers; then the files go
        shutil.rmtree(tmp, ignore_errors=True)
        return True


def _same_variant(a: Path, b: Path) -> bool:
    """Whether two variant directories hold the same variant: the same plan (weights' checksum,
    structure, precision, runtime and its graph's checksum)."""
    try:
        return json.loads((a / "plan.json").read_text()) == json.loads(
            (b / "plan.json").read_text()
        )
    except (OSError, json.JSONDecodeError):
        return False


def _files(path: Path) -> list[Path] | None:
    """The entry's files but its signature, sorted; None if it holds anything but files."""
    try:
        items = sorted(Path(path).iterdir())
    except OSError:
        return None
    if any(not p.is_file() or p.is_symlink() for p in items):
        return None
    return [p for p in items if p.name != SIGNATURE_FILE]
