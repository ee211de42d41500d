"""Latency screening: how many forwards a measurement runs (counted, not timed)."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from compression.evaluation.measure import latency_ms

pytestmark = pytest.mark.unit


class Counted(nn.Module):
    """Sleeps ``ms`` per forward and counts its calls."""

    def __init__(self, ms: float) -> None:
        super().__init__()
        self.ms, self.calls = ms, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.ms / 1000)
        return x


def test_a_screening_slower_than_the_bar_stops_at_its_first_timed_run():
    model = Counted(5.0)
    ms = latency_ms(model, torch.zeros(1), repeats=10, warmup=1, slower_than_ms=1.0)
    assert model.calls == 2, model.calls  # one warm-up, one timed run
    assert ms >= 5.0


def test_a_screening_under_the_bar_takes_all_its_repeats():
    model = Counted(1.0)
    latency_ms(model, torch.zeros(1), repeats=10, warmup=1, min_seconds=0.0, slower_than_ms=1e4)
    assert model.calls == 11, model.calls
