"""Task pruning in the engine: a head trained on a frozen encoder, compressed against labels."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from compression import PROFILES, load_variant
from compression.core.errors import DataError
from compression.task import Task, compress_task, evaluate, fit_head, rebuild_task_model

pytestmark = pytest.mark.unit


def _parity_batches():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y % 2)  # 0 even, 1 odd
    batches = [(x[i : i + 128], y[i : i + 128]) for i in range(0, len(x), 128)]
    return batches[:10], batches[10:]  # 1280 train, 517 validation


def _encoder() -> nn.Module:
    torch.manual_seed(0)  # a frozen random encoder: its features still separate parity
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64)
    ).eval()


def test_task_checks_its_labels():
    train, _ = _parity_batches()
    with pytest.raises(DataError, match="at least 2"):
        Task(train=train, labels=["only"])
    with pytest.raises(DataError, match=r"label ids must lie in 0..1"):
        Task(train=[(train[0][0], train[0][1] + 5)], labels=["even", "odd"])
    with pytest.raises(DataError, match="every training label is 'even'"):
        Task(train=[(train[0][0], torch.zeros(128, dtype=torch.long))], labels=["even", "odd"])
    with pytest.raises(DataError, match="task head 'tree'"):
        Task(train=train, labels=["even", "odd"], head="tree")


def test_the_head_learns_the_task_on_frozen_features():
    train, validation = _parity_batches()
    encoder = _encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model, summary = fit_head(encoder, Task(train=train, labels=["even", "odd"], head_seconds=20))
    metrics = evaluate(model, validation)
    assert metrics["accuracy"] >= 0.8, metrics  # chance is 0.5
    assert metrics["macro_f1"] >= 0.8, metrics
    assert summary["train_accuracy"] >= metrics["accuracy"] - 0.05, summary
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())


def test_compressed_task_model_keeps_accuracy_and_reloads_exactly(tmp_path):
    train, validation = _parity_batches()
    task = Task(train=train, labels=["even", "odd"], head_seconds=20, finetune_seconds=0)
    profile = PROFILES["cpu"].model_copy(update={"quantization": "none", "latency_repeats": 3})
    variant = compress_task(_encoder(), profile, task, validation=validation)
    r = variant.report
    before, after = r.task_metrics["before"], r.task_metrics["after"]
    assert set(after) == {"accuracy", "macro_f1", "precision", "recall"}
    assert r.accepted, r.reason
    assert before["accuracy"] - after["accuracy"] <= profile.max_drop + 1e-9, r.task_metrics
    # The drop is claimed as a bound (compression.search.claims): the disagreement with the
    # original over every unseen input, or the paired drop plus its error, whichever is lower.
    assert r.claim["samples"] == 258 and "disagreement" in r.claim["method"], r.claim
    assert r.metric_before - r.metric_after <= profile.max_drop + 1e-9, r.claim
    assert r.macs_reduction > 1.1, r.macs_reduction
    assert r.task["labels"] == ["even", "odd"] and r.task["classes"] == 2
    variant.save(tmp_path / "v")
    fresh = rebuild_task_model(_encoder(), variant.plan["task"])
    again = load_variant(tmp_path / "v", model=fresh)
    x = validation[0][0]
    with torch.inference_mode():
        assert torch.equal(again.module(x), variant.module(x))


def test_compress_with_task_is_the_same_door():
    from compression import compress

    train, validation = _parity_batches()
    task = Task(train=train, labels=["even", "odd"], head_seconds=5, finetune_seconds=0)
    profile = PROFILES["cpu"].model_copy(
        update={"quantization": "none", "latency_repeats": 3, "ratios": [0.3]}
    )
    variant = compress(_encoder(), profile, task=task, validation=validation)
    assert variant.report.metric == "accuracy" and variant.report.task_metrics is not None
    assert variant.module(validation[0][0]).shape == (len(validation[0][0]), 2)
    with pytest.raises(DataError, match="example_inputs= and calibration="):
        compress(_encoder(), profile)
