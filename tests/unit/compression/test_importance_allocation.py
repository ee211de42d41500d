import pytest
import torch

from compression.structure import allocation, graph, importance

from .tiny import tiny_mlp, tiny_resnet

pytestmark = pytest.mark.unit


def _mlp_with_dead_neuron():
    model = tiny_mlp()
    with torch.no_grad():
        model[0].weight[7] = 0.0  # neuron 7 of the first hidden layer never fires
        model[0].bias[7] = -1.0
    return model


@pytest.mark.parametrize("criterion", importance.CRITERIA)
def test_every_criterion_scores_every_channel(criterion):
    model = tiny_resnet()
    x = torch.randn(64, 3, 8, 8)
    units = graph.find_units(model, x[:2])
    stats = importance.input_stats(model, [c for u in units for c in u.consumers], x)
    if criterion == "lsq":
        grams = importance.input_grams(model, [c for u in units for c in u.consumers], x)
        scores = importance.lsq_scores(model, units, grams)
    else:
        scores = importance.channel_scores(model, x[:2], units, criterion, x, stats)
    for u in units:
        assert scores[u.name].shape == (u.size,)
        assert torch.isfinite(scores[u.name]).all()


@pytest.mark.parametrize("criterion", ["activation", "lsq"])
def test_activation_aware_criteria_find_the_dead_neuron(criterion):
    model = _mlp_with_dead_neuron()
    x = torch.randn(256, 12)
    units = graph.find_units(model, x[:2])
    names = [c for u in units for c in u.consumers]
    if criterion == "lsq":
        scores = importance.lsq_scores(model, units, importance.input_grams(model, names, x))
    else:
        scores = importance.activation_scores(model, units, importance.input_stats(model, names, x))
    assert int(scores["0"].argmin()) == 7


def test_uniform_allocation_counts_and_rounding():
    model = tiny_mlp()
    units = graph.find_units(model, torch.randn(2, 12))
    scores = {u.name: torch.arange(u.size, dtype=torch.float) for u in units}
    removed = allocation.allocate(units, scores, 0.5, "uniform")
    assert removed == {"0": list(range(16)), "2": list(range(8))}  # lowest scores go
    rounded = allocation.allocate(units, scores, 0.6, "uniform", round_to=8)
    assert [32 - len(rounded["0"]), 16 - len(rounded["2"])] == [16, 8]  # kept widths % 8 == 0


def test_global_allocation_never_empties_a_unit():
    model = tiny_mlp()
    units = graph.find_units(model, torch.randn(2, 12))
    scores = {"0": torch.ones(32), "2": torch.full((16,), 1e-6)}
    scores["2"][0] = 1.0  # after normalisation, unit "2" has 15 tiny scores
    removed = allocation.allocate(units, scores, 0.3, "global")
    assert 16 - len(removed["2"]) >= 2
    assert sum(len(v) for v in removed.values()) == pytest.approx(0.3 * 48, abs=1)


def test_stats_and_grams_in_one_forward_equal_the_separate_passes():
    model = tiny_resnet()
    x = torch.randn(32, 3, 8, 8)
    names = [c for u in graph.find_units(model, x[:2]) for c in u.consumers]
    stats, grams = importance.input_stats_and_grams(model, names, x)
    alone_stats, alone_grams = (
        importance.input_stats(model, names, x),
        importance.input_grams(model, names, x),
    )
    assert stats.keys() == alone_stats.keys() == grams.keys() == alone_grams.keys()
    for n in names:
        assert torch.equal(stats[n].mean, alone_stats[n].mean)
        assert torch.equal(stats[n].sq_mean, alone_stats[n].sq_mean)
        assert torch.equal(grams[n], alone_grams[n])
