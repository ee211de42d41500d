"""The variant cache: keys follow content, profile, hardware and torch; entries appear whole."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from service.serving.cache import VariantCache, hardware_fingerprint, model_digest

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


def test_key_changes_with_profile_and_entries_are_whole(tmp_path):
    cache = VariantCache(tmp_path / "cache")
    digest = model_digest(_model())
    k1 = cache.key(digest, {"name": "cpu", "ratios": [0.3]})
    assert k1 == cache.key(digest, {"ratios": [0.3], "name": "cpu"})
    assert k1 != cache.key(digest, {"name": "cpu", "ratios": [0.4]})
    assert hardware_fingerprint()  # CPU model and flags (or the GPU) are part of every key
    variant = tmp_path / "v"
    variant.mkdir()
    (variant / "plan.json").write_text("{}")
    (variant / "report.json").write_text(json.dumps({"accepted": False}))
    cache.put(k1, variant)
    assert cache.get(k1) is None  # a rejected variant is never served from the cache
    (variant / "report.json").write_text(json.dumps({"accepted": True}))
    k2 = cache.key(digest, {"name": "edge"})
    assert cache.put(k2, variant) == cache.get(k2)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
    other = tmp_path / "other"
    other.mkdir()
    (other / "plan.json").write_text(json.dumps({"weights_sha256": "b"}))
    (variant / "plan.json").write_text(json.dumps({"weights_sha256": "a"}))
    cache.put(cache.key(digest, {"name": "gpu"}), variant)
    assert not cache.remove(cache.key(digest, {"name": "gpu"}), other)  # not the same weights
    assert cache.remove(cache.key(digest, {"name": "gpu"}), variant)
    assert cache.get(cache.key(digest, {"name": "gpu"})) is None


def test_a_newer_promotion_replaces_the_entry_and_a_plain_put_keeps_the_first(tmp_path):
    cache = VariantCache(tmp_path / "cache")
    key = cache.key(model_digest(_model()), {"name": "cpu"})
    first, newer = tmp_path / "first", tmp_path / "newer"
    for d, weights in ((first, "a"), (newer, "b")):
        d.mkdir()
        (d / "plan.json").write_text(json.dumps({"weights_sha256": weights}))
        (d / "report.json").write_text(json.dumps({"accepted": True}))
    cache.put(key, first)
    cache.put(key, newer)  # another replica's variant: the first published stays
    assert json.loads((cache.get(key) / "plan.json").read_text())["weights_sha256"] == "a"
    cache.put(key, newer, replace=True)  # promoted here after the first: peers start on it
    assert json.loads((cache.get(key) / "plan.json").read_text())["weights_sha256"] == "b"
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
