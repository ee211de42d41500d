"""Half precision that takes and returns float32, the precision options, and placement."""

from __future__ import annotations

import copy

import pytest
import torch

from compression.forms import precision

from .tiny import bert_batch, tiny_bert, tiny_resnet

pytestmark = pytest.mark.unit


def test_half_precision_casts_float_inputs_in_and_outputs_back_to_float32():
    model = tiny_resnet()
    x = torch.rand(6, 3, 8, 8)
    half = precision.apply(model, "bfloat16", "none")
    assert isinstance(half, precision.HalfPrecision)
    assert half.module.stem[0].weight.dtype == torch.bfloat16
    assert model.stem[0].weight.dtype == torch.float32  # the caller's model is not touched
    with torch.inference_mode():
        out, ref = half(x), model(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err < 0.05, f"bfloat16 relative error {err:.4f}"


def test_half_precision_leaves_token_ids_alone_and_keeps_model_outputs():
    model = tiny_bert()
    batch = bert_batch()
    half = precision.apply(model, "bfloat16", "none")
    with torch.inference_mode():
        out = half(**batch)
        ref = model(**batch)
    # A transformers ModelOutput comes back as one, in float32, close to the original.
    assert type(out) is type(ref)
    assert out.last_hidden_state.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(
        out.last_hidden_state.flatten(1), ref.last_hidden_state.flatten(1)
    )
    assert float(cos.min()) > 0.99, f"cosine {float(cos.min()):.4f}"
    # Attributes the wrapper lacks fall through to the model (the serving adapters read config).
    assert half.config.hidden_size == 32
    assert copy.deepcopy(half).half_dtype == "bfloat16"


def test_options_try_both_half_dtypes_only_on_cuda():
    assert precision.options("float32", "int8-dynamic", "cpu") == ["int8-dynamic"]
    assert precision.options("float32", "none", "cuda") == []
    assert precision.options("float16", "none", "cpu") == ["float16"]
    cuda = precision.options("float16", "none", "cuda")
    assert cuda[0] == "float16"
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert cuda == (["float16", "bfloat16"] if bf16 else ["float16"])


def test_split_label_and_unknown_precision():
    assert precision.split_label("int8-dynamic") == ("float32", "int8-dynamic")
    assert precision.split_label("bfloat16") == ("bfloat16", "none")
    with pytest.raises(ValueError, match="unknown precision"):
        precision.split_label("float8")


def test_place_keeps_int8_on_the_cpu_and_is_a_no_op_where_the_module_is():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    q = precision.apply(model, "float32", "int8-dynamic")
    assert precision.is_quantized(q) and not precision.is_quantized(model)
    assert precision.place(q, "cpu") is q
    assert precision.place(model, "cpu") is model
    assert precision.device_of(model).type == "cpu"


def test_a_quantizing_cpu_profile_tries_bfloat16_only_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.setattr(precision, "native_bfloat16", lambda: True)
    assert precision.options("float32", "int8-dynamic", "cpu", True) == ["int8-dynamic", "bfloat16"]
    assert precision.options("float32", "int8-dynamic", "cpu", False) == ["int8-dynamic"]
    assert precision.options("float32", "none", "cpu", True) == []  # a float profile stays float
    monkeypatch.setattr(precision, "native_bfloat16", lambda: False)
    assert precision.options("float32", "int8-dynamic", "cpu", True) == ["int8-dynamic"]


def test_a_precision_the_model_cannot_run_in_is_reported_and_the_search_goes_on(monkeypatch):
    from compression import compress
    from compression.profiles import profile_from_dict

    class Mixed(torch.nn.Module):  # computes in float32 in the middle: no bfloat16 run
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 32), torch.nn.Linear(32, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)).float())

    monkeypatch.setattr(precision, "native_bfloat16", lambda: True)
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    profile = profile_from_dict(
        {"name": "unit", "ratios": [0.25], "allocation": "uniform", "latency_repeats": 3,
         "min_fidelity": 0.0, "min_neighbour_recall": None, "runtimes": ["torch"],
         "quantization": "int8-dynamic"}
    )  # fmt: skip
    r = compress(Mixed().eval(), profile, example_inputs=x[:8], calibration=[x[:64]],
                 validation=[(x[64:], None)]).report  # fmt: skip
    failed = [s["detail"] for s in r.steps if s["detail"].startswith("failed: bfloat16")]
    assert failed and "dtype" in failed[0], r.steps
    assert "int8-dynamic" in {c.precision for c in r.candidates}  # the others were measured
