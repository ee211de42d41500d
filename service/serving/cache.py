"""Variants shared by replicas: accepted variants in a directory every replica mounts.

A variant is reused only where it was measured: the key is the model's content (a hash of its
weights), the profile (its full settings), the hardware (CPU model and instruction-set flags,
or the GPU's name) and the torch version. A new replica on the same hardware finds the
variant its peers accepted and serves it at once, with no job; on other hardware the key
differs and it compresses for itself. Entries are written to a temporary name and renamed, so
a reader never sees half a variant::

    cache = VariantCache(Path("/shared/variants"))
    key = cache.key(model, profile)
    cache.get(key) or cache.put(key, variant_dir)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import uuid
from functools import lru_cache
from pathlib import Path

import torch


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

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

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
        """The cached variant directory, or None (missing, or not an accepted variant)."""
        path = self.directory / key
        try:
            report = json.loads((path / "report.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not report.get("accepted") or not (path / "plan.json").is_file():
            return None
        return path

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
