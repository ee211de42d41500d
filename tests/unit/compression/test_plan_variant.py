import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from compression import compress, load_variant
from compression.core.errors import DataError, VariantError

from .tiny import tiny_resnet

pytestmark = pytest.mark.unit

PROFILE = {
    "name": "unit",
    "ratios": [0.5],
    "allocation": "uniform",
    "latency_repeats": 3,
    "quantization": "none",
    "max_drop": 1.0,
    "min_fidelity": 0.0,
    # Plan replay is about pruned structure: the original under ONNX Runtime (lossless, often
    # faster) would otherwise win where no pruned candidate holds the recall floor.
    "runtimes": ["torch"],
}


def _variant(tmp_path):
    from compression.profiles import profile_from_dict

    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    model = tiny_resnet()
    v = compress(model, profile_from_dict(PROFILE), example_inputs=x[:4], calibration=[x])
    return model, x, v


def test_compress_does_not_mutate_and_keeps_output_shape(tmp_path):
    model, x, v = _variant(tmp_path)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    assert v.module(x).shape == model(x).shape
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())
    assert v.report.macs_after < v.report.macs_before


def test_report_json_contract(tmp_path):
    _, _, v = _variant(tmp_path)
    v.save(tmp_path / "v")
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    contract = [
        "model",
        "profile",
        "accepted",
        "params_before",
        "params_after",
        "macs_before",
        "macs_after",
        "latency_ms_before",
        "latency_ms_after",
        "speedup",
        "metric",
        "metric_before",
        "metric_after",
        "fidelity",
        "seconds",
        "steps",
    ]
    assert [k for k in contract if k not in report] == []
    assert (tmp_path / "v" / "report.png").stat().st_size > 1000
    assert all("step" in s for s in report["steps"])


def test_save_load_in_a_fresh_process_reproduces_outputs(tmp_path):
    _, x, v = _variant(tmp_path)
    v.save(tmp_path / "v")
    save_file({"x": x, "y": v.module(x).detach()}, tmp_path / "io.safetensors")
    script = f"""
import sys, torch
torch.set_num_threads({torch.get_num_threads()})  # the test's: another count sums in another order
sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
from safetensors.torch import load_file
from compression import load_variant
from tiny import tiny_resnet
io = load_file({str(tmp_path / "io.safetensors")!r})
v = load_variant({str(tmp_path / "v")!r}, model=tiny_resnet())
with torch.inference_mode():
    diff = (v.module(io['x']) - io['y']).abs().max().item()
print(diff)
sys.exit(0 if diff == 0.0 else 1)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_tampered_weights_are_refused(tmp_path):
    _, _, v = _variant(tmp_path)
    v.save(tmp_path / "v")
    with open(tmp_path / "v" / "weights.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(VariantError, match="checksum .* does not match"):
        load_variant(tmp_path / "v", model=tiny_resnet())


def test_plan_of_another_version_is_refused_with_what_to_do(tmp_path):
    _, _, v = _variant(tmp_path)
    v.save(tmp_path / "v")
    plan = json.loads((tmp_path / "v" / "plan.json").read_text())
    (tmp_path / "v" / "plan.json").write_text(json.dumps(dict(plan, version=99)))
    with pytest.raises(
        VariantError, match=r"version 99; this SlimServe reads versions 1, 2\. Compress"
    ):
        load_variant(tmp_path / "v", model=tiny_resnet())


def test_missing_file_is_named(tmp_path):
    with pytest.raises(VariantError, match="plan.json is missing"):
        load_variant(tmp_path, model=tiny_resnet())


def test_wrong_calibration_shape_is_explained():
    model = tiny_resnet()
    with pytest.raises(DataError, match=r"calibration does not fit the model: .*tensor\[4, 5\]"):
        compress(
            model, "cpu", example_inputs=torch.randn(2, 3, 8, 8), calibration=[torch.randn(4, 5)]
        )


def test_empty_calibration_is_explained():
    with pytest.raises(DataError, match="calibration is empty"):
        compress(tiny_resnet(), "cpu", example_inputs=torch.randn(2, 3, 8, 8), calibration=[])
