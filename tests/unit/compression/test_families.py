import pytest
import torch

from compression import families

from .tiny import bert_batch, tiny_bert

pytestmark = pytest.mark.unit


def test_fix_bert_attention_heads_follows_query_width():
    model = tiny_bert()
    attn = model.encoder.layer[1].attention.self
    keep = torch.arange(16)  # heads 0 and 1 of 4 (head size 8)
    for name in ("query", "key", "value"):
        layer = getattr(attn, name)
        layer.weight = torch.nn.Parameter(layer.weight[keep])
        layer.bias = torch.nn.Parameter(layer.bias[keep])
        layer.out_features = 16
    dense = model.encoder.layer[1].attention.output.dense
    dense.weight = torch.nn.Parameter(dense.weight[:, keep])
    dense.in_features = 16
    assert families.fix_bert_attention_heads(model) == 1
    assert (attn.num_attention_heads, attn.all_head_size) == (2, 16)
    assert model(**bert_batch()).last_hidden_state.shape == (4, 10, 32)


def test_fix_rejects_partial_heads():
    model = tiny_bert()
    attn = model.encoder.layer[0].attention.self
    attn.query.out_features = 12  # not a multiple of head size 8
    with pytest.raises(ValueError, match="heads must be pruned whole"):
        families.fix_bert_attention_heads(model)


def test_residual_parent_names_bert_output_blocks():
    model = tiny_bert()
    assert (
        families.residual_parent(model, "encoder.layer.0.output.dense") == "encoder.layer.0.output"
    )
    assert families.residual_parent(model, "encoder.layer.0.intermediate.dense") is None
