"""Neighbour recall of a shadow window (service.serving.shadow.recall_of) on made-up embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from service.serving.shadow import RECALL_K, Window, recall_of

pytestmark = pytest.mark.unit


def _pairs(variant: np.ndarray, original: np.ndarray):
    return list(zip(variant.astype(np.float32), original.astype(np.float32), strict=True))


def test_the_original_itself_keeps_every_neighbour():
    e = np.random.default_rng(0).normal(size=(64, 16))
    assert recall_of(_pairs(e, e)) == pytest.approx(1.0)


def test_shuffled_embeddings_keep_about_a_random_share():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(200, 16))
    recall = recall_of(_pairs(e[rng.permutation(200)], e))
    assert recall < 0.15  # chance: k of 199 others, 0.05


def test_too_few_distinct_samples_give_no_figure():
    e = np.random.default_rng(0).normal(size=(2 * RECALL_K, 16))
    assert recall_of(_pairs(e, e)) is None
    # 30 rows, but the same 10 sentences served three times: 10 distinct
    repeated = np.concatenate([e[:10]] * 3)
    assert recall_of(_pairs(repeated, repeated)) is None


def test_repeats_do_not_count_against_a_faithful_variant():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(40, 16))
    served = np.concatenate([e, e[:20]])  # 20 sentences served twice
    noisy = served + rng.normal(scale=1e-3, size=served.shape)  # a variant within 1e-3
    assert recall_of(_pairs(noisy, served)) == pytest.approx(1.0)


def test_the_window_keeps_its_last_samples_and_reports_recall():
    rng = np.random.default_rng(0)
    w = Window("cosine", size=50)
    for _ in range(4):
        e = rng.normal(size=(20, 8)).astype(np.float32)
        w.add(np.ones(20), {}, (e, e))
    assert len(w.pairs) == 50 and w.samples == 80
    assert w.summary()["neighbour_recall"] == pytest.approx(1.0)
