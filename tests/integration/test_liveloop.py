"""The closed loop in process: canaries promoted or dropped, a bad serving variant rolled back.

A real core serving the real digits-cnn; variants built by the real engine (a deliberately bad
one: 90 % of every layer's channels removed, accepted by a budget of 100 points); traffic is
real digit images through the runtime; the shadow thread measures agreement with the original.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from compression.profiles import PROFILES
from service.serving.core import Core
from service.serving.registry import ORIGINAL
from service.serving.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "digits-cnn"


def _variant_dir(bundle, tmp_path, ratio: float, max_drop: float):
    profile = PROFILES["cpu"].model_copy(
        update={
            "ratios": [ratio],
            "allocation": "uniform",
            "max_drop": max_drop,
            "quantization": "none",
            # Torch only: the runtime step would also offer ONNX Runtime of the original (a
            # faithful, faster variant); the bad variant must be the 90 % cut itself.
            "runtimes": ["torch"],
            "latency_repeats": 3,
        }
    )
    variant = bundle.compress(profile)
    assert variant.report.accepted, variant.report.reason
    return variant.save(tmp_path / f"v{int(ratio * 100)}")


@pytest.fixture(scope="module")
def variants(digits_cnn_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("variants")
    return {
        "bad": _variant_dir(digits_cnn_bundle, tmp, 0.9, 1.0),
        "good": _variant_dir(digits_cnn_bundle, tmp, 0.3, 0.01),
    }


@pytest.fixture
def core(tmp_path):
    settings = Settings(
        home=tmp_path,
        models=[NAME],
        profile="cpu",
        auto_compress=False,
        shadow_fraction=1.0,
        shadow_max_per_second=1000,
        shadow_window=64,
        shadow_min_samples=48,
        variant_cache=tmp_path / "cache",
    )
    core = Core(settings).start()
    yield core
    core.close()


def _traffic(core: Core, bundle, until, timeout: float = 180.0) -> int:
    """Send real digit images one at a time until ``until()`` holds; returns requests sent."""
    x = np.concatenate([b[0].numpy() for b in bundle.validation])
    sent = 0

    async def send() -> None:
        nonlocal sent
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until():
            rows = x[(sent * 4) % (len(x) - 4) :][:4]
            await core.plane.infer(NAME, rows)
            sent += 1
            await asyncio.sleep(0.002)  # let the shadow thread keep up, as real traffic would

    asyncio.run(send())
    core.runtime.models[NAME].queue = None  # the next asyncio.run gets a fresh queue
    return sent


def _eventually(read, timeout: float = 90.0):
    """``read()`` once it is truthy: the shadow thread acts right after the swap it makes."""
    deadline = time.monotonic() + timeout
    while not (value := read()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def _swaps(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("slimserve_swaps_total", {"model": NAME, "reason": reason}) or 0
    )


def test_a_bad_canary_is_dropped_and_a_good_one_promoted(core, variants, digits_cnn_bundle):
    bad = core.registry.add_variant(NAME, variants["bad"], "cpu")
    core.live.accepted(NAME, bad)
    assert core.shadow.canaries[NAME].variant == bad
    _traffic(core, digits_cnn_bundle, lambda: NAME not in core.shadow.canaries)
    assert NAME not in core.shadow.canaries, core.shadow.view(NAME)
    assert core.plane.served(NAME).active.variant == ORIGINAL  # never served
    (mark,) = _eventually(lambda: core.live.marks(NAME))
    assert mark["variant"] == bad and mark["when"] == "canary" and mark["ratio"] == 0.9
    assert mark["live"]["value"] < 0.95, mark
    fleet = core.fleet
    assert fleet.cache.manifest(fleet.key(NAME)) is None  # a dropped canary is never shared

    good = core.registry.add_variant(NAME, variants["good"], "cpu")
    before = _swaps("canary")
    core.live.accepted(NAME, good)
    _traffic(core, digits_cnn_bundle, lambda: core.plane.served(NAME).active.variant == good)
    assert core.plane.served(NAME).active.variant == good, core.shadow.view(NAME)
    assert _swaps("canary") == before + 1
    deadline = time.monotonic() + 30  # published by the shadow thread right after the swap
    # ... under the key of the profile it was compressed for: the key a replica computes.
    while fleet.cache.manifest(fleet.key(NAME)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    manifest = fleet.cache.manifest(fleet.key(NAME))  # the promoted variant is shared
    assert manifest is not None and "report.json" in manifest["files"]
    good_plan = core.registry.variant_path(NAME, good) / "plan.json"
    assert manifest["plan_sha256"] == hashlib.sha256(good_plan.read_bytes()).hexdigest()
    view = {row["id"]: row for row in core.variants_view(NAME)}
    assert view[good]["active"] and view[good]["live"]["value"] >= 0.95, view[good]
    assert view[bad]["live"]["rejected_live"] == "canary"
    samples = REGISTRY.get_sample_value(
        "slimserve_shadow_samples_total", {"model": NAME, "variant": good}
    )
    assert samples is not None and samples >= 48


def test_a_bad_serving_variant_is_rolled_back_and_recompressed(core, variants, digits_cnn_bundle):
    bad = core.registry.add_variant(NAME, variants["bad"], "cpu")
    core.variants.activate(NAME, bad)
    before = _swaps("live_fidelity")
    _traffic(core, digits_cnn_bundle, lambda: core.plane.served(NAME).active.variant != bad)
    assert core.plane.served(NAME).active.variant == ORIGINAL, core.shadow.view(NAME)
    deadline = time.monotonic() + 10  # the pointer is written right after the swap
    while core.registry.active(NAME) != ORIGINAL and time.monotonic() < deadline:
        time.sleep(0.05)
    assert core.registry.active(NAME) == ORIGINAL  # survives a restart
    assert _swaps("live_fidelity") == before + 1
    # The figures the rollback was decided on (the gauge moves on with later windows).
    (mark,) = [m for m in core.live.marks(NAME) if m["variant"] == bad]
    assert mark["live"]["metric"] == "top1" and mark["live"]["value"] < 0.95 - 0.01, mark
    # A new job on live traffic, with amounts below the rejected one's 90 %.
    (job,) = _eventually(core.jobs.list)
    spec_ratios = core.live.profile_update(NAME)["ratios"]
    assert spec_ratios and max(spec_ratios) < 0.9, spec_ratios
    core.jobs.cancel(job.id)


def test_shadow_work_is_skipped_when_its_queue_is_full(core, variants):
    from service.serving.runtime import Active

    served = core.plane.served(NAME)
    shadow = core.shadow
    shadow.close()  # nobody drains: the bounded queue fills and later samples are skipped
    variant = Active("v", "cpu", served.active.module)
    rows = [np.zeros((1, 1, 8, 8), dtype=np.float32)]
    out = np.zeros((1, 10), dtype=np.float32)
    for _ in range(shadow._queue.maxsize + 5):
        shadow.offer(served, variant, rows, out)
    assert shadow._queue.full() and shadow.skipped >= 5


def test_a_canary_is_judged_against_the_original_while_another_variant_serves(
    core, variants, digits_cnn_bundle
):
    # A job finishing while an earlier variant serves (e.g. the one a rollback queued): its
    # canary must still meet live traffic, measured against the original, not the server.
    serving = core.registry.add_variant(NAME, variants["good"], "cpu")
    core.variants.activate(NAME, serving)
    canary = core.registry.add_variant(NAME, variants["good"], "cpu")
    assert canary != serving
    core.live.accepted(NAME, canary)
    assert core.shadow.canaries[NAME].variant == canary
    _traffic(core, digits_cnn_bundle, lambda: core.plane.served(NAME).active.variant == canary)
    assert core.plane.served(NAME).active.variant == canary, core.shadow.view(NAME)
    view = core.shadow.view(NAME)
    # Both windows filled from the same traffic: the canary's against the original, and the
    # serving variant's own (its rollback check went on meanwhile).
    assert view[canary]["samples"] >= 48 and view[canary]["value"] >= 0.95, view
    assert view[serving]["samples"] > 0, view
