"""The variant cache: keys follow content, profile, hardware and torch; entries appear whole."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from service.serving.cache import VariantCache, hardware_fingerprint, model_digest
from service.serving.stores import DirStore

pytestmark = pytest.mark.unit


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))  # incl. a 0-dim long buffer


def test_digest_follows_content_not_identity():
    a, b = _model(), _model()
    assert model_digest(a) == model_digest(b)
    with torch.no_grad():
        b[0].bias[0] += 1e-6
    assert model_digest(a) != model_digest(b)


def _variant(path, weights: str, accepted: bool = True):
    path.mkdir()
    (path / "plan.json").write_text(json.dumps({"weights_sha256": weights}))
    (path / "report.json").write_text(json.dumps({"accepted": accepted}))
    return path


def _published(cache, key) -> str | None:
    manifest = cache.manifest(key)
    return None if manifest is None else manifest["plan_sha256"]


def test_key_changes_with_profile_and_entries_are_whole(tmp_path):
    cache = VariantCache(DirStore(tmp_path / "cache"))
    digest = model_digest(_model())
    k1 = cache.key(digest, {"name": "cpu", "ratios": [0.3]})
    assert k1 == cache.key(digest, {"ratios": [0.3], "name": "cpu"})
    assert k1 != cache.key(digest, {"name": "cpu", "ratios": [0.4]})
    assert hardware_fingerprint()  # CPU model and flags (or the GPU) are part of every key
    rejected = _variant(tmp_path / "r", "a", accepted=False)
    assert cache.put(k1, rejected)
    assert cache.fetch(k1, tmp_path / "d1") is None  # a rejected variant is never served
    variant, other = _variant(tmp_path / "v", "a"), _variant(tmp_path / "o", "b")
    k2 = cache.key(digest, {"name": "gpu"})
    cache.put(k2, variant)
    manifest = cache.manifest(k2)
    assert manifest["files"].keys() == {"plan.json", "report.json"} and manifest["accepted"]
    # Nothing half-written is left: the files under one version, the manifest beside.
    names = cache.store.names(f"variants/{k2}")
    assert sorted(names) == sorted(
        [f"variants/{k2}/manifest.json"]
        + [f"variants/{k2}/{manifest['version']}/{f}" for f in ("plan.json", "report.json")]
    )
    assert not cache.remove(k2, other)  # not the same plan
    assert cache.remove(k2, variant)
    assert cache.manifest(k2) is None and cache.store.names(f"variants/{k2}") == []


def test_a_newer_promotion_replaces_the_entry_and_a_plain_put_keeps_the_first(tmp_path):
    cache = VariantCache(DirStore(tmp_path / "cache"))
    key = cache.key(model_digest(_model()), {"name": "cpu"})
    first, newer = _variant(tmp_path / "first", "a"), _variant(tmp_path / "newer", "b")
    assert cache.put(key, first)
    plan = _published(cache, key)
    assert not cache.put(key, newer)  # another replica's variant: the first published stays
    assert _published(cache, key) == plan
    assert cache.put(key, newer, replace=True)  # promoted here after the first
    assert _published(cache, key) != plan
    versions = {n.split("/")[2] for n in cache.store.names(f"variants/{key}")} - {"manifest.json"}
    assert versions == {cache.manifest(key)["version"]}  # the replaced version's files went
