"""Neighbour recall: the embedding-space check beside cosine fidelity."""

import pytest
import torch

from compression.evaluation.metrics import neighbour_recall

pytestmark = pytest.mark.unit


def test_neighbour_recall_is_one_for_the_same_geometry_and_chance_for_none():
    g = torch.Generator().manual_seed(0)
    ref = [torch.randn(100, 16, generator=g), torch.randn(100, 16, generator=g)]
    assert neighbour_recall([2.0 * r for r in ref], ref) == 1.0  # scale: same neighbours
    unrelated = [torch.randn(100, 16, generator=g) for _ in ref]
    chance = 10 / 199  # 10 of the 199 other sentences, picked blindly
    assert neighbour_recall(unrelated, ref) == pytest.approx(chance, abs=0.04)
