"""The profiles the Kubernetes ConfigMap mounts load through the engine's own validation."""

from pathlib import Path

import pytest

from compression.profiles import PROFILES, load_profile_file

pytestmark = pytest.mark.unit
K8S_PROFILES = Path(__file__).resolve().parents[3] / "k8s" / "base" / "profiles"


@pytest.mark.parametrize("name", ["cpu", "gpu", "edge"])
def test_configmap_profiles_validate_and_match_the_builtins(name):
    profile = load_profile_file(K8S_PROFILES / f"{name}.yaml")
    assert profile.name == name
    # Operators may tune them; shipped, they are the built-ins.
    assert profile == PROFILES[name]
