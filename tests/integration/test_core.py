"""The service core in process: live-traffic calibration, jobs, refusal of a tampered variant."""

import asyncio
import time

import numpy as np
import pytest

from service.serving.core import Core
from service.serving.registry import ORIGINAL
from service.serving.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def fast_settings(fast_profiles_dir):
    """Settings of a core serving digits-mlp whose jobs compress with the fast profile
    (tests/conftest.py: the cpu profile's steps, fewer timing rounds, smaller calibration)."""

    def make(home, **kw) -> Settings:
        # canary=False: an accepted variant serves at once (the live loop has its own tests).
        return Settings(
            home=home,
            models=["digits-mlp"],
            profile="fast",
            profiles_dir=fast_profiles_dir,
            canary=False,
            **kw,
        )

    return make


@pytest.fixture
def started():
    """Start cores; close each at the end (jobs cancelled, threads and gc settings restored)."""
    cores: list[Core] = []

    def start(settings: Settings) -> Core:
        cores.append(Core(settings).start())
        return cores[-1]

    yield start
    for core in cores:
        core.close()


def _wait(core: Core, job_id: str, timeout: float = 600) -> dict:
    # Longer than the runner's own limit (time_limit_s * 1.2 + 60 s): the job ends first.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = core.jobs.jobs[job_id]
        if job.state not in ("queued", "running"):
            return job.detail()
        time.sleep(0.5)
    raise TimeoutError(job_id)


def _requests(core: Core, n: int) -> None:
    rng = np.random.default_rng(0)

    async def send():
        for _ in range(n):
            await core.plane.infer("digits-mlp", rng.random((1, 1, 8, 8), dtype=np.float32))
        await core.runtime.close()

    asyncio.run(send())


def test_live_traffic_calibration_compresses_by_fidelity(tmp_path, started, fast_settings):
    core = started(
        fast_settings(tmp_path, calibration="live", live_min_samples=32, reservoir_size=64)
    )
    assert core.runtime.models["digits-mlp"].reservoir is not None
    assert core.jobs.list() == []  # waits for traffic
    _requests(core, 80)
    deadline = time.monotonic() + 30
    while not core.jobs.list() and time.monotonic() < deadline:
        time.sleep(0.2)
    (job,) = core.jobs.list()
    detail = _wait(core, job.id)
    assert detail["state"] in ("succeeded", "rejected"), detail
    report = detail["report"]
    assert report["metric"] == "cosine"  # no labels in live traffic: fidelity to the original
    assert report["macs_after"] <= report["macs_before"]
    assert len(core.runtime.models["digits-mlp"].reservoir.items) == 64


def test_light_models_get_one_torch_thread_whatever_the_budget(tmp_path, started, fast_settings):
    # digits-mlp's forward costs a few microseconds per sample: HTTP dominates, one thread.
    core = started(fast_settings(tmp_path, auto_compress=False, threads=3))
    assert core.thread_budget == 3 and core.plane.served("digits-mlp").threads == 1


def test_cancelled_job_leaves_the_original_serving(tmp_path, started, fast_settings):
    core = started(fast_settings(tmp_path, auto_compress=False))
    job = core.variants.compress("digits-mlp")
    time.sleep(1.0)
    core.jobs.cancel(job.id)
    detail = _wait(core, job.id)
    assert detail["state"] == "cancelled"
    assert core.runtime.models["digits-mlp"].active.variant == ORIGINAL
    assert core.registry.active("digits-mlp") == ORIGINAL


def test_tampered_variant_is_refused_at_restart(tmp_path, started, fast_settings):
    core = started(fast_settings(tmp_path, auto_compress=False))
    detail = _wait(core, core.variants.compress("digits-mlp").id)
    assert detail["state"] == "succeeded", detail
    vid = detail["variant"]
    assert core.runtime.models["digits-mlp"].active.variant == vid
    # Rollback and re-activation swap resident modules: nothing is reloaded.
    module = core.plane.served("digits-mlp").active.module
    assert core.variants.rollback("digits-mlp")["active_variant"] == ORIGINAL
    core.variants.activate("digits-mlp", vid)
    assert core.plane.served("digits-mlp").active.module is module
    weights = core.registry.variant_path("digits-mlp", vid) / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    restarted = started(fast_settings(tmp_path, auto_compress=False))
    assert restarted.runtime.models["digits-mlp"].active.variant == ORIGINAL
    with pytest.raises(Exception, match="checksum"):
        restarted.variants.activate("digits-mlp", vid)
    assert restarted.runtime.models["digits-mlp"].active.variant == ORIGINAL
