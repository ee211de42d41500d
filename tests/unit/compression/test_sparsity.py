"""2:4 and unstructured weight sparsity, the row refit, and the compact store (exact reload)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from compression.forms import compact, sparsity
from compression.structure import importance

from .tiny import tiny_resnet

pytestmark = pytest.mark.unit


def _wide_mlp() -> nn.Module:
    """Linear layers whose shapes the 2:4 kernels take (rows % 32, cols % 64), and a head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 4)
    ).eval()


def test_mask_2to4_keeps_the_two_largest_of_every_four():
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.1, 0.4, 0.3, 0.2]])
    mask = sparsity.mask_2to4(score)
    assert mask.tolist() == [[True, False, True, False, False, True, True, False]]
    w = torch.randn(32, 64)
    masked = w.masked_fill(~sparsity.mask_2to4(w.abs()), 0.0)
    assert sparsity.is_2to4(masked) and not sparsity.is_2to4(w)
    with pytest.raises(ValueError, match="multiple of 4"):
        sparsity.mask_2to4(torch.ones(2, 6))


def test_prune_2to4_masks_only_layers_the_kernels_take_and_refits_them():
    model = _wide_mlp()
    # Correlated inputs, as real activations are: the kept weights can stand in for the rest.
    x = torch.randn(512, 16) @ torch.randn(16, 64) + 0.1 * torch.randn(512, 64)
    pruned, n = sparsity.prune_2to4(model, x)
    assert sparsity.semi_structured_layers(model) == ["0", "2"] and n == 2
    for name in ("0", "2"):
        w = pruned.get_submodule(name).weight
        assert sparsity.is_2to4(w)
        assert int((w != 0).sum()) == w.numel() // 2
        assert not bool(torch.signbit(w[w == 0]).any()), "removed weights must be +0.0"
    assert torch.equal(pruned[4].weight, model[4].weight)  # the 4-row head is left dense
    # The refit keeps the first layer's outputs closer to the dense ones than masking alone.
    plain, _ = sparsity.prune_2to4(model, None)
    with torch.no_grad():
        dense = model[0](x)
        err_refit = float((pruned[0](x) - dense).pow(2).mean())
        err_plain = float((plain[0](x) - dense).pow(2).mean())
    assert err_refit < 0.5 * err_plain, f"refit {err_refit:.5f} vs masked {err_plain:.5f}"


def test_refit_rows_is_the_least_squares_solution_on_the_kept_columns():
    torch.manual_seed(1)
    x = torch.randn(500, 16, dtype=torch.float64)
    w = torch.randn(3, 16, dtype=torch.float64)
    mask = sparsity.row_mask(w.abs(), 0.5)
    gram = x.T @ x / len(x)
    new = sparsity.refit_rows(w, mask, gram, ridge=0.0)
    for r in range(3):
        cols = mask[r].nonzero().squeeze(1)
        expected = torch.linalg.lstsq(x[:, cols], x @ w[r]).solution
        assert torch.allclose(new[r, cols], expected, atol=1e-8)
        assert bool((new[r][~mask[r]] == 0).all())


def test_sparsify_keeps_the_density_per_row_and_recalibrates_batchnorm():
    model = tiny_resnet()
    x = torch.randn(64, 3, 8, 8)
    thin = sparsity.sparsify(model, 0.25, x)
    for name in sparsity.sparse_layers(model):
        w = thin.get_submodule(name).weight
        rows = w.reshape(w.shape[0], -1)
        kept = (rows != 0).sum(1)
        assert int(kept.max()) == int(kept.min()) <= max(1, -(-rows.shape[1] // 4))
    # BatchNorm statistics were re-estimated on x (the thinned convs changed their inputs).
    assert not torch.equal(thin.b1.running_var, model.b1.running_var)
    assert sparsity.nonzero_params(thin) < 0.35 * sum(p.numel() for p in model.parameters())


def test_density_for_meets_the_stored_byte_budget_exactly_as_computed():
    model = tiny_resnet()
    original = compact.stored_bytes(model.state_dict())
    target = 0.35 * original
    density = sparsity.density_for(model, target)
    assert density is not None and 0 < density < 1
    thin = sparsity.sparsify(model, density)
    stored = compact.stored_bytes(thin.state_dict())
    assert stored == sparsity.stored_bytes_at(model, density)
    assert stored <= target, f"stored {stored} B > budget {target:.0f} B"
    assert sparsity.density_for(model, 10 * original) == 1.0
    assert sparsity.density_for(model, 10) is None


def test_compact_store_reloads_bit_for_bit_and_is_smaller(tmp_path):
    model = tiny_resnet()
    thin = sparsity.sparsify(model, 0.3, torch.randn(32, 3, 8, 8))
    state = thin.state_dict()
    state["c1.weight"].view(-1)[0] = -0.0  # a stored negative zero keeps its sign
    dense_path, sparse_path = tmp_path / "dense.safetensors", tmp_path / "sparse.safetensors"
    compact.save(model.state_dict(), dense_path)
    compact.save(state, sparse_path)
    back = compact.load(sparse_path)
    assert back.keys() == state.keys()
    for key, t in state.items():
        assert back[key].dtype == t.dtype and back[key].shape == t.shape
        if t.is_floating_point():
            assert torch.equal(back[key].view(torch.int32), t.view(torch.int32)), key
        else:
            assert torch.equal(back[key], t), key
    assert torch.signbit(back["c1.weight"].view(-1)[0])
    assert os.path.getsize(sparse_path) < 0.5 * os.path.getsize(dense_path)
    # Dense tensors are written as plain safetensors: nothing packed, no metadata.
    tensors, meta = compact.pack(model.state_dict())
    assert meta == {} and tensors.keys() == model.state_dict().keys()


def test_activation_and_lsq_scores_accumulate_where_the_model_is():
    """Device-agnostic accumulators: scores come back on the weights' device, here the CPU;
    tests/integration/test_gpu.py runs the same on CUDA."""
    from compression.structure import graph

    model = tiny_resnet()
    x = torch.randn(32, 3, 8, 8)
    units = graph.find_units(model, x[:2])
    consumers = [c for u in units for c in u.consumers]
    stats, grams = importance.input_stats_and_grams(model, consumers, x)
    for scores in (
        importance.activation_scores(model, units, stats),
        importance.lsq_scores(model, units, grams),
    ):
        assert {s.device.type for s in scores.values()} == {"cpu"}
        assert all(
            s.numel() == u.size and bool(torch.isfinite(s).all())
            for u, s in zip(units, scores.values(), strict=True)
        )
