"""The edge profile's size step on a real built-in: unstructured sparsity meets a size budget
structured pruning alone cannot, the variant is stored compactly and reloads bit for bit."""

from __future__ import annotations

import os

import pytest
import torch

from compression import PROFILES, load_variant
from compression.forms import compact

pytestmark = pytest.mark.integration


def test_unstructured_sparsity_meets_the_stored_size_budget_and_reloads_exactly(tmp_path):
    from service.models.sources import resolve

    bundle = resolve("digits-mlp")
    # 15% of the original's bytes: more than channel pruning removes within budget (19%). The
    # budget is 4 points: a claimed drop is a one-sided 95 % bound, and 225 labelled samples
    # bound a variant that changes 3 % of the answers at about 2 points over what it measured
    # (compression.search.claims), so the edge profile's 2 points would refuse every cut here.
    profile = PROFILES["edge"].model_copy(
        update={"target_size_ratio": 0.15, "latency_repeats": 3, "max_drop": 0.04}
    )
    variant = bundle.compress(profile)
    r = variant.report
    assert r.accepted, r.reason
    assert r.sparsity == "unstructured", [(c.ratio, c.sparsity, c.metric) for c in r.candidates]
    assert r.target_met and r.metric_after >= r.budget, (r.metric_after, r.budget)

    original = bundle.factory()
    budget = 0.15 * compact.stored_bytes(original.state_dict())
    stored = compact.stored_bytes(variant.float_module.state_dict())
    assert stored <= budget, f"stored {stored} B > budget {budget:.0f} B"

    directory = variant.save(tmp_path / "v")
    dense = tmp_path / "dense.safetensors"
    compact.save({k: v.contiguous() for k, v in original.state_dict().items()}, dense)
    size = os.path.getsize(directory / "weights.safetensors")
    ratio = size / os.path.getsize(dense)
    assert ratio < 0.17, f"weights file is {ratio:.3f} of the original's"

    loaded = load_variant(directory, model=bundle.factory())
    x = torch.cat([b for b, _ in bundle.validation])
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), variant.module(x))
    for key, t in variant.float_module.state_dict().items():
        assert torch.equal(loaded.float_module.state_dict()[key], t), key
