"""ONNX export for Triton's ONNX Runtime backend: the file answers like the variant, float16
variants stay float16 inside, int8 variants are refused with the reason, the CLI writes it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compression.output.checks import seal
from service.export.triton import ExportError, read_config, tensor_specs

from .test_triton_export import make_variant

pytestmark = pytest.mark.integration
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    # A float variant (what has an ONNX form): the cpu profile's int8 step is off, or the search
    # may serve torch int8 (refused by export_onnx, tested on its own below).
    return make_variant("digits-mlp", tmp_path_factory.mktemp("mlp") / "v", quantization="none")


def _images(n: int) -> np.ndarray:
    from service.models.digits import digits_split

    return digits_split()[2][:n].numpy()


def _variant_out(variant_dir: Path, x: np.ndarray) -> np.ndarray:
    from service.models import load

    module = load(variant_dir).module
    with torch.inference_mode():
        return module(torch.from_numpy(x)).float().numpy()


def test_onnx_model_answers_like_the_variant_at_any_batch_size(mlp, tmp_path):
    from service.export.onnx import export_onnx

    path = export_onnx(mlp, tmp_path / "repo", model_name="mlp", max_batch_size=16)
    config = read_config(path)
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert config.HasField("dynamic_batching")
    assert "INFERENCE_MODE" not in config.parameters  # a libtorch-only parameter
    assert [(t.name, t.data_type, t.dims) for t in tensor_specs(config.input)] == [
        ("INPUT__0", "TYPE_FP32", (1, 8, 8))
    ]
    assert [(t.name, t.data_type, t.dims) for t in tensor_specs(config.output)] == [
        ("OUTPUT__0", "TYPE_FP32", (10,))
    ]
    meta = json.loads((path / "slimserve.json").read_text())
    assert meta["platform"] == "onnxruntime_onnx" and meta["export_max_rel_diff"] < 1e-3
    session = ort.InferenceSession(str(path / "1" / "model.onnx"))
    for n in (1, 7):
        x = _images(n)
        got = session.run(["OUTPUT__0"], {"INPUT__0": x})[0]
        want = _variant_out(mlp, x)
        assert got.shape == (n, 10)
        assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()


def test_a_float16_variant_stays_float16_inside_and_float32_at_its_edges(mlp, tmp_path):
    from service.export.onnx import export_onnx

    half = tmp_path / "half"
    half.mkdir()
    for f in mlp.iterdir():
        (half / f.name).write_bytes(f.read_bytes())
    plan = json.loads((half / "plan.json").read_text())
    plan["dtype"] = "float16"  # what a gpu-profile variant records
    (half / "plan.json").write_text(json.dumps(seal(plan), indent=2, sort_keys=True))
    path = export_onnx(half, tmp_path / "repo", model_name="mlp16")
    graph = onnx.load(str(path / "1" / "model.onnx")).graph
    f16 = onnx.TensorProto.FLOAT16
    assert any(init.data_type == f16 for init in graph.initializer)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = json.loads((path / "slimserve.json").read_text())
    assert meta["dtype"] == "float16" and meta["export_max_rel_diff"] < 3e-2


def test_int8_variants_are_refused_with_the_reason(tmp_path):
    from service.export.onnx import export_onnx

    v = make_variant("digits-mlp", tmp_path / "v", int8=True)
    with pytest.raises(ExportError, match="no ONNX form"):
        export_onnx(v, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_cli_writes_the_onnx_format(mlp, tmp_path, capsys):
    from service.cli.main import main

    code = main(["export", "--variant", str(mlp), "--format", "onnx", "--out", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert code in (0, None) and out["platform"] == "onnxruntime_onnx"
    assert (Path(out["path"]) / "1" / "model.onnx").is_file()


@pytest.mark.slow
def test_a_float16_text_encoder_exports_and_runs_in_onnx_runtime(tmp_path, minilm_narrow_variant):
    """MiniLM in float16 (the gpu profile's precision): opset 17's fused LayerNorm would mix
    float32 and float16 and ONNX Runtime refuses it; the half export uses opset 16."""
    import shutil

    from service.export.onnx import OPSET_HALF, export_onnx

    # make_variant("minilm", ...)'s variant, compressed once per session (tests/conftest.py):
    # a copy, since its plan is edited below.
    v = Path(shutil.copytree(minilm_narrow_variant, tmp_path / "v"))
    plan = json.loads((v / "plan.json").read_text())
    plan["dtype"], plan["quantization"] = "float16", "none"  # as the gpu profile records it
    (v / "plan.json").write_text(json.dumps(seal(plan), indent=2, sort_keys=True))
    path = export_onnx(v, tmp_path / "repo", model_name="minilm16")
    meta = json.loads((path / "slimserve.json").read_text())
    assert meta["opset"] == OPSET_HALF and meta["export_max_rel_diff"] < 3e-2
    config = read_config(path)
    assert [(t.name, t.dims) for t in tensor_specs(config.input)] == [
        ("input_ids", (-1,)),
        ("attention_mask", (-1,)),
    ]
