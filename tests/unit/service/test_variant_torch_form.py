"""``load_variant(runtime="torch")``: the torch form of an ONNX Runtime variant, without ORT.

A digits-mlp variant is compressed here with a profile that pins ``runtimes: [onnxruntime]``
(one ratio, uniform allocation: seconds), so ONNX Runtime serves it. Its torch form is its
float weights in the plan's precision (float32): it must answer like the ONNX Runtime module,
load where onnxruntime cannot be imported, and export to TorchScript for Triton there.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from compression import PROFILES, load_variant
from compression.core.errors import VariantError
from compression.output.checks import seal

pytestmark = pytest.mark.unit
runtimes = pytest.importorskip("compression.forms.runtimes")
if runtimes.available() is not None:  # making the ORT variant needs ONNX Runtime
    pytest.skip(runtimes.available(), allow_module_level=True)

PINNED = {
    "ratios": [0.3],
    "allocation": "uniform",
    "latency_repeats": 3,
    "runtimes": ["onnxruntime"],
    "quantization": "none",
}
# Torch form vs the ONNX Runtime module on the same float weights: ONNX Runtime fp32 reorders
# float sums (differences ~1e-6 of scores of magnitude ~10); ONNX Runtime int8 quantizes
# weights and activations, so there only the predicted class is compared.
FP32_ATOL = 1e-4
INT8_MIN_AGREEMENT = 0.95


@pytest.fixture(scope="module")
def ort_variant(tmp_path_factory):
    from service.models.sources import resolve

    bundle = resolve("digits-mlp")
    variant = bundle.compress(PROFILES["cpu"].model_copy(update=PINNED))
    out = variant.save(tmp_path_factory.mktemp("ort") / "v")
    x = torch.cat([b for b, _ in bundle.validation])
    return bundle, out, x, variant.report.precision


def _no_onnxruntime(monkeypatch) -> None:
    """Every later ``import onnxruntime`` (and its submodules) raises ImportError."""
    for name in [m for m in sys.modules if m == "onnxruntime" or m.startswith("onnxruntime.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert runtimes.available() is not None


def test_the_torch_form_answers_like_the_onnxruntime_variant(ort_variant):
    bundle, out, x, chosen = ort_variant
    assert json.loads((out / "plan.json").read_text())["runtime"] == "onnxruntime"
    served = load_variant(out, model=bundle.factory())
    assert isinstance(served.module, runtimes.OrtModule), type(served.module)
    torch_form = load_variant(out, model=bundle.factory(), runtime="torch")
    assert isinstance(torch_form.module, nn.Module), type(torch_form.module)
    assert not isinstance(torch_form.module, runtimes.OrtModule)
    assert not torch_form.module.training
    with torch.inference_mode():
        a, b = torch_form.module(x), served.module(x)
    assert a.shape == b.shape == (len(x), 10), (a.shape, b.shape)
    if chosen == "onnxruntime-fp32":
        diff = float((a - b).abs().max())
        assert diff <= FP32_ATOL, f"max |torch - ort fp32| {diff:.3g} > {FP32_ATOL}"
    else:
        assert chosen == "onnxruntime-int8", chosen
        agree = float((a.argmax(1) == b.argmax(1)).float().mean())
        assert agree >= INT8_MIN_AGREEMENT, f"torch vs ort int8 class agreement {agree:.3f}"
    # runtime="onnxruntime" insists on the graph: the same module as the plan's default
    again = load_variant(out, model=bundle.factory(), runtime="onnxruntime")
    with torch.inference_mode():
        assert torch.equal(again.module(x), b)


def test_runtime_is_validated_and_onnxruntime_is_refused_for_a_torch_variant(ort_variant, tmp_path):
    bundle, out, _, _ = ort_variant
    with pytest.raises(ValueError, match="runtime='tensorrt' is not one of"):
        load_variant(out, model=bundle.factory(), runtime="tensorrt")
    torch_served = Path(shutil.copytree(out, tmp_path / "torch-served"))
    plan = json.loads((torch_served / "plan.json").read_text())
    del plan["runtime"]  # what a torch-served plan looks like
    (torch_served / "plan.json").write_text(json.dumps(seal(plan)))
    with pytest.raises(VariantError, match="served by torch and has no ONNX graph"):
        load_variant(torch_served, model=bundle.factory(), runtime="onnxruntime")
    module = load_variant(torch_served, model=bundle.factory(), runtime="torch").module
    assert not isinstance(module, runtimes.OrtModule)


def test_without_onnxruntime_the_torch_form_loads_and_exports_to_torchscript(
    ort_variant, tmp_path, monkeypatch
):
    from service.export.triton import MODEL_FILE, VERSION, export_triton

    bundle, out, x, _ = ort_variant
    with torch.inference_mode():
        expected = load_variant(out, model=bundle.factory(), runtime="torch").module(x)
    _no_onnxruntime(monkeypatch)
    with pytest.raises(VariantError, match="onnxruntime not installed"):
        load_variant(out, model=bundle.factory())  # the plan's runtime needs it
    torch_form = load_variant(out, model=bundle.factory(), runtime="torch")
    with torch.inference_mode():
        diff = float((torch_form.module(x) - expected).abs().max())
    assert diff == 0.0, f"torch form differs without onnxruntime: {diff:.3g}"
    model_dir = export_triton(out, tmp_path / "repo", model_name="mlp-ort")
    scripted = torch.jit.load(str(model_dir / VERSION / MODEL_FILE))
    with torch.inference_mode():
        diff = float((scripted(x) - expected).abs().max())
    assert diff <= 1e-5, f"TorchScript vs torch form of the ORT variant: {diff:.3g}"


def test_onnx_runtime_threads_follow_the_callers_budget(ort_variant):
    """A server loads ONNX Runtime variants with its per-model torch thread budget."""
    bundle, directory = ort_variant[0], ort_variant[1]
    one = load_variant(directory, model=bundle.factory(), threads=1).module
    default = load_variant(directory, model=bundle.factory()).module
    assert one.threads == 1 and default.threads == PROFILES["cpu"].threads, (one, default)
    assert copy.deepcopy(one).threads == 1  # a new session, the same budget
