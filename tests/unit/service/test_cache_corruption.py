"""Issue 29, item 4 (and 28: the store's manifest): a bad shared-cache entry never poisons a
replica.

A replica adopts an entry only once it passes its checks here (every file against the size and
sha256 its manifest lists, then the engine's checks; with ``SLIMSERVE_CACHE_KEY`` the manifest's
HMAC-SHA256) and loads onto the model; a refused entry is
one log line and ``slimserve_store_refusals_total{reason=cache_corrupted|cache_untrusted}``, the
original serves, nothing is stored (so nothing is labelled accepted), and the replica compresses
for itself. Real cores on real digits-cnn, one real compressed variant published per case.
"""

from __future__ import annotations

import json
import logging

import pytest

from compression.output.checks import seal, sha256_file
from service.serving.cache import MANIFEST, CacheRefused, VariantCache
from service.serving.registry import ORIGINAL
from service.serving.stores import DirStore

from . import test_variant_faults as faults
from .corruption import ALL_CASES, corrupt
from .harness import refusals as _refusals

pytestmark = pytest.mark.unit

store, saved_variant, cores, http = faults.store, faults.saved_variant, faults.cores, faults.http
MODEL = faults.MODEL
SECRET = "replicas-share-this"


def refusals(reason: str) -> float:
    return _refusals(MODEL, reason)


DIGIT = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 64}]}


@pytest.fixture(scope="module")
def key(tmp_path_factory, store):
    """The cache key of digits-cnn under the cores' profile (what every replica computes)."""
    from service.serving.core import Core
    from service.serving.settings import Settings

    home = tmp_path_factory.mktemp("key-home")
    settings = Settings(home=home, models=[MODEL], profile="cpu", auto_compress=False,
                        variant_cache=home / "cache")  # fmt: skip
    core = Core(settings).start()
    try:
        return core.fleet.key(MODEL)
    finally:
        core.close()


def _replica(cores, cache, secret: str | None = None):
    """A replica starting on ``cache``: it would compress on live traffic, which never comes,
    so no job runs here."""
    extra = {"cache_key": secret} if secret else {}
    return cores(auto_compress=True, calibration="live", live_min_samples=1 << 30,
                 variant_cache=cache, **extra)  # fmt: skip


def _stored_ids(core) -> list[str]:
    return [v["id"] for v in core.registry.variants(MODEL) if v["id"] != ORIGINAL]


def _cache(directory, secret: str | None = None) -> VariantCache:
    return VariantCache(DirStore(directory), secret.encode() if secret else None)


def _publish(cache, key, saved, secret: str | None = None):
    """Publish ``saved`` under ``key``; the directory holding the entry's files."""
    published = _cache(cache, secret)
    assert published.put(key, saved)
    return cache / "variants" / key / published.manifest(key)["version"]


def _manifest_path(entry):
    return entry.parent / MANIFEST


def _tamper_and_recompute(entry) -> None:
    """Change the weights and recompute every checksum the plan and the manifest hold: what
    someone with write access to the cache but without the key can do."""
    weights = entry / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # the last byte is tensor data
    weights.write_bytes(bytes(data))
    plan = json.loads((entry / "plan.json").read_text())
    plan["weights_sha256"] = sha256_file(weights)
    (entry / "plan.json").write_text(json.dumps(seal(plan)))
    manifest = json.loads(_manifest_path(entry).read_text())
    for name in manifest["files"]:
        manifest["files"][name] = sha256_file(entry / name)
    manifest["plan_sha256"] = manifest["files"]["plan.json"]
    _manifest_path(entry).write_text(json.dumps(manifest))


@pytest.mark.parametrize(("name", "kind"), ALL_CASES)
def test_a_corrupted_cache_entry_is_refused_and_the_replica_serves_the_original(
    name, kind, key, cores, http, saved_variant, tmp_path, caplog
):
    if not (saved_variant / name).is_file():
        pytest.skip(f"this variant has no {name}")
    cache = tmp_path / "cache"
    entry = _publish(cache, key, saved_variant)
    corrupt(entry, name, kind)
    counted = refusals("cache_corrupted")
    stored = _stored_ids(cores())  # the module shares one model store
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="slimserve"):
        core = _replica(cores, cache)
    assert refusals("cache_corrupted") == counted + 1, (name, kind)
    lines = [r.getMessage() for r in caplog.records if "[cache_corrupted]" in r.getMessage()]
    assert len(lines) == 1, lines
    assert core.plane.served(MODEL).active.variant == ORIGINAL
    assert _stored_ids(core) == stored  # nothing stored, so nothing labelled accepted
    r = http(core).post(f"/v2/models/{MODEL}/infer", json=DIGIT)
    assert r.status_code == 200 and r.headers["x-slimserve-variant"] == ORIGINAL, r.text


def test_an_intact_entry_is_adopted_labelled_accepted_only_after_it_loaded(
    key, cores, saved_variant, tmp_path
):
    cache = tmp_path / "cache"
    _publish(cache, key, saved_variant)
    core = _replica(cores, cache)
    vid = core.plane.served(MODEL).active.variant
    assert vid != ORIGINAL and core.registry.active(MODEL) == vid
    row = next(v for v in core.registry.variants(MODEL) if v["id"] == vid)
    assert row["accepted"] and row["report"]["accepted"]


@pytest.mark.parametrize("signed", [True, False])
def test_with_a_key_only_entries_signed_with_it_are_adopted(
    signed, key, cores, saved_variant, tmp_path
):
    cache = tmp_path / "cache"
    _publish(cache, key, saved_variant, SECRET if signed else None)  # unsigned: a keyless peer
    counted = refusals("cache_untrusted")
    stored = _stored_ids(cores())
    core = _replica(cores, cache, SECRET)
    if signed:
        assert core.plane.served(MODEL).active.variant != ORIGINAL
    else:
        assert core.plane.served(MODEL).active.variant == ORIGINAL
        assert refusals("cache_untrusted") == counted + 1 and _stored_ids(core) == stored


def test_with_a_key_tampered_weights_with_recomputed_checksums_are_refused(
    key, cores, saved_variant, tmp_path, caplog
):
    cache = tmp_path / "cache"
    entry = _publish(cache, key, saved_variant, SECRET)
    _tamper_and_recompute(entry)
    assert _cache(cache).fetch(key, tmp_path / "got")  # every checksum holds: only the key tells
    counted = refusals("cache_untrusted")
    stored = _stored_ids(cores())
    with caplog.at_level(logging.ERROR, logger="slimserve"):
        core = _replica(cores, cache, SECRET)
    assert core.plane.served(MODEL).active.variant == ORIGINAL
    assert refusals("cache_untrusted") == counted + 1 and _stored_ids(core) == stored
    lines = [r.getMessage() for r in caplog.records if "[cache_untrusted]" in r.getMessage()]
    assert len(lines) == 1 and "SLIMSERVE_CACHE_KEY" in lines[0], lines


@pytest.mark.parametrize(("name", "kind"), ALL_CASES)
def test_every_corruption_is_refused_against_the_manifest_before_anything_is_parsed(
    name, kind, key, saved_variant, tmp_path
):
    if not (saved_variant / name).is_file():
        pytest.skip(f"this variant has no {name}")
    cache = _cache(tmp_path / "cache", SECRET)
    entry = _publish(tmp_path / "cache", key, saved_variant, SECRET)
    corrupt(entry, name, kind)
    with pytest.raises(CacheRefused) as refused:
        cache.fetch(key, tmp_path / "got")
    assert refused.value.reason == "cache_corrupted"
    assert name in str(refused.value) and ("missing" in str(refused.value)) == (kind == "missing")


def test_a_signed_entry_moved_under_another_key_or_with_a_forged_signature_is_refused(
    key, saved_variant, tmp_path
):
    cache = _cache(tmp_path / "cache", SECRET)
    entry = _publish(tmp_path / "cache", key, saved_variant, SECRET)
    other = "0" * 32
    moved = tmp_path / "cache" / "variants" / other
    (moved / entry.name).mkdir(parents=True)
    for f in entry.iterdir():
        (moved / entry.name / f.name).write_bytes(f.read_bytes())
    (moved / MANIFEST).write_bytes(_manifest_path(entry).read_bytes())
    with pytest.raises(CacheRefused, match="SLIMSERVE_CACHE_KEY"):
        cache.fetch(other, tmp_path / "got-moved")
    _tamper_and_recompute(entry)
    manifest = json.loads(_manifest_path(entry).read_text())
    forged = _cache(tmp_path / "cache", "another key")  # signed, with a key not shared
    manifest["hmac_sha256"] = forged._sign(key, manifest["files"])
    _manifest_path(entry).write_text(json.dumps(manifest))
    with pytest.raises(CacheRefused, match="SLIMSERVE_CACHE_KEY"):
        cache.fetch(key, tmp_path / "got-forged")
    manifest["hmac_sha256"] = 1
    _manifest_path(entry).write_text(json.dumps(manifest))
    with pytest.raises(CacheRefused) as refused:
        cache.fetch(key, tmp_path / "got-1")
    assert refused.value.reason == "cache_untrusted"
    for i, text in enumerate(("[]", "null", '{"files": [], "version": "x"}', "{")):
        _manifest_path(entry).write_text(text)
        with pytest.raises(CacheRefused) as refused:
            cache.fetch(key, tmp_path / f"got-{i}-garbage")
        assert refused.value.reason == "cache_corrupted"
