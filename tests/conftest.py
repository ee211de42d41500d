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

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits_cnn_bundle():
    from service.models.sources import resolve

    return resolve("digits-cnn")


@pytest.fixture(scope="session")
def minilm_bundle():
    from service.models.sources import resolve

    return resolve("minilm")
