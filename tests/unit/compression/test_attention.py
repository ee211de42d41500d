"""Attention layouts: each named layout finds its heads and cuts them whole."""

import pytest
import torch
from torch import nn

from compression.structure import attention, graph

from .tiny import bert_batch, tiny_bert

pytestmark = pytest.mark.unit


class Separate(nn.Module):
    """q/k/v/o by unregistered names: found by introspection."""

    def __init__(self, heads=4, kv_heads=4, d=8, hidden=32):
        super().__init__()
        self.head_dim = d
        self.num_heads, self.num_key_value_heads = heads, kv_heads
        self.q_proj = nn.Linear(hidden, heads * d)
        self.k_proj = nn.Linear(hidden, kv_heads * d)
        self.v_proj = nn.Linear(hidden, kv_heads * d)
        self.o_proj = nn.Linear(heads * d, hidden)
        self.table = nn.Parameter(torch.randn(9, heads))  # a per-head parameter

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        bias = self.table[:1].T[None, :, :, None]  # [1, heads, 1, 1]
        att = (q @ k.transpose(-1, -2) / self.head_dim**0.5 + bias).softmax(-1)
        return self.o_proj((att @ v).transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.attn = Separate(**kw)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.norm(x + self.attn(x)))


def test_separate_qkv_layout_by_introspection():
    layout = attention.layout_of(Separate())
    assert (layout.layout, layout.heads, layout.kv_heads, layout.head_dim) == (
        "window_attention",
        4,
        4,
        8,
    )
    assert (layout.q, layout.k, layout.v, layout.context) == (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    )
    assert layout.per_head == [("table", 1)]


def test_grouped_query_cuts_whole_kv_groups_with_their_query_heads():
    layout = attention.layout_of(Separate(heads=4, kv_heads=2))
    assert (layout.layout, layout.group, layout.granule) == ("grouped_query", 2, 16)
    cuts, heads, kv = layout.cuts(list(range(16, 32)))  # key/value group 1: query heads 2, 3
    by_path = {c.path: c for c in cuts}
    assert by_path["q_proj"].idxs == list(range(16, 32))
    assert by_path["k_proj"].idxs == by_path["v_proj"].idxs == list(range(8, 16))
    assert (heads, kv) == (2, 1)
    with pytest.raises(ValueError, match="heads must be cut whole"):
        layout.cuts(list(range(8, 16)))  # one query head of a group of two


def test_fused_qkv_cuts_the_same_head_in_q_k_and_v():
    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads, self.head_dim, self.split_size = 4, 8, 32
            self.c_attn, self.c_proj = nn.Linear(32, 96), nn.Linear(32, 32)

    layout = attention.layout_of(Fused())
    assert (layout.layout, layout.qkv, layout.heads) == ("fused_qkv", "c_attn", 4)
    (cut,), heads, _ = layout.cuts(list(range(8, 16)))
    assert cut.idxs == [*range(8, 16), *range(40, 48), *range(72, 80)]
    module = Fused()
    assert layout.fix(module, heads, heads) == {"num_heads": 3, "split_size": 24}


def test_grouped_query_model_prunes_and_runs():
    torch.manual_seed(0)
    model = Block(heads=4, kv_heads=2).eval()
    x = torch.randn(2, 5, 32)
    units = graph.find_units(model, x)
    heads = [u for u in units if u.kind == "heads"]
    assert [(u.name, u.size, u.granule) for u in heads] == [("attn.heads", 32, 16)]
    graph.prune(model, x, {"attn.heads": list(range(0, 16))})
    attn = model.attn
    assert (attn.num_heads, attn.num_key_value_heads) == (2, 1)
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (
        16,
        8,
        16,
    )
    assert attn.table.shape == (9, 2)
    assert model(x).shape == (2, 5, 3)
    assert not hasattr(attn, "heads")  # the graph's core is gone after pruning


def test_bert_layout_sets_the_head_count_forward_reads():
    model = tiny_bert()
    batch = bert_batch()
    units = graph.find_units(model, batch)
    (first, *_) = [u for u in units if u.kind == "heads"]
    graph.prune(model, batch, {first.name: list(range(8, 16))})  # head 1 of 4, size 8
    attn = model.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.all_head_size) == (3, 24)
    assert model(**batch).last_hidden_state.shape == (4, 10, 32)


def test_untraceable_model_stops_at_the_time_limit_and_names_the_module():
    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            if torch.is_grad_enabled():  # only while tracing
                while True:
                    x = x + 0
            return self.out(self.fc(x))

    from compression.core.errors import UntraceableModelError

    with pytest.raises(UntraceableModelError, match=r"within 0\.5 s: it stopped at"):
        graph.find_units(Slow(), torch.randn(2, 4), time_limit_s=0.5)
