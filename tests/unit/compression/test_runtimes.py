"""ONNX Runtime as a measured runtime: faithful exports, checksummed files, honest fallbacks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compression import PROFILES, compress, load_variant
from compression.core.errors import VariantError
from compression.search import splits

pytestmark = pytest.mark.unit
runtimes = pytest.importorskip("compression.forms.runtimes")
if runtimes.available() is not None:
    pytest.skip(runtimes.available(), allow_module_level=True)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return BertModel(config).eval()


def _tokens(batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # padding in the first row
    return {"input_ids": ids, "attention_mask": mask}


def test_exported_text_encoder_matches_torch_on_other_shapes():
    model = _tiny_bert()
    found, notes = runtimes.candidates(model, _tokens(4, 12, 0), [_tokens(3, 20, 1)], 1)
    precisions = [p for p, _ in found]
    assert precisions == ["onnxruntime-fp32", "onnxruntime-int8"], notes
    fp32 = dict(found)["onnxruntime-fp32"]
    x = _tokens(2, 7, 2)  # a shape neither the export nor the check saw
    with torch.inference_mode():
        expected = model(**x).last_hidden_state
    diff = float((fp32(**x).last_hidden_state - expected).abs().max())
    assert diff < 1e-4, diff
    int8 = dict(found)["onnxruntime-int8"]
    cos = torch.nn.functional.cosine_similarity(
        int8(**x).last_hidden_state.flatten(1), expected.flatten(1)
    ).min()
    assert cos > 0.95, float(cos)


def test_data_dependent_branches_fall_back_to_torch_with_the_reason():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else self.b(x)  # traced with one branch

    x = torch.ones(4, 8)
    found, notes = runtimes.candidates(Branchy().eval(), x, [-torch.ones(3, 8)], 1)
    assert found == [], notes
    assert any("not faithful" in n or "export failed" in n for n in notes), notes


def test_compress_measures_onnxruntime_and_a_saved_variant_reloads_it(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    profile = PROFILES["cpu"].model_copy(
        update={"ratios": [0.3], "allocation": "uniform", "latency_repeats": 3,
                "runtimes": ["onnxruntime"], "min_fidelity": 0.8,
                "min_neighbour_recall": None}
    )  # fmt: skip
    variant = compress(_mlp(), profile, example_inputs=x[:8], calibration=[x[:128]],
                       validation=[(x[128:], None)])  # fmt: skip
    r = variant.report
    tried = {c.precision for c in r.candidates}
    assert {"onnxruntime-fp32", "onnxruntime-int8"} <= tried, (tried, r.runtimes)
    # Both the pruned structure and the original are exported (int8 error compounds with
    # pruning error, so int8 of the original can be the better variant).
    exported = {c.ratio for c in r.candidates if c.precision.startswith("onnxruntime")}
    assert exported == {0.0, 0.3}, (exported, r.runtimes)
    ort_notes = list(
        dict.fromkeys(n.split(":")[0] for n in r.runtimes if not n.startswith("packed tokens"))
    )
    assert ort_notes == ["0% none", "30% uniform"], r.runtimes
    # An fp32 graph takes its torch structure's figures on the selection split (the export
    # check bounds their difference); measured on the graph they agree.
    by = {(c.ratio, c.precision): c for c in r.candidates}
    sel, _ = splits.interleave([(x[128:], None)])
    ev = splits.evaluation(_mlp().eval(), sel, "cosine", 0.01, 0.8, 0.05)
    (graph,) = [m for p, m in runtimes.candidates(_mlp().eval(), x[:8], [x[:3]], 2)[0]
                if p == "onnxruntime-fp32"]  # fmt: skip
    measured = splits.measure(graph, ev, "cosine", None)[0]
    assert abs(measured - by[(0.0, "onnxruntime-fp32")].metric) < 1e-5, measured
    assert r.precision.startswith("onnxruntime"), (r.precision, r.runtimes)
    assert isinstance(variant.module, runtimes.OrtModule)
    out = tmp_path / "v"
    variant.save(out)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["runtime"] == "onnxruntime" and (out / "model.onnx").is_file()
    again = load_variant(out, model=_mlp())
    with torch.inference_mode():
        assert torch.equal(again.module(x[:5]), variant.module(x[:5]))
    data = bytearray((out / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(VariantError, match="checksum"):
        load_variant(out, model=_mlp())


def test_a_float_profile_gets_no_int8_graph():
    """``quantization: none`` asks for float: ONNX Runtime fp32 is measured, its int8 is not."""
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    profile = PROFILES["cpu"].model_copy(
        update={"ratios": [0.3], "allocation": "uniform", "latency_repeats": 3,
                "quantization": "none", "min_fidelity": 0.8, "min_neighbour_recall": None}
    )  # fmt: skip
    r = compress(_mlp(), profile, example_inputs=x[:8], calibration=[x[:128]],
                 validation=[(x[128:], None)]).report  # fmt: skip
    tried = {c.precision for c in r.candidates}
    assert "onnxruntime-fp32" in tried and not tried & {"onnxruntime-int8", "int8-dynamic"}, tried
    assert any("int8 not tried: the profile's quantization is none" in n for n in r.runtimes), (
        r.runtimes
    )
