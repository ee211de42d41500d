"""A real Triton Inference Server (PyTriton) serves exported variants; tritonclient queries it.

Needs .venv-triton (``bash deploy/triton/install-venv.sh``: nvidia-pytriton pins numpy<2, so it
cannot share .venv). Variants are compressed and exported with the real ``slimserve`` command,
served by ``deploy/triton/serve_variant.py`` on free ports, and every answer is compared with
the variant's own output computed here, in process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compression.output.checks import seal
from service.launch import ROOT, TritonServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NARROW_PROFILE = """\
name: narrow
device: cpu
quantization: {quantization}
threads: 2
ratios: [0.5]
allocation: uniform
calibration_size: {calibration_size}
latency_repeats: 3
runtimes: [torch]
"""


@pytest.fixture(scope="module", autouse=True)
def _need_triton_venv():
    reason = TritonServer.unavailable()
    if reason:
        pytest.skip(reason)


def slimserve(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ.copy(),
        cwd=ROOT,
    )
    assert done.returncode in (0, 3), done.stderr[-3000:]  # 3: compressed, over budget
    # The summary is the JSON object that ends stdout (a library may print lines before it).
    return json.loads(done.stdout[done.stdout.index("{\n") :])


def make_variant(tmp: Path, model: str, quantization: str, calibration: int = 128) -> Path:
    profile = tmp / f"{model}-{quantization}.yaml"
    profile.write_text(
        NARROW_PROFILE.format(quantization=quantization, calibration_size=calibration)
    )
    out = tmp / f"{model}-{quantization}"
    slimserve("compress", "--model", model, "--profile", str(profile), "--out", str(out))
    return out


def forced_int8(variant: Path) -> Path:
    """A copy of ``variant`` whose plan asks for int8: the search keeps int8 only where it
    measures faster; serve it regardless (``load_variant`` re-applies the plan's precision)."""
    out = variant.with_name(variant.name + "-forced-int8")
    shutil.copytree(variant, out)
    plan = json.loads((out / "plan.json").read_text())
    plan["quantization"] = "int8-dynamic"
    (out / "plan.json").write_text(json.dumps(seal(plan), indent=2, sort_keys=True))
    return out


def infer_tokens(client, model: str, enc: dict) -> np.ndarray:
    import tritonclient.http as httpclient

    inputs = []
    for name in ("input_ids", "attention_mask"):
        a = enc[name].numpy().astype(np.int64)
        inp = httpclient.InferInput(name, list(a.shape), "INT64")
        inp.set_data_from_numpy(a, binary_data=True)
        inputs.append(inp)
    return client.infer(model, inputs).as_numpy("OUTPUT__0")


def infer(client, model: str, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = httpclient.InferRequestedOutput("OUTPUT__0", binary_data=True)
    return client.infer(model, [inp], outputs=[out]).as_numpy("OUTPUT__0")


def variant_outputs(variant_dir: Path, x: np.ndarray) -> np.ndarray:
    from service.models import load

    with torch.no_grad():
        return load(variant_dir).module(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def digits_x() -> np.ndarray:
    from service.models.digits import digits_split

    return digits_split()[2].numpy()


def test_triton_serves_an_exported_repository(tmp_path, digits_x):
    fp32 = make_variant(tmp_path, "digits-mlp", "none")
    int8 = forced_int8(fp32)  # the same compression, served in int8
    repo = tmp_path / "repo"
    for variant, name in ((fp32, "digits-fp32"), (int8, "digits-int8")):
        summary = slimserve(
            "export", "--variant", str(variant), "--format", "triton", "--out", str(repo),
            "--name", name, "--max-batch-size", "32",
        )  # fmt: skip
        assert summary["inputs"] == {"INPUT__0": ["TYPE_FP32", [1, 8, 8]]}

    with TritonServer(tmp_path / "triton.log", repo=repo).start() as server:
        assert sorted(server.models) == ["digits-fp32", "digits-int8"]
        client = server.client(concurrency=16)

        # Triton reports what config.pbtxt declares.
        meta = client.get_model_metadata("digits-int8")
        assert meta["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert meta["outputs"] == [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 10]}]
        assert client.get_model_config("digits-int8")["max_batch_size"] == 32

        for name, variant in (("digits-fp32", fp32), ("digits-int8", int8)):
            for x in (digits_x[:32], digits_x[:1], digits_x[100:117]):
                got = infer(client, name, x)
                want = variant_outputs(variant, x)
                assert got.shape == want.shape == (len(x), 10)
                # int8-dynamic scales per batch: one request at a time, the batch is the same.
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)

        # Concurrent single-image requests go through dynamic batching; fp32 outputs do not
        # depend on the batch they were merged into.
        import tritonclient.http as httpclient

        pending = []
        for i in range(32):
            inp = httpclient.InferInput("INPUT__0", [1, 1, 8, 8], "FP32")
            inp.set_data_from_numpy(digits_x[i : i + 1], binary_data=True)
            pending.append(client.async_infer("digits-fp32", [inp]))
        got = np.concatenate([p.get_result().as_numpy("OUTPUT__0") for p in pending])
        # Triton batches these as they come: float sums in another order, hence rtol.
        np.testing.assert_allclose(got, variant_outputs(fp32, digits_x[:32]), rtol=1e-5, atol=1e-4)

        # A wrong shape is the client's error, answered by Triton itself.
        with pytest.raises(Exception, match="(?i)shape|dims"):
            infer(client, "digits-fp32", np.zeros((2, 64), np.float32))
        client.close()
    assert server.proc.returncode is not None


def test_triton_serves_a_variant_directory(tmp_path, digits_x):
    cnn = make_variant(tmp_path, "digits-cnn", "int8-dynamic")
    server = TritonServer(tmp_path / "t.log", variant=cnn, name="cnn", max_batch_size=16)
    with server.start():
        assert server.models == ["cnn"]
        client = server.client()
        assert client.get_model_config("cnn")["max_batch_size"] == 16
        x = digits_x[:16]
        np.testing.assert_allclose(infer(client, "cnn", x), variant_outputs(cnn, x), atol=1e-5)
        client.close()


def test_triton_serves_minilm_sentence_embeddings(tmp_path, minilm_bundle, minilm_narrow_variant):
    from compression import load_variant

    # Compressed in process on two calibration batches (the CLI's full calibration set takes
    # minutes here), once per session: tests/conftest.py's minilm_narrow_variant (the cpu
    # profile at 50 %, uniform, torch only: Triton gets TorchScript and .venv-triton has no
    # onnxruntime), which the export tests in tests/unit/service read too.
    variant = minilm_narrow_variant
    repo = tmp_path / "repo"
    slimserve("export", "--variant", str(variant), "--out", str(repo), "--name", "minilm")
    with TritonServer(tmp_path / "t.log", repo=repo).start() as server:
        assert server.models == ["minilm"]
        client = server.client()
        meta = client.get_model_metadata("minilm")
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
            ("input_ids", "INT64", [-1, -1]),
            ("attention_mask", "INT64", [-1, -1]),
        ]
        # The padded torch form is what Triton gets (a packed int8 variant's served form differs
        # within quantization error: its activation scales do not see the padding).
        module = load_variant(variant, model=minilm_bundle.factory(), runtime="torch").module
        sentences = ["Triton answers.", "A compressed sentence encoder, served on a GPU pool."]
        for batch in (sentences, sentences[:1]):
            enc = minilm_bundle.tokenize(batch)
            got = infer_tokens(client, "minilm", enc)
            with torch.no_grad():
                hidden = module(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
            np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
        client.close()
