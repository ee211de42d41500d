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
