"""The runtime's device: resolution, batch sizes, placement of variants (CPU side; the CUDA
side runs in tests/integration/test_gpu.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from compression.forms import precision
from service.serving.adapters import ImageAdapter
from service.serving.runtime import (
    CPU_MAX_BATCH_SIZE,
    GPU_MAX_BATCH_SIZE,
    Active,
    Runtime,
    resolve_device,
)

pytestmark = pytest.mark.unit


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 64, 10),
    ).eval()


def test_resolve_device():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(RuntimeError):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_batch_size_defaults_by_device_and_an_explicit_one_wins():
    assert Runtime(max_batch_size=None, device="cpu").max_batch_size == CPU_MAX_BATCH_SIZE
    assert Runtime(max_batch_size=64, device="cpu").max_batch_size == 64
    assert GPU_MAX_BATCH_SIZE > CPU_MAX_BATCH_SIZE


def test_a_variant_already_on_the_device_is_served_as_is():
    module = _cnn()
    rt = Runtime(device="cpu")
    active = Active("v1", "cpu", module)
    assert rt.place(active) is active
    rt.add("m", ImageAdapter("m"), active)
    assert rt.models["m"].active.module is module and rt.device_of("m") == "cpu"
    int8 = Active("v2", "cpu", precision.apply(module, "float32", "int8-dynamic"))
    assert rt.place(int8) is int8  # int8-dynamic kernels are CPU-only: never moved


def test_a_half_precision_variant_serves_float32_rows():
    """What a GPU serves (a float16/bfloat16 variant) takes and returns float32 on the wire;
    on the CPU bfloat16 stands in for both."""
    module = _cnn()
    rows = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    rt = Runtime(device="cpu")
    rt.add(
        "m", ImageAdapter("m"), Active("half", "gpu", precision.apply(module, "bfloat16", "none"))
    )

    async def run():
        out, active = await rt.infer("m", rows)
        await rt.close()
        return out, active

    out, active = asyncio.run(run())
    with torch.inference_mode():
        ref = module(torch.from_numpy(rows)).numpy()
    assert out.dtype == np.float32 and out.shape == (5, 10) and active.variant == "half"
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    assert err < 0.05, f"bfloat16 relative error {err:.4f}"
