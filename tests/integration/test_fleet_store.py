"""The fleet's store and lease, on a directory and on a real S3 server (SeaweedFS on localhost).

What a fleet relies on: ``create`` lets exactly one of many racing writers win; a lease is held
by one replica, renewed by it, taken over only once it expired, and its old holder learns it
lost it; an entry is read only whole, and every flipped, truncated or missing object is refused
with the reason before anything is parsed.
"""

from __future__ import annotations

import threading

import pytest

from service.serving.cache import CacheRefused, VariantCache
from service.serving.lease import Lease
from service.serving.stores import DirStore, S3Store, open_store

pytestmark = pytest.mark.integration


@pytest.fixture(params=["dir", "s3"])
def store(request, tmp_path, s3_server):
    if request.param == "dir":
        return DirStore(tmp_path / "store")
    return S3Store(s3_server.bucket, f"t/{tmp_path.name}", client=s3_server.client())


def test_open_store_reads_the_setting(tmp_path, s3_server, monkeypatch):
    s3 = s3_server
    assert isinstance(open_store(tmp_path / "d"), DirStore)
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    remote = open_store(s3.url_for("fleet/a"))
    assert isinstance(remote, S3Store) and (remote.bucket, remote.prefix) == (s3.bucket, "fleet/a")
    remote.write("x/y.json", b"{}")  # boto3's own credential and endpoint sources
    assert remote.read("x/y.json") == b"{}" and remote.names("x") == ["x/y.json"]
    with pytest.raises(ValueError, match="s3://bucket"):
        open_store("s3://")


def test_create_lets_exactly_one_of_many_racing_writers_win(store):
    def race(i: int, name: str, barrier: threading.Barrier, wins: list[int]) -> None:
        barrier.wait()  # all eight write at once
        if store.create(name, str(i).encode()):
            wins.append(i)

    for trial in range(3):
        wins: list[int] = []
        barrier = threading.Barrier(8)
        name = f"race/{trial}.json"
        threads = [threading.Thread(target=race, args=(i, name, barrier, wins)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1, wins
        assert store.read(f"race/{trial}.json") == str(wins[0]).encode()
    store.write("race/0.json", b"replaced")
    assert store.read("race/0.json") == b"replaced"
    assert store.names("race") == ["race/0.json", "race/1.json", "race/2.json"]
    store.delete("race/0.json")
    assert store.read("race/0.json") is None and store.read("nothing/here") is None
    with pytest.raises(ValueError, match="not a store object name"):
        store.read("../escape")


def test_a_lease_is_held_renewed_taken_over_once_expired_and_the_old_holder_learns_it(store):
    now = [1000.0]
    a, b, c = (Lease(store, "k", h, ttl_s=30, clock=lambda: now[0]) for h in "abc")
    assert a.acquire() and a.generation == 1
    assert not b.acquire()  # held
    now[0] += 20
    assert a.renew()  # expires at 1050 now
    now[0] += 20  # 1040: the renewal kept it
    assert not b.acquire()
    now[0] += 11  # 1051: a stopped renewing (died) and its lease expired
    assert b.acquire() and b.generation == 2
    assert not c.acquire()
    assert not a.renew() and not a.held  # a higher generation: a lost it
    b.release()
    assert c.acquire() and c.generation == 3  # a released lease is free at once


def test_an_entry_is_refused_when_an_object_is_flipped_truncated_or_missing(store, tmp_path):
    variant = tmp_path / "v"
    variant.mkdir()
    (variant / "weights.safetensors").write_bytes(bytes(range(256)) * 8)
    (variant / "plan.json").write_text('{"not": "checked here"}')
    (variant / "report.json").write_text('{"accepted": true}')
    cache = VariantCache(store)
    assert cache.put("k" * 32, variant)
    version = cache.manifest("k" * 32)["version"]
    name = f"variants/{'k' * 32}/{version}/weights.safetensors"
    good = store.read(name)
    for i, (bad, why) in enumerate(
        [
            (good[:100] + bytes([good[100] ^ 1]) + good[101:], "sha256"),
            (good[: len(good) // 2], "sha256"),
            (None, "missing"),
        ]
    ):
        if bad is None:
            store.delete(name)
        else:
            store.write(name, bad)
        with pytest.raises(CacheRefused, match=why) as refused:
            cache.fetch("k" * 32, tmp_path / f"got-{i}")
        assert refused.value.reason == "cache_corrupted"
