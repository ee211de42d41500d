"""Every file of a saved variant, each way it can go bad: a VariantError naming it, never another
exception (issue 29, item 3: ``[]`` in report.json used to escape as an AttributeError)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compression import load_variant
from compression.core.errors import VariantError
from compression.forms import precision, runtimes, smoothing
from compression.output.checks import verify_files
from compression.output.report import CompressionReport
from compression.output.variant import CompressedModel

from ..service.corruption import cases, corrupted_copy

pytestmark = pytest.mark.unit


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def _report() -> CompressionReport:
    figures = dict.fromkeys(
        ["latency_ms_before", "latency_ms_after", "speedup", "metric_before", "metric_after",
         "fidelity", "budget", "seconds"], 1.0,
    )  # fmt: skip
    return CompressionReport(
        model="mlp", profile="unit", accepted=True, reason="", params_before=676,
        params_after=676, macs_before=640, macs_after=640, metric="cosine", **figures,
    )  # fmt: skip


def _save(tmp_path, form: str):
    model, x = _mlp(), torch.randn(8, 16)
    plan = {"source": None, "profile": None, "structure": {}, "dtype": "float32",
            "quantization": "none", "sparsity": "none"}  # fmt: skip
    variant = CompressedModel(module=model, report=_report(), float_module=model, plan=plan)
    if form == "smoothed":
        variant.smoothing = smoothing.scales(model, smoothing.input_ranges(model, [x]), 0.8)
        variant.module = precision.quantize_int8(model, variant.smoothing).eval()
        variant.plan["quantization"] = "int8-dynamic"
    elif form == "onnxruntime":
        if runtimes.available() is not None:
            pytest.skip(runtimes.available())
        graph, spec = runtimes.export(model, x)
        variant.module = runtimes.OrtModule(graph, ["input"], 1, spec)
        variant.plan["runtime"] = "onnxruntime"
    return variant.save(tmp_path / form), x


@pytest.mark.parametrize("form", ["torch", "smoothed", "onnxruntime"])
def test_each_corrupted_file_is_a_variant_error(tmp_path, form):
    saved, x = _save(tmp_path, form)
    reference = load_variant(saved, model=_mlp()).module(x)  # the intact one loads
    matrix = cases(saved)
    extra = {"smoothed": {"smoothing.safetensors"}, "onnxruntime": {"model.onnx"}}
    expected = {"weights.safetensors", "plan.json", "report.json", *extra.get(form, ())}
    assert {name for name, _ in matrix} == expected
    for i, (name, kind) in enumerate(matrix):
        bad = corrupted_copy(saved, tmp_path / f"case-{i}", name, kind)
        with pytest.raises(VariantError) as refused:
            load_variant(bad, model=_mlp())
        assert name in str(refused.value) or "plan.json" in str(refused.value), (name, kind)
        with pytest.raises(VariantError):
            verify_files(bad)
    assert torch.equal(load_variant(saved, model=_mlp()).module(x), reference)


def test_a_plan_saved_before_the_digests_still_loads(tmp_path):
    saved, x = _save(tmp_path, "torch")
    plan = json.loads((saved / "plan.json").read_text())
    for key in ("plan_sha256", "report_sha256"):
        del plan[key]
    (saved / "plan.json").write_text(json.dumps(plan))
    assert load_variant(saved, model=_mlp()).report.accepted


def test_files_that_pass_their_checks_but_do_not_fit_the_model_are_a_variant_error(tmp_path):
    saved, _ = _save(tmp_path, "torch")
    with pytest.raises(VariantError, match="does not load onto this model"):
        load_variant(saved, model=nn.Sequential(nn.Linear(3, 3)))
