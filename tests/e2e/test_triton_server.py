"""A real Triton Inference Server (PyTriton) serves exported variants; tritonclient queries it.

Needs .venv-triton (``bash deploy/triton/install-venv.sh``: nvidia-pytriton pins numpy<2, so it
cannot share .venv). Variants are compressed and exported with the real ``slimserve`` command,
served by ``deploy/triton/serve_variant.py`` on free ports, and every answer is compared with
the variant's own output computed here, in process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from .server import free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON = Path(os.environ.get("TRITON_VENV", ROOT / ".venv-triton")) / "bin" / "python"
SERVE = ROOT / "deploy" / "triton" / "serve_variant.py"
NARROW_PROFILE = """\
name: narrow
device: cpu
quantization: {quantization}
threads: 2
ratios: [0.5]
allocation: uniform
calibration_size: {calibration_size}
latency_repeats: 3
"""


def _triton_venv_reason() -> str | None:
    if not TRITON_PYTHON.is_file():
        return (
            f"no {TRITON_PYTHON.parent.parent.name}: run `bash deploy/triton/install-venv.sh` "
            "(nvidia-pytriton needs numpy<2, so Triton lives in its own venv)"
        )
    probe = subprocess.run(
        [str(TRITON_PYTHON), "-c", "import pytriton.triton, torch, tritonclient.grpc"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        return f"{TRITON_PYTHON} cannot import pytriton/torch: {probe.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module", autouse=True)
def _need_triton_venv():
    reason = _triton_venv_reason()
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


def make_variant(
    tmp: Path, model: str, quantization: str, force_int8: bool = False, calibration: int = 128
) -> Path:
    profile = tmp / f"{model}-{quantization}.yaml"
    profile.write_text(
        NARROW_PROFILE.format(quantization=quantization, calibration_size=calibration)
    )
    out = tmp / f"{model}-{'forced-int8' if force_int8 else quantization}"
    slimserve("compress", "--model", model, "--profile", str(profile), "--out", str(out))
    if force_int8:  # the search keeps int8 only where it measures faster; serve it regardless
        plan = json.loads((out / "plan.json").read_text())
        plan["quantization"] = "int8-dynamic"
        (out / "plan.json").write_text(json.dumps(plan, indent=2, sort_keys=True))
    return out


class TritonProcess:
    """serve_variant.py in its own process group, with its log in a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.http, self.grpc, self.metrics = free_ports(3)
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(TRITON_PYTHON),
                str(SERVE),
                *args,
                "--http-port",
                str(self.http),
                "--grpc-port",
                str(self.grpc),
                "--metrics-port",
                str(self.metrics),
                "--threads",
                "1",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
            cwd=ROOT,
            start_new_session=True,
        )

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def client(self):
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(f"127.0.0.1:{self.http}", concurrency=16)

    def wait_ready(self, models: list[str], timeout: float = 240) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"Triton exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if (
                    client.is_server_ready()
                    and all(client.is_model_ready(m) for m in models)
                    and "SLIMSERVE-TRITON READY" in self.log_path.read_text(errors="replace")
                ):
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
        pytest.fail(f"Triton not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test started
                self.proc.wait(timeout=30)
        self._log.close()


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
    int8 = make_variant(tmp_path, "digits-mlp", "none", force_int8=True)
    repo = tmp_path / "repo"
    for variant, name in ((fp32, "digits-fp32"), (int8, "digits-int8")):
        summary = slimserve(
            "export", "--variant", str(variant), "--format", "triton", "--out", str(repo),
            "--name", name, "--max-batch-size", "32",
        )  # fmt: skip
        assert summary["inputs"] == {"INPUT__0": ["TYPE_FP32", [1, 8, 8]]}

    server = TritonProcess(["--repo", str(repo)], tmp_path / "triton.log")
    try:
        server.wait_ready(["digits-fp32", "digits-int8"])
        client = server.client()

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
    finally:
        server.stop()
    assert server.proc.returncode is not None


def test_triton_serves_a_variant_directory(tmp_path, digits_x):
    cnn = make_variant(tmp_path, "digits-cnn", "int8-dynamic")
    server = TritonProcess(
        ["--variant", str(cnn), "--name", "cnn", "--max-batch-size", "16"], tmp_path / "t.log"
    )
    try:
        server.wait_ready(["cnn"])
        client = server.client()
        assert client.get_model_config("cnn")["max_batch_size"] == 16
        x = digits_x[:16]
        np.testing.assert_allclose(infer(client, "cnn", x), variant_outputs(cnn, x), atol=1e-5)
        client.close()
    finally:
        server.stop()


def test_triton_serves_minilm_sentence_embeddings(tmp_path, minilm_bundle):
    from compression import PROFILES, compress
    from service.models import load

    # In process, on two calibration batches: the CLI's full calibration set takes minutes here.
    profile = PROFILES["cpu"].model_copy(
        update={"ratios": [0.5], "allocation": "uniform", "latency_repeats": 3}
    )
    compressed = compress(
        minilm_bundle.factory(),
        profile,
        example_inputs=minilm_bundle.example_inputs,
        calibration=minilm_bundle.calibration[:2],
        validation=minilm_bundle.validation[:1],
        metric="cosine",
        source="minilm",
    )
    variant = compressed.save(tmp_path / "minilm-variant")
    repo = tmp_path / "repo"
    slimserve("export", "--variant", str(variant), "--out", str(repo), "--name", "minilm")
    server = TritonProcess(["--repo", str(repo)], tmp_path / "t.log")
    try:
        server.wait_ready(["minilm"])
        client = server.client()
        meta = client.get_model_metadata("minilm")
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
            ("input_ids", "INT64", [-1, -1]),
            ("attention_mask", "INT64", [-1, -1]),
        ]
        module = load(variant).module
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
    finally:
        server.stop()
