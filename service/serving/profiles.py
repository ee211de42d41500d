"""Which device profile the service compresses for: ``auto``, a built-in, or a configured file."""

from __future__ import annotations

from pathlib import Path

import torch

from compression.profiles import PROFILES, DeviceProfile, get_profile
from service.serving.errors import BadRequest


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


def check_fits_server(profile: DeviceProfile, cores: int, cuda: bool) -> None:
    """Refuse (400) an inline profile this server cannot run, naming the key and what it allows.

    The engine's own ranges hold on any machine; these are this server's: ``threads`` up to the
    ``cores`` the container may use (affinity and cgroup quota: more threads than cores only
    contend), ``device: cuda`` and the float16 dtype only where a CUDA device is present.

    >>> check_fits_server(get_profile("cpu"), cores=2, cuda=False)
    """
    if profile.threads is not None and profile.threads > cores:
        raise BadRequest(
            f"profile: threads: {profile.threads} is more than the {cores} core(s) this server "
            f"may use; allowed range [1, {cores}]"
        )
    if profile.device == "cuda" and not cuda:
        raise BadRequest(
            "profile: device: 'cuda' is not on this server (no CUDA device); allowed: ['cpu']"
        )
    if profile.dtype == "float16" and not cuda:
        raise BadRequest(
            "profile: dtype: 'float16' needs a CUDA device, which this server does not have; "
            "allowed on this server: ['float32', 'bfloat16']"
        )
