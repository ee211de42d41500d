"""The live loop's decisions on few samples: one-sided 95 % bounds before the window is full,
the mean with its hysteresis once it is; and top-1 agreement per sample for class scores with
several positions."""

from __future__ import annotations

import numpy as np
import pytest

from service.serving.liveloop import decision
from service.serving.shadow import Window, agreement, reading_of

pytestmark = pytest.mark.unit
BUDGET, SLACK = 0.95, 0.01  # the service's defaults (live_min_agreement, live_hysteresis)


def _top1(agree: int, n: int, size: int = 64) -> Window:
    w = Window("top1", size)
    w.add(np.array([1.0] * agree + [0.0] * (n - agree)), {})
    return w


@pytest.mark.parametrize(
    ("agree", "n", "low", "high"),
    [(48, 48, 0.9466, 1.0), (47, 48, 0.9119, 0.9953), (45, 48, 0.8536, 0.9747),
     (34, 48, 0.5916, 0.8028), (63, 64, 0.9329, 0.9965)],
)  # fmt: skip
def test_top1_bounds_are_wilson_one_sided_95(agree, n, low, high):
    # Wilson's interval at the level Z_CLAIM gives each side (scipy; 1.645 is 95.0 % to 1e-4).
    assert _top1(agree, n).bounds() == pytest.approx((low, high), abs=1e-4)


def test_cosine_bounds_are_the_mean_within_1645_standard_errors():
    w = Window("cosine", 256)
    values = np.linspace(0.94, 1.0, 61)
    w.add(values, {})
    lo, hi = w.bounds()
    error = 1.645 * values.std(ddof=1) / np.sqrt(len(values))
    assert lo == pytest.approx(values.mean() - error) and hi == pytest.approx(values.mean() + error)


def test_a_canary_that_disagrees_on_3_of_48_is_measured_on_not_dropped():
    # The point estimate (0.9375 < 0.94) dropped it. A variant that truly disagrees on 2 % of
    # inputs shows 3 or more of 48 with probability scipy.stats.binom.sf(2, 48, 0.02) = 0.071.
    assert decision(_top1(45, 48), BUDGET, SLACK) == (False, False)


def test_clear_evidence_decides_before_the_window_is_full():
    assert decision(_top1(48, 48), BUDGET, SLACK) == (True, False)  # lower bound 0.9466
    assert decision(_top1(34, 48), BUDGET, SLACK) == (False, True)  # upper bound 0.8028
    assert decision(_top1(47, 48), BUDGET, SLACK) == (False, False)  # 0.9119 .. 0.9953


def test_a_full_window_decides_on_its_mean_with_the_hysteresis():
    assert decision(_top1(62, 64), BUDGET, SLACK) == (True, False)  # 0.969, lower bound 0.91
    assert decision(_top1(60, 64), BUDGET, SLACK) == (False, True)  # 0.9375 < 0.94
    assert decision(_top1(61, 64), BUDGET, SLACK) == (True, False)  # 0.953
    assert decision(_top1(94, 100, size=100), BUDGET, SLACK) == (False, False)  # in the band


def test_class_scores_per_position_agree_only_where_every_position_does():
    rng = np.random.default_rng(0)
    original = rng.normal(size=(4, 7, 5)).astype(np.float32)  # 4 samples, 7 steps, 5 classes
    variant = original.copy()
    step = variant[1, 3]
    step[original[1, 3].argmax()] = step.min() - 1.0  # one step of sample 1 flips its class
    metric, values, extra = agreement(variant, original, embedding=False)
    assert metric == "top1" and values.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert extra["tv_distance"].shape == (4,) and extra["tv_distance"][1] > 0
    assert extra["tv_distance"][[0, 2, 3]].tolist() == [0.0, 0.0, 0.0]


def test_a_classifier_row_still_agrees_on_its_top_class():
    original = np.array([[0.1, 2.0, 0.3], [1.0, 0.0, 0.5]], dtype=np.float32)
    variant = np.array([[0.2, 1.5, 0.3], [0.0, 1.0, 0.5]], dtype=np.float32)
    assert agreement(variant, original, embedding=False)[1].tolist() == [1.0, 0.0]


def test_the_live_loop_reads_outputs_as_verification_did():
    # A CTC variant's report: the decoded sequence decides (blank 0), live as in verification.
    report = {"metric": "sequence", "metric_reading": {"metric": "sequence", "why": "", "blank": 0}}
    reading = reading_of(report)
    eye = np.eye(4, dtype=np.float32)
    original = eye[[[0, 2, 2, 0, 3], [1, 0, 0, 0, 0]]]  # decodes "2 3" and "1"
    variant = eye[[[2, 0, 0, 3, 3], [1, 0, 1, 0, 0]]]  # "2 3" again; "1 1" is another answer
    metric, values, extra = agreement(variant, original, False, reading)
    assert metric == "sequence" and values.tolist() == [1.0, 0.0] and "tv_distance" in extra
    # Per position, the plain top-1 rule would have failed both samples.
    assert agreement(variant, original, False)[1].tolist() == [0.0, 0.0]
    # A segmentation variant: the argmax maps' IoU (class 1 lost one of two pixels: 0.5; the
    # background keeps 2 of 3: mean 0.583).
    seg = {"metric": "iou", "metric_reading": {"metric": "iou", "why": ""}}
    maps = np.zeros((1, 2, 2, 2), dtype=np.float32)
    maps[0, 1, 0, :] = 5.0
    other = maps.copy()
    other[0, 1, 0, 1] = -5.0
    metric, values, _ = agreement(other, maps, False, reading_of(seg))
    assert metric == "iou" and values.tolist() == pytest.approx([(0.5 + 2 / 3) / 2])
    assert reading_of({"metric": "accuracy"}) is None  # labelled: the top class, as before
