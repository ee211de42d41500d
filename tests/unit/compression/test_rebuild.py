import copy

import pytest
import torch

from compression import allocation, graph, importance, rebuild

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
