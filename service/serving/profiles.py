"""Which device profile the service compresses for: ``auto``, a built-in, or a configured file."""

from __future__ import annotations

from pathlib import Path

import torch

from compression.profiles import PROFILES, get_profile


def resolve_profile(spec: str, profiles_dir: Path | None) -> tuple[str, str | None]:
    """(profile name, YAML path or None) for auto, a built-in name, a name in profiles_dir or a path.

    >>> resolve_profile("cpu", None)
    ('cpu', None)
    """
    if spec == "auto":
        spec = "gpu" if torch.cuda.is_available() else "cpu"
    if profiles_dir is not None and (Path(profiles_dir) / f"{spec}.yaml").is_file():
        path = str(Path(profiles_dir) / f"{spec}.yaml")
        return get_profile(path).name, path
    if spec in PROFILES:
        return spec, None
    profile = get_profile(spec)  # a YAML path; raises ProfileError when invalid
    return profile.name, spec
