"""Causal language models verify by next-token perplexity, as a ratio to the original."""

import math

import pytest
import torch

from compression import compress
from compression.evaluation import metrics
from compression.profiles import DeviceProfile, profile_from_dict

pytestmark = pytest.mark.unit


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=4, n_positions=32)
    return GPT2LMHeadModel(config).eval()


def _text(n=16, length=12, seed=0):
    ids = torch.randint(0, 50, (n, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_perplexity_matches_the_models_own_loss():
    model = _tiny_gpt2()
    batch = _text()
    batch["attention_mask"][:] = 1
    with torch.inference_mode():
        loss = model(**batch, labels=batch["input_ids"]).loss
    assert metrics.perplexity(model, [(batch, None)]) == pytest.approx(math.exp(loss), rel=1e-5)
    assert metrics.is_causal_lm(model, batch)


def test_causal_lm_is_verified_by_perplexity_ratio_within_the_profile_budget():
    settings = {
        "name": "lm",
        "ratios": [0.25],
        "allocation": "uniform",
        "quantization": "none",
        "latency_repeats": 3,
        "max_perplexity_increase": 0.5,
        "min_neighbour_recall": None,
        "calibration_size": 16,
    }
    if "runtimes" in DeviceProfile.model_fields:  # torch only: the test is about the metric
        settings["runtimes"] = ["torch"]
    profile = profile_from_dict(settings)
    v = compress(_tiny_gpt2(), profile, example_inputs=_text(2), calibration=[_text(16, seed=1)])
    r = v.report
    assert (r.metric, r.metric_before, r.budget) == ("perplexity", 1.0, round(1 / 1.5, 6))
    verify = [s for s in r.steps if s["step"] == "verify"][0]
    assert "ratio of perplexities" in verify["detail"], verify
    assert r.task_metrics is None
