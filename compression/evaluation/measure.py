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

from compression.core.inputs import Batch, call
from compression.structure import graph


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


def _enough(
    times: list[float],
    repeats: int,
    elapsed: float,
    lo: float,
    hi: float | None,
    slower_than: float | None = None,
) -> bool:
    """Whether timing can stop: ``repeats`` samples (fewer, but at least 3, once ``hi`` seconds
    have passed) and ``lo`` seconds, or 1000 samples; or a first sample over ``slower_than``
    (in the samples' unit)."""
    if len(times) >= 1000:
        return True
    if slower_than is not None and len(times) == 1 and times[0] > slower_than:
        return True
    if hi is not None and elapsed >= hi and len(times) >= 3:
        return True
    return len(times) >= repeats and elapsed >= lo


def _cuda_latency_ms(
    model: nn.Module,
    batch: Batch,
    repeats: int,
    warmup: int,
    min_seconds: float,
    max_seconds: float | None,
    slower_than_ms: float | None,
) -> float:
    """:func:`latency_ms` on CUDA: events time each forward on the device's own clock."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(max(warmup, 5)):  # cuDNN/cuBLAS pick their kernels on the first calls
            call(model, batch)
        torch.cuda.synchronize()
        started = time.perf_counter()
        while not _enough(
            times, repeats, time.perf_counter() - started, min_seconds, max_seconds, slower_than_ms
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
    max_seconds: float | None = None,
    slower_than_ms: float | None = None,
) -> float:
    """Median wall time of one forward on ``batch`` in milliseconds.

    At least ``repeats`` timed runs, and more (up to 1000) until ``min_seconds`` have passed:
    a 1 ms model gets hundreds of samples, so one scheduler hiccup cannot move the median.
    ``max_seconds`` caps a slow forward's timing (at least 3 runs): a screening measurement,
    whose close contenders are re-timed side by side before any choice
    (:func:`compression.search.verify.confirm_latencies`).
    ``slower_than_ms``: a screening stops at its first timed run when that run is slower (the
    candidate cannot be a contender; its one figure stands).
    ``device`` ``cuda`` (or ``cuda:N``) times with CUDA events (see the module docstring).
    """
    if device.startswith("cuda"):
        with torch.cuda.device(torch.device(device)):
            return _cuda_latency_ms(
                model, batch, repeats, warmup, min_seconds, max_seconds, slower_than_ms
            )
    times: list[float] = []  # seconds
    bar = None if slower_than_ms is None else slower_than_ms / 1000.0
    with torch.inference_mode():
        for _ in range(warmup):
            call(model, batch)
        started = time.perf_counter()
        while not _enough(
            times, repeats, time.perf_counter() - started, min_seconds, max_seconds, bar
        ):
            start = time.perf_counter()
            call(model, batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def side_by_side_ms(
    models: list[nn.Module], batch: Batch, device: str = "cpu", rounds: int = 3
) -> list[float]:
    """Each model's median latency over ``rounds`` interleaved rounds (a few timed runs of
    each in turn, round after round): every model meets the same load, so a busy moment on a
    shared machine cannot make one look faster than another. A slow forward (one over 0.1 s,
    such as MiniLM's padded original) runs twice a round, a fast one for 0.1 s; one warm-up run
    each, in the first round (they stay warm)."""
    times: list[list[float]] = [[] for _ in models]
    for i in range(rounds):
        for model, got in zip(models, times, strict=True):
            got.append(latency_ms(model, batch, device, 2, int(i == 0), min_seconds=0.1))
    return [statistics.median(t) for t in times]


def macs_params(model: nn.Module, example_inputs: Batch) -> tuple[int, int]:
    """MACs of one forward on ``example_inputs`` and the parameter count (float models)."""
    return graph.count_macs_params(model, example_inputs)
