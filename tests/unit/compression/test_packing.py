"""Packed tokens: the real tokens' outputs equal the padded forward's, pruned or not; models it
does not understand are refused; a packed variant saves and loads as one."""

from __future__ import annotations

import copy

import pytest
import torch

from compression import PROFILES, compress, load_variant
from compression.core.inputs import served_like
from compression.forms import buckets, packing
from compression.structure import allocation, graph

from .tiny import tiny_bert

pytestmark = pytest.mark.unit


def _ragged(n: int, width: int, seed: int) -> dict[str, torch.Tensor]:
    """Token batch of ``n`` samples of random lengths 1..width, right-padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    ids = torch.randint(1, 100, (n, int(lengths.max())), generator=g)
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def _real(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        out = model(**batch)
    out = getattr(out, "last_hidden_state", out)
    return out[batch["attention_mask"].bool()]


def test_packed_bert_equals_padded_on_real_tokens_and_zeros_the_padding():
    model = tiny_bert()
    packed = packing.PackedEncoder(model).eval()
    for seed in range(3):
        batch = _ragged(9, 30, seed)
        assert batch["attention_mask"].float().mean() < 0.8  # padding to skip
        with torch.inference_mode():
            out = packed(**batch).last_hidden_state  # answers like the model it wraps
        assert out.shape == (*batch["input_ids"].shape, 32)
        diff = float((_real(model, batch) - _real(packed, batch)).abs().max())
        assert diff < 1e-5, diff
        assert float(out[~batch["attention_mask"].bool()].abs().max()) == 0.0


def test_token_type_ids_and_trailing_pad_columns_are_honoured():
    model = tiny_bert()
    batch = _ragged(6, 20, 4)
    batch["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, 5))
    batch["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, 5))
    batch["token_type_ids"] = (torch.arange(batch["input_ids"].shape[1]) % 2).expand_as(
        batch["input_ids"]
    )
    packed = packing.PackedEncoder(model).eval()
    with torch.inference_mode():
        out = packed(**batch).last_hidden_state
    assert out.shape[1] == batch["input_ids"].shape[1]  # the caller's width, all-pad tail kept
    assert float((_real(model, batch) - _real(packed, batch)).abs().max()) < 1e-5


def test_pruned_heads_and_neurons_pack_exactly():
    model = tiny_bert()
    example = _ragged(4, 12, 0)
    units = graph.find_units(model, example)
    scores = graph.library_scores(copy.deepcopy(model), example, units, "magnitude")
    graph.prune(model, example, allocation.allocate(units, scores, 0.5, "uniform"))
    att = model.encoder.layer[0].attention.self
    assert att.query.out_features < 32  # heads went
    assert model.encoder.layer[0].intermediate.dense.out_features < 64  # FFN neurons went
    ok, note = packing.check(model.eval(), [_ragged(8, 25, 1)])
    assert ok, note
    batch = _ragged(8, 25, 2)
    diff = float((_real(model, batch) - _real(packing.PackedEncoder(model), batch)).abs().max())
    assert diff < 1e-5, diff


def test_int8_packs_within_quantization_error():
    from compression.forms.precision import quantize_int8

    model = tiny_bert()
    batch = _ragged(8, 25, 3)
    reference = _real(model, batch)
    packed_int8 = packing.PackedEncoder(quantize_int8(model)).eval()
    cos = torch.nn.functional.cosine_similarity(_real(packed_int8, batch), reference).min()
    assert cos > 0.95, float(cos)


def test_bfloat16_packs_inside_its_casts_and_answers_float32():
    from compression.forms.precision import HalfPrecision, apply

    model = tiny_bert()
    batch = _ragged(8, 25, 4)
    reference = _real(model, batch)
    packed = packing.served(apply(model, "bfloat16", "none"))
    assert isinstance(packed, HalfPrecision) and isinstance(packed.module, packing.PackedEncoder)
    assert packing.is_packed(packed) and packing.served(packed) is packed
    with torch.inference_mode():
        out = packed(**batch).last_hidden_state
    assert out.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(out[batch["attention_mask"].bool()], reference)
    assert float(cos.min()) > 0.999, float(cos.min())


def test_attention_runs_in_length_buckets_with_the_same_outputs():
    assert buckets.bucket_sizes([10, 11, 12, 50], 2) == [3, 1]
    assert sum(buckets.bucket_sizes([5] * 8, 4)) == 8
    batch = _ragged(32, 30, 7)  # 32 samples: four buckets
    keep = batch["attention_mask"].bool()
    groups = buckets.length_buckets(keep)
    assert len(groups) == 4 and sum(g.samples for g in groups) == 32
    assert sorted(torch.cat([g.rows for g in groups]).tolist()) == list(range(int(keep.sum())))
    # less attention work than one bucket padded to the longest
    work = sum(g.samples * g.width**2 for g in groups)
    assert work < 0.6 * 32 * keep.shape[1] ** 2, work
    model = tiny_bert()
    diff = float((_real(model, batch) - _real(packing.PackedEncoder(model), batch)).abs().max())
    assert diff < 1e-5, diff


def test_layouts_it_does_not_compute_are_refused_with_the_reason():
    from transformers import DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    batch = _ragged(6, 20, 0)
    distil = DistilBertModel(DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=4))
    ok, note = packing.check(distil.eval(), [batch])
    assert not ok and "not laid out like a BERT encoder" in note
    # RoBERTa looks like BERT but numbers its positions after the padding index: the check on
    # real batches catches what the layout test cannot.
    config = RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    ok, note = packing.check(RobertaModel(config).eval(), [batch])
    assert not ok and "max |packed - padded|" in note, note
    ok, note = packing.check(tiny_bert(), [torch.randn(4, 8)])
    assert not ok and "attention_mask" in note


def test_served_like_batches_keep_the_padding_serving_meets():
    batch = _ragged(64, 40, 5)
    order = torch.argsort(batch["attention_mask"].sum(1))  # sorted by length, like a corpus
    batch = {k: v[order] for k, v in batch.items()}
    lat = served_like(batch, 16)
    lengths = lat["attention_mask"].sum(1)
    assert lat["input_ids"].shape == (16, int(lengths.max()))
    # spread over every length: the shortest and the longest are in, not 16 median ones
    assert int(lengths.min()) == int(batch["attention_mask"].sum(1).min())
    assert int(lengths.max()) == int(batch["attention_mask"].sum(1).max())


def test_a_packed_variant_saves_and_loads_packed_with_the_same_outputs(tmp_path):
    model = tiny_bert()
    data = [_ragged(16, 24, s) for s in range(4)]
    profile = PROFILES["cpu"].model_copy(
        update={"ratios": [0.25], "quantization": "none", "runtimes": ["torch"]}
    )
    variant = compress(
        model,
        profile,
        example_inputs=data[0],
        calibration=data,
        validation=[(d, None) for d in data],
    )
    assert any("packed tokens" in n for n in variant.report.runtimes), variant.report.runtimes
    # Whether packing won depends on this machine's speed; the saved form must load as chosen.
    variant.module = packing.served(variant.module)
    variant.plan["packed"] = True
    variant.save(tmp_path)
    loaded = load_variant(tmp_path, model=tiny_bert())
    assert isinstance(loaded.module, packing.PackedEncoder)
    batch = _ragged(8, 24, 9)
    assert torch.allclose(_real(loaded.module, batch), _real(variant.module, batch), atol=1e-6)
    padded = load_variant(tmp_path, model=tiny_bert(), runtime="torch").module
    assert not isinstance(padded, packing.PackedEncoder)  # what TorchScript traces
    assert torch.allclose(_real(padded, batch), _real(variant.module, batch), atol=1e-5)


def test_attention_as_two_products_equals_the_fused_kernel():
    torch.manual_seed(0)
    q, k, v = (torch.randn(5, 3, 9, 8) for _ in range(3))
    keep = torch.arange(9)[None, :] < torch.tensor([9, 4, 1, 7, 2])[:, None]
    mask = torch.zeros(keep.shape).masked_fill_(~keep, float("-inf"))[:, None, None, :]
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=keep[:, None, None, :]
    )
    assert float((buckets.attention(q, k, v, mask) - expected).abs().max()) < 1e-5


def test_int8_query_key_value_run_as_one_product_with_the_same_outputs():
    from compression.forms import smoothing
    from compression.forms.precision import quantize_int8

    model = tiny_bert()
    batch = _ragged(16, 25, 5)
    plain = packing.PackedEncoder(model)
    scales = smoothing.scales(model, smoothing.input_ranges(plain, [batch]), 0.8)
    for int8 in (quantize_int8(model), quantize_int8(model, scales)):
        fused = packing.PackedEncoder(int8).eval()
        assert all(f is not None for f in fused._qkv)  # every layer's q/k/v as one int8 layer
        apart = packing.PackedEncoder(int8).eval()
        apart._qkv = [None] * len(apart._qkv)
        diff = float((_real(fused, batch) - _real(apart, batch)).abs().max())
        assert diff < 1e-5, diff
    assert all(f is None for f in plain._qkv)  # float layers stay apart (calibration hooks)
