"""Output kinds: which figure judges a variant, decided from the original's outputs, and the
one-sided bounds its claims rest on (compression.evaluation.kinds, bounds; search.claims)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from torch import nn

from compression import PROFILES, compress
from compression.evaluation import bounds, kinds

pytestmark = pytest.mark.unit

G = torch.Generator().manual_seed(0)


def _confident(shape: tuple[int, ...], dim: int = -1) -> torch.Tensor:
    """Class scores whose softmax is sure of one class per position."""
    scores = torch.randn(*shape, generator=G)
    top = torch.randint(
        0, shape[dim], tuple(s for i, s in enumerate(shape) if i != dim % len(shape)), generator=G
    )
    return scores + 8.0 * nn.functional.one_hot(top, shape[dim]).movedim(-1, dim)


def test_class_scores_per_sample_are_read_by_their_top_class():
    reading = kinds.detect(_confident((64, 10)), torch.zeros(64, 4))
    assert reading.metric == "top1" and "per sample" in reading.why


def test_hidden_states_are_read_as_embeddings():
    hidden = torch.randn(16, 12, 384, generator=G)  # MiniLM-like: no coordinate stands out
    batch = {
        "input_ids": torch.ones(16, 12, dtype=torch.long),
        "attention_mask": torch.ones(16, 12),
    }
    assert kinds.detect(hidden, batch).metric == "cosine"


def test_one_huge_coordinate_does_not_make_a_hidden_state_class_scores():
    hidden = torch.randn(64, 32, generator=G)
    hidden[:, 3] += 50.0  # the softmax is sure, but of one coordinate on every row
    reading = kinds.detect(hidden, torch.zeros(64, 4))
    assert reading.metric == "cosine" and "100.0%" in reading.why


def test_a_token_tagger_is_read_per_real_token():
    mask = torch.ones(8, 10)
    mask[:, 7:] = 0
    batch = {"input_ids": torch.ones(8, 10, dtype=torch.long), "attention_mask": mask}
    reading = kinds.detect(_confident((8, 10, 5)), batch)
    assert reading.metric == "top1" and "per token" in reading.why
    a = torch.zeros(2, 10, 5)
    a[..., 1] = 5.0
    b = a.clone()
    b[0, 8, 2] = 9.0  # a padding position: not counted
    b[1, 0, 2] = 9.0  # one real token of seven flips
    tmask = {"attention_mask": mask[:2]}
    rows = kinds.agreement_rows(
        kinds.answers(b, tmask, reading), kinds.answers(a, tmask, reading), reading
    )
    assert rows.tolist() == pytest.approx([1.0, 6 / 7])


def test_per_step_scores_without_tokens_are_one_decoded_sequence():
    scores = torch.full((32, 12, 6), -5.0)
    scores[..., 0] = 5.0  # the blank wins most steps
    scores[:, 3, 0], scores[:, 3, 2] = -5.0, 5.0
    scores[:, 7, 0], scores[:, 7, 4] = -5.0, 5.0
    reading = kinds.detect(scores, torch.zeros(32, 1, 8, 48))
    assert reading.metric == "sequence" and reading.blank == 0
    # "2 4" decoded from two paths: a repeat merges, the blank's place does not matter
    path = torch.tensor([[0, 2, 2, 0, 4, 0], [2, 0, 0, 4, 4, 4], [2, 0, 2, 4, 0, 0]])
    decoded = kinds.answers(nn.functional.one_hot(path, 6).float(), None, reading)
    assert decoded[0, :3].tolist() == [2, 4, -1] and decoded[1, :3].tolist() == [2, 4, -1]
    rows = kinds.agreement_rows(decoded, decoded[[0, 0, 0]], reading)
    assert rows.tolist() == [1.0, 1.0, 0.0]  # "2 2 4" is another answer


def test_maps_are_compared_by_intersection_over_union():
    scores = _confident((4, 3, 8, 8), dim=1)
    reading = kinds.detect(scores, torch.zeros(4, 3, 8, 8))
    assert reading.metric == "iou" and "per pixel" in reading.why
    one = kinds.detect(torch.randn(4, 1, 8, 8, generator=G), torch.zeros(4, 1, 8, 8))
    assert one.metric == "iou" and one.threshold == 0.0
    want = torch.zeros(2, 4, 4, dtype=torch.long)
    want[:, :2] = 1  # 8 foreground pixels
    got = want.clone()
    got[0, 2, 0] = 1  # one more: 8 / 9
    got[1] = 0  # foreground lost
    assert kinds.agreement_rows(got, want, one).tolist() == pytest.approx([8 / 9, 0.0])
    empty = torch.zeros(1, 4, 4, dtype=torch.long)
    assert kinds.agreement_rows(empty, empty, one).tolist() == [1.0]  # both empty: agree
    multi = torch.tensor([[[0, 1], [2, 2]]])
    other = torch.tensor([[[0, 1], [2, 1]]])  # class 0: 1/1, class 1: 1/2, class 2: 1/2
    assert kinds.agreement_rows(other, multi, reading).tolist() == pytest.approx([2 / 3])


def test_bound_arithmetic():
    assert doctest.testmod(bounds).failed == 0
    low, high = bounds.rate_interval(0, 100)
    assert low == 0.0 and high == pytest.approx(1.645**2 / (100 + 1.645**2), abs=2e-4)
    low, _ = bounds.interval(np.array([1.0] * 190 + [0.0] * 10))
    assert low == pytest.approx(0.9181, abs=1e-4)  # Wilson, not the normal 0.9246
    low, high = bounds.interval(np.array([0.9, 0.8, 1.0, 0.7]))
    assert (low, high) == pytest.approx((0.85 - 1.645 * 0.129099 / 2, 0.85 + 1.645 * 0.129099 / 2))
    assert bounds.samples_for_rate(0.0, 0.01) == 268
    assert bounds.samples_for_rate(0.02, 0.01) is None
    assert bounds.samples_for_mean(0.97, 0.1, 0.98) == 271


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 4)
        with torch.no_grad():
            self.head.weight.mul_(30.0)  # a sure classifier: its top class is what users read
            for layer in (self.body[0], self.body[2]):  # dead neurons: a cut of them is exact
                layer.weight[:16] = 0.0
                layer.bias[:16] = -1.0

    def forward(self, x):
        return self.head(self.body(x))


def test_a_refusal_names_the_metric_and_the_samples_that_would_verify_it():
    x = torch.randn(296, 16, generator=G)
    profile = PROFILES["cpu"].model_copy(
        update={
            "runtimes": ["torch"],
            "quantization": "none",
            "cpu_bfloat16": False,
            "ratios": [0.1],
            "min_fidelity": 0.99,
            "calibration_size": 256,
            "latency_repeats": 3,
        }
    )
    variant = compress(
        _Classifier(),
        profile,
        example_inputs=x[:4],
        calibration=[x[:256]],
        validation=[(x[256:], None)],  # 20 confirm: even all agreeing bound only 0.88
    )
    r = variant.report
    assert r.metric == "top1" and r.metric_reading["metric"] == "top1"
    assert not r.accepted
    assert "top1" in r.reason and "on 20 samples" in r.reason, r.reason
    assert "unseen inputs (has 20) would bound" in r.reason, r.reason
    assert r.claim["samples"] == 20


def test_the_pool_lends_its_size_not_a_lower_rate():
    from compression.search.claims import _disagreement_bound

    pool = np.zeros(1000)
    pool[:2] = 1.0  # 2 of 1000 unseen inputs disagree (training-like data: the model is sure)
    assert _disagreement_bound(pool, 0.0) == pytest.approx(0.0060, abs=1e-4)
    # the confirmation split disagreed on 4 %: the pool's bound starts from that rate
    assert _disagreement_bound(pool, 0.04) == pytest.approx(0.0515, abs=1e-4)
