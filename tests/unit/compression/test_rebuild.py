import copy

import pytest
import torch

from compression.recovery import rebuild
from compression.structure import allocation, graph, importance

from .tiny import tiny_mlp, tiny_resnet

pytestmark = pytest.mark.unit


def _pruned(model, x, ratio=0.5):
    units = graph.find_units(model, x[:2])
    names = [c for u in units for c in u.consumers]
    stats = importance.input_stats(model, names, x)
    scores = importance.activation_scores(model, units, stats)
    removed = allocation.allocate(units, scores, ratio, "uniform")
    pruned = copy.deepcopy(model)
    graph.prune(pruned, x[:2], removed)
    return pruned, units, removed, stats


def test_bn_recalibration_lowers_error():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 64, 4),
    )
    x = torch.randn(256, 3, 8, 8)
    with torch.no_grad():  # channels 0..7 are a constant 1.0: removing them only shifts the mean
        model[0].weight[:8] = 0.0
        model[0].bias[:8] = 1.0
    model.train()
    with torch.no_grad():
        model[3].momentum = None
        model(x)
    model.eval()
    pruned = copy.deepcopy(model)
    graph.prune(pruned, x[:2], {"0": list(range(8))})
    ref = rebuild.reference_outputs(model, x)
    before = rebuild.calibration_error(pruned, x, ref)
    assert rebuild.recalibrate_bn(pruned, x) == 1
    after = rebuild.calibration_error(pruned, x, ref)
    # Not exact: zero padding makes the shift differ at the borders.
    assert after < 0.5 * before, (before, after)


def test_bias_compensation_is_exact_for_constant_channels():
    model = tiny_mlp()
    x = torch.randn(128, 12)
    with torch.no_grad():  # hidden neurons 0..15 output a constant 1.0 whatever the input
        model[0].weight[:16] = 0.0
        model[0].bias[:16] = 1.0
    units = graph.find_units(model, x[:2])
    stats = importance.input_stats(model, [c for u in units for c in u.consumers], x)
    removed = {"0": list(range(16)), "2": []}
    pruned = copy.deepcopy(model)
    graph.prune(pruned, x[:2], removed)
    ref = rebuild.reference_outputs(model, x)
    assert rebuild.calibration_error(pruned, x, ref) > 1e-3
    rebuild.compensate_bias(pruned, model, units, removed, stats)
    assert rebuild.calibration_error(pruned, x, ref) < 1e-10


def test_refit_recovers_a_linear_cut_exactly():
    # A purely linear chain: the refit can represent the removed neurons' contribution.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Linear(32, 4))
    with torch.no_grad():  # rank 8 hidden layer: 24 of 32 neurons are redundant
        model[0].weight[8:] = model[0].weight[:8].repeat(3, 1) * 0.5
    x = torch.randn(256, 8)
    units = graph.find_units(model, x[:2])
    removed = {units[0].name: list(range(8, 32))}
    pruned = copy.deepcopy(model)
    graph.prune(pruned, x[:2], removed)
    ref = rebuild.reference_outputs(model, x)
    assert rebuild.calibration_error(pruned, x, ref) > 0.05
    assert rebuild.refit_consumers(pruned, model, units, removed, x, ridge=0.0) == 1
    assert rebuild.calibration_error(pruned, x, ref) < 1e-8


def test_ladder_keeps_only_steps_that_help_and_records_errors():
    model, x = tiny_resnet(), torch.randn(256, 3, 8, 8)
    pruned, units, removed, stats = _pruned(model, x)
    ref = rebuild.reference_outputs(model, x)
    records = rebuild.rebuild(pruned, model, units, removed, x, ref, stats, ["bn", "bias", "refit"])
    assert records[0].step == "prune"
    kept = [r for r in records[1:] if r.kept]
    assert kept, "at least one rebuild step must help"
    for r in records[1:]:
        assert r.kept == (r.error_after < r.error_before)
    final = rebuild.calibration_error(pruned, x, ref)
    assert final == pytest.approx(kept[-1].error_after, rel=1e-4)
    assert final < records[0].error_after / 3, [r.to_dict() for r in records]


def test_distillation_is_time_boxed_and_helps():
    model, x = tiny_mlp(), torch.randn(256, 12)
    pruned, *_ = _pruned(model, x, 0.6)
    ref = rebuild.reference_outputs(model, x)
    before = rebuild.calibration_error(pruned, x, ref)
    steps = rebuild.distill(pruned, model, x, seconds=0.5)
    assert steps > 0
    assert rebuild.calibration_error(pruned, x, ref) < before


def test_refit_with_the_shared_cache_gives_the_same_weights():
    """The original's captured outputs are reused by the next candidate, with the same result."""
    model, x = tiny_resnet(), torch.randn(128, 3, 8, 8)
    units = graph.find_units(model, x[:2])
    cache: dict = {}
    for ratio in (0.25, 0.5):  # two candidates: the second reads what the first captured
        removed = {u.name: list(range(int(u.size * ratio))) for u in units}
        fresh, cached = copy.deepcopy(model), copy.deepcopy(model)
        for m in (fresh, cached):
            graph.prune(m, x[:2], removed)
        n = rebuild.refit_consumers(fresh, model, units, removed, x, ridge=1e-2)
        assert rebuild.refit_consumers(cached, model, units, removed, x, 1e-2, cache=cache) == n
        for a, b in zip(fresh.state_dict().values(), cached.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    assert len(cache) == n  # one capture per consumer layer, reused by the second candidate


def test_refit_cache_on_a_bert_reuses_the_residual_skips():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    model = BertModel(cfg).eval()
    x = {"input_ids": torch.randint(0, 50, (16, 12)), "attention_mask": torch.ones(16, 12).long()}
    units = graph.find_units(model, x)
    removed = {u.name: list(range(u.granule * max(1, u.groups // 4))) for u in units}
    fresh, cached = copy.deepcopy(model), copy.deepcopy(model)
    for m in (fresh, cached):
        graph.prune(m, x, removed)
    cache: dict = {}
    n = rebuild.refit_consumers(fresh, model, units, removed, x, ridge=1e-2)
    rebuild.refit_consumers(cached, model, units, removed, x, 1e-2, cache=cache)  # fills
    again = copy.deepcopy(model)
    graph.prune(again, x, removed)
    assert rebuild.refit_consumers(again, model, units, removed, x, 1e-2, cache=cache) == n
    assert any(key[0] == "skip" for key in cache), sorted(cache)
    for a, b in zip(fresh.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
