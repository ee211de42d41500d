import pytest
import torch
from torch import nn

from compression.core.errors import UntraceableModelError
from compression.structure import graph

from .tiny import bert_batch, tiny_bert, tiny_mlp, tiny_resnet

pytestmark = pytest.mark.unit
X = torch.randn(4, 3, 8, 8)


def test_residual_channels_are_one_unit():
    model = tiny_resnet()
    units = {u.name: u for u in graph.find_units(model, X)}
    # stem.0 and c2 feed the same residual add: one unit, consumed by c1 and the head is kept.
    coupled = [u for u in units.values() if {"stem.0", "c2"} <= set(u.producers)]
    assert len(coupled) == 1
    assert "c1" in coupled[0].consumers
    assert "head" not in [u.name for u in units.values()]  # the output layer keeps its width


def test_prune_keeps_output_shape_and_cuts_macs():
    model = tiny_resnet()
    macs_before, params_before = graph.count_macs_params(model, X)
    units = graph.find_units(model, X)
    graph.prune(model, X, {u.name: list(range(u.size // 2)) for u in units})
    macs_after, params_after = graph.count_macs_params(model, X)
    assert model(X).shape == (4, 5)
    assert macs_after <= macs_before / 3, (macs_before, macs_after)
    assert params_after < params_before


def test_mlp_units_are_hidden_layers():
    model = tiny_mlp()
    units = graph.find_units(model, torch.randn(2, 12))
    assert [(u.name, u.size, u.consumers) for u in units] == [
        ("0", 32, ["2"]),
        ("2", 16, ["4"]),
    ]


def test_bert_heads_are_pruned_whole():
    model = tiny_bert()
    batch = bert_batch()
    units = graph.find_units(model, batch)
    heads = [u for u in units if u.kind == "heads"]
    ffn = [u for u in units if u.kind == "neurons"]
    assert len(heads) == 2 and len(ffn) == 2
    assert heads[0].granule == 8 and heads[0].groups == 4
    graph.prune(model, batch, {heads[0].name: list(range(8, 16))})  # head 1 of layer 0
    attn = model.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 3 and attn.all_head_size == 24
    assert model(**batch).last_hidden_state.shape == (4, 10, 32)


class NotTraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return {"not": "a tensor"}


def test_untraceable_model_is_explained():
    with pytest.raises(UntraceableModelError, match="Torch-Pruning could not trace NotTraceable"):
        graph.build_graph(NotTraceable(), torch.randn(1, 4))
