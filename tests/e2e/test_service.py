"""A real ``slimserve serve`` on a free port, driven by real clients (tritonclient, httpx)."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton

from service.launch import SlimServer, metric_value

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DIGITS = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
SENTENCES = ["The cat sat on the mat.", "Integers are immutable objects.", "Hello!"]


def _client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_digits_matches_in_process_model(server, digits_cnn_bundle, binary):
    client = _client(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits-cnn")
    meta = client.get_model_metadata("digits-cnn")
    assert meta["inputs"][0] == {"name": "INPUT", "datatype": "FP32", "shape": [-1, 1, 8, 8]}
    x = triton.InferInput("INPUT", list(DIGITS.shape), "FP32")
    x.set_data_from_numpy(DIGITS, binary_data=binary)
    out = client.infer(
        "digits-cnn", [x], outputs=[triton.InferRequestedOutput("SCORES", binary_data=binary)]
    )
    scores = out.as_numpy("SCORES")
    with torch.inference_mode():
        expected = digits_cnn_bundle.factory()(torch.from_numpy(DIGITS)).numpy()
    assert scores.shape == (5, 10)
    np.testing.assert_allclose(scores, expected, atol=1e-4)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_minilm_returns_sentence_embeddings(server, minilm_bundle, binary):
    client = _client(server)
    text = triton.InferInput("TEXT", [len(SENTENCES)], "BYTES")
    text.set_data_from_numpy(
        np.array([s.encode() for s in SENTENCES], dtype=object), binary_data=binary
    )
    emb = client.infer("minilm", [text]).as_numpy("EMBEDDING")
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    batch = minilm_bundle.tokenize(SENTENCES)
    with torch.inference_mode():
        hidden = minilm_bundle.factory()(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert float((emb * ref).sum(1).min()) > 0.9999


def test_bentoml_predict_json(server):
    r = httpx.post(
        f"{server.url}/predict", json={"model": "digits-cnn", "inputs": DIGITS[:2, 0].tolist()}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "digits-cnn" and np.asarray(body["outputs"]).shape == (2, 10)
    r = httpx.post(f"{server.url}/predict", json={"model": "minilm", "inputs": SENTENCES[:2]})
    assert np.asarray(r.json()["outputs"]).shape == (2, 384)
    # /predict is BentoML's own route (the v2 and admin 4xx matrix runs in process, in
    # tests/unit/service/test_http.py): its client errors are 4xx too.
    r = httpx.post(f"{server.url}/predict", json={"model": "digits-cnn", "inputs": [[1, 2, 3]]})
    assert 400 <= r.status_code < 500 and "[N, 64]" in r.text, r.text
    r = httpx.post(f"{server.url}/predict", json={"model": "resnet", "inputs": [[1]]})
    assert r.status_code == 404 and "digits-cnn" in r.text, r.text


def _infer(server, body, **headers):
    return httpx.post(
        f"{server.url}/v2/models/digits-cnn/infer", content=body, headers=headers, timeout=30
    )


class Load:
    """Clients that keep sending requests and record every outcome and serving variant."""

    def __init__(self, server, threads: int = 2) -> None:
        self.url = f"{server.url}/v2/models/digits-cnn/infer"
        self.body = (
            '{"inputs":[{"name":"INPUT","datatype":"FP32","shape":[1,1,8,8],"data":'
            + str([0.5] * 64)
            + "}]}"
        )
        self.stop = threading.Event()
        self.codes: list[int] = []
        self.variants: list[str] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url, content=self.body)
                    self.codes.append(r.status_code)
                    self.variants.append(r.headers.get("x-slimserve-variant", ""))
                except httpx.HTTPError:
                    self.codes.append(-1)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def _wait_job(server, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.admin("GET", f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still running: {job}")


def test_swap_under_load_rollback_restart_and_metrics(server, server_home):
    before = httpx.get(f"{server.url}/metrics", timeout=60).text
    ok_before = metric_value(
        before, "slimserve_inference_requests_total", model="digits-cnn", status="ok"
    )

    with Load(server) as load:
        # The fast profile (tests/conftest.py): the cpu profile's steps, fewer timing rounds.
        r = server.admin("POST", "/models/digits-cnn/compress", json={"profile": "fast"})
        assert r.status_code == 202, r.text
        job_id = r.json()["job"]
        jobs = server.admin("GET", "/jobs").json()["jobs"]
        assert jobs[0]["id"] == job_id and jobs[0]["model"] == "digits-cnn"
        job = _wait_job(server, job_id)
        new = job["variant"]
        # A little traffic on the new variant. Every worker serves it once it has followed the
        # active pointer and loaded it (an ONNX Runtime session under this load: seconds).
        deadline = time.monotonic() + 60
        time.sleep(1.0)
        while load.variants[-1:] != [new] and time.monotonic() < deadline:
            time.sleep(0.5)
    assert job["state"] == "succeeded", job
    assert load.codes and all(c == 200 for c in load.codes), sorted(set(load.codes))
    assert load.variants[0] == "original" and load.variants[-1] == new
    assert job["report"]["accepted"] and job["report"]["macs_after"] < job["report"]["macs_before"]

    # /metrics counts what we sent (plus nothing else hits digits-cnn meanwhile)
    text = httpx.get(f"{server.url}/metrics", timeout=60).text
    ok_after = metric_value(
        text, "slimserve_inference_requests_total", model="digits-cnn", status="ok"
    )
    assert ok_after - ok_before == len(load.codes)
    hist = metric_value(text, "slimserve_inference_latency_seconds_count", model="digits-cnn")
    assert hist >= len(load.codes)
    for name in (
        "slimserve_inference_latency_seconds_bucket",
        "slimserve_model_accuracy",
        "slimserve_model_speedup",
        "slimserve_model_params",
        "slimserve_model_macs",
        "slimserve_active_variant",
        "slimserve_swaps_total",
        "slimserve_compression_seconds_count",
        "slimserve_compression_jobs_total",
    ):
        assert name in text, name
    assert metric_value(text, "slimserve_active_variant", model="digits-cnn", variant=new) == 1
    assert metric_value(text, "slimserve_compression_jobs_total", outcome="succeeded") == 1
    assert (
        metric_value(text, "slimserve_swaps_total", model="digits-cnn", reason="compression") == 1
    )
    # The verified metric; labelled tasks add precision, recall and F1 beside it (metric=...).
    metric = job["report"]["metric"]
    acc = metric_value(
        text, "slimserve_model_accuracy", model="digits-cnn", variant=new, metric=metric
    )
    assert acc == pytest.approx(job["report"]["metric_after"])

    variants = server.admin("GET", "/models/digits-cnn/variants").json()["variants"]
    assert {v["id"]: v["active"] for v in variants} == {"original": False, new: True}

    # rollback: back to the original
    r = server.admin("POST", "/models/digits-cnn/rollback")
    assert r.status_code == 200 and r.json()["active_variant"] == "original", r.text
    assert _infer(server, load.body).headers["x-slimserve-variant"] == "original"
    assert server.admin("POST", "/models/digits-cnn/rollback").status_code == 409  # nothing left

    # activate the variant again, then restart: it is restored
    assert (
        server.admin("POST", "/models/digits-cnn/activate", json={"variant": new}).status_code
        == 200
    )
    # A second process on the same home starts as a restart would (it reads the pointer); the
    # session's server keeps running for the other modules that use it (under pytest-xdist
    # they may run after this one), and goes back to the original afterwards.
    again = SlimServer(server_home).start()
    try:
        models = {m["name"]: m for m in again.admin("GET", "/models").json()["models"]}
        assert models["digits-cnn"]["active_variant"] == new
        assert models["minilm"]["active_variant"] == "original"
        r = httpx.post(f"{again.url}/v2/models/digits-cnn/infer", content=load.body, timeout=60)
        assert r.status_code == 200 and r.headers["x-slimserve-variant"] == new
    finally:
        again.stop()
    r = server.admin("POST", "/models/digits-cnn/rollback")
    assert r.status_code == 200 and r.json()["active_variant"] == "original", r.text
