"""Layer kinds: every layer as y = W x + b over rows, and the rebuild on each kind."""

import copy

import pytest
import torch
from torch import nn

from compression.recovery import rebuild
from compression.structure import graph, importance, layers

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "layer,shape",
    [
        (nn.Conv1d(4, 6, 5, padding=2, stride=2, dilation=2), (3, 4, 20)),
        (nn.Conv2d(4, 6, 3, padding=1, dilation=2), (2, 4, 9, 9)),
        (nn.Conv3d(4, 6, 3, padding=1, stride=(1, 2, 1)), (2, 4, 5, 6, 7)),
        (nn.Linear(4, 6), (2, 3, 5, 4)),  # channels last, as in a ConvNeXt block
    ],
)
def test_rows_times_matrix_is_the_layer(layer, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    rows = layers.input_rows(layer, x, None) @ layers.matrix(layer).T + layer.bias
    expected = layers.output_rows(layer, layer(x), None)
    assert (rows - expected).abs().max() < 1e-5


def test_transformers_conv1d_is_a_transposed_linear():
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(6, 4)
    x = torch.randn(2, 3, 4)
    assert layers.kind(layer) == "conv1d_t"
    assert layers.weight(layer).shape == (6, 4)
    out = layers.input_rows(layer, x, None) @ layers.matrix(layer).T + layer.bias
    assert (out - layer(x).reshape(-1, 6)).abs().max() < 1e-6


def test_grouped_conv_is_left_alone_with_a_reason():
    assert layers.unsupported(nn.Conv2d(8, 8, 3, groups=8)) == "grouped conv (groups=8)"
    assert layers.unsupported(nn.Conv1d(8, 8, 3, padding="same")) == "padding='same'"


def _conv1d_classifier():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 16, 5, padding=2),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(16, 16, 5, padding=2),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def test_rebuild_ladder_on_a_1d_conv_classifier():
    model = _conv1d_classifier()
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 1, 200))
    model.eval()
    x = torch.randn(128, 1, 200)
    units = graph.find_units(model, x[:2])
    stats, scores = importance.score_units(model, x[:2], units, "lsq", x)
    removed = {u.name: sorted(scores[u.name].argsort()[: u.size // 2].tolist()) for u in units}
    pruned = copy.deepcopy(model)
    graph.prune(pruned, x[:2], removed)
    ref = rebuild.reference_outputs(model, x)
    records = rebuild.rebuild(pruned, model, units, removed, x, ref, stats, ["bn", "bias", "refit"])
    by_step = {r.step: r for r in records}
    assert by_step["refit"].kept, [r.to_dict() for r in records]
    assert by_step["refit"].error_after < by_step["prune"].error_after / 2, [
        r.to_dict() for r in records
    ]


def test_a_step_that_cannot_apply_says_so():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(64, 8)
    units = graph.find_units(model, x[:2])
    removed = {units[0].name: list(range(8))}
    pruned = copy.deepcopy(model)
    graph.prune(pruned, x[:2], removed)
    ref = rebuild.reference_outputs(model, x)
    stats = importance.input_stats(model, units[0].consumers, x)
    records = rebuild.rebuild(pruned, model, units, removed, x, ref, stats, ["bn"])
    assert records[1].to_dict() | {"seconds": 0} == {
        "step": "bn",
        "kept": False,
        "error_before": records[0].error_after,
        "error_after": records[0].error_after,
        "seconds": 0,
        "detail": "not applicable: no BatchNorm layer",
    }
