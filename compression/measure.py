"""Measure what a variant costs: multiply-accumulates, parameters, and latency on the device.

Latency is the median of ``repeats`` timed forwards after a warm-up, on the same batch before
and after compression, with the profile's thread count, so speed-ups compare like with like.
On CUDA each forward is timed by a pair of CUDA events around it, after the device has drained:
the time from the first kernel's launch to the last one's end, host-side launch gaps included
(for a small model those gaps are most of its latency, and serving pays them too).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch
from torch import nn

from compression import graph
from compression.inputs import Batch, call


@contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` torch threads (unchanged when None)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cuda_latency_ms(
    model: nn.Module, batch: Batch, repeats: int, warmup: int, min_seconds: float
) -> float:
    """:func:`latency_ms` on CUDA: events time each forward on the device's own clock."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(max(warmup, 5)):  # cuDNN/cuBLAS pick their kernels on the first calls
            call(model, batch)
        torch.cuda.synchronize()
        started = time.perf_counter()
        while len(times) < repeats or (
            time.perf_counter() - started < min_seconds and len(times) < 1000
        ):
            torch.cuda.synchronize()  # nothing queued before the start event
            start.record()
            call(model, batch)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def latency_ms(
    model: nn.Module,
    batch: Batch,
    device: str = "cpu",
    repeats: int = 15,
    warmup: int = 3,
    min_seconds: float = 0.3,
) -> float:
    """Median wall time of one forward on ``batch`` in milliseconds.

    At least ``repeats`` timed runs, and more (up to 1000) until ``min_seconds`` have passed:
    a 1 ms model gets hundreds of samples, so one scheduler hiccup cannot move the median.
    ``device`` ``cuda`` (or ``cuda:N``) times with CUDA events (see the module docstring).
    """
    if device.startswith("cuda"):
        with torch.cuda.device(torch.device(device)):
            return _cuda_latency_ms(model, batch, repeats, warmup, min_seconds)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            call(model, batch)
        started = time.perf_counter()
        while len(times) < repeats or (
            time.perf_counter() - started < min_seconds and len(times) < 1000
        ):
            start = time.perf_counter()
            call(model, batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def macs_params(model: nn.Module, example_inputs: Batch) -> tuple[int, int]:
    """MACs of one forward on ``example_inputs`` and the parameter count (float models)."""
    return graph.count_macs_params(model, example_inputs)
