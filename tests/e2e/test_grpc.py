"""Open Inference Protocol v2 over gRPC: a real ``slimserve serve``, the real ``tritonclient.grpc``
and the protocol's own stub, beside HTTP on the same data plane."""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from service.launch import SlimServer, metric_value

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DIGITS = np.random.default_rng(1).random((6, 1, 8, 8), dtype=np.float32)
SENTENCES = ["A cat sat on the mat.", "Lists are mutable.", "Grüße aus Köln!"]


def _grpc(server) -> tgrpc.InferenceServerClient:
    return tgrpc.InferenceServerClient(server.grpc_address)


def _digits_input(x: np.ndarray, module=tgrpc):
    i = module.InferInput("INPUT", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def test_grpc_answers_like_http_with_the_same_metadata(server):
    client = _grpc(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits-cnn") and not _ready(client, "nope")
    assert client.get_server_metadata().name == "slimserve"
    meta = client.get_model_metadata("digits-cnn")
    http_meta = thttp.InferenceServerClient(server.address).get_model_metadata("digits-cnn")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in http_meta["inputs"]
    ]
    scores = client.infer("digits-cnn", [_digits_input(DIGITS)]).as_numpy("SCORES")
    http = thttp.InferenceServerClient(server.address)
    expected = http.infer("digits-cnn", [_digits_input(DIGITS, thttp)]).as_numpy("SCORES")
    assert scores.shape == (6, 10)
    np.testing.assert_allclose(scores, expected, atol=1e-5)

    text = tgrpc.InferInput("TEXT", [len(SENTENCES)], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in SENTENCES], dtype=object))
    emb = client.infer("minilm", [text]).as_numpy("EMBEDDING")
    http_text = thttp.InferInput("TEXT", [len(SENTENCES)], "BYTES")
    http_text.set_data_from_numpy(np.array([s.encode() for s in SENTENCES], dtype=object))
    np.testing.assert_allclose(
        emb, http.infer("minilm", [http_text]).as_numpy("EMBEDDING"), atol=1e-5
    )


def _ready(client, name: str) -> bool:
    try:
        return client.is_model_ready(name)
    except InferenceServerException:
        return False


def test_typed_contents_work_like_raw_contents(server):
    # Clients generated from the protocol's proto may send typed contents, not raw bytes.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_address))
    request = pb.ModelInferRequest(model_name="digits-cnn", id="typed-1")
    tensor = request.inputs.add(name="INPUT", datatype="FP32", shape=list(DIGITS.shape))
    tensor.contents.fp32_contents.extend(DIGITS.ravel().tolist())
    response, call = stub.ModelInfer.with_call(request, timeout=30)
    assert response.id == "typed-1" and list(response.outputs[0].shape) == [6, 10]
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(6, 10)
    raw = _grpc(server).infer("digits-cnn", [_digits_input(DIGITS)]).as_numpy("SCORES")
    np.testing.assert_allclose(got, raw, atol=1e-6)
    assert dict(call.trailing_metadata())["x-slimserve-variant"]


@pytest.mark.parametrize(
    ("case", "code", "says"),
    [
        ("shape", "INVALID_ARGUMENT", "expected shape [-1, 1, 8, 8]"),
        ("datatype", "INVALID_ARGUMENT", "expected datatype FP32, got FP64"),
        ("bytes", "INVALID_ARGUMENT", "takes 1536 bytes (384 x 4), binary_data_size is 512"),
        ("model", "NOT_FOUND", "unknown model 'nope'"),
        ("rows", "RESOURCE_EXHAUSTED", "at most 512 rows"),
    ],
)
def test_bad_requests_get_the_grpc_status_that_says_what_was_expected(server, case, code, says):
    client = _grpc(server)
    before = httpx.get(f"{server.url}/metrics", timeout=60).text
    name, x = "digits-cnn", DIGITS
    if case == "shape":
        i = tgrpc.InferInput("INPUT", [6, 64], "FP32")
        i.set_data_from_numpy(x.reshape(6, 64))
    elif case == "datatype":
        i = tgrpc.InferInput("INPUT", list(x.shape), "FP64")
        i.set_data_from_numpy(x.astype(np.float64))
    elif case == "bytes":
        i = None  # sent through the protocol's stub below
    elif case == "rows":
        i = _digits_input(np.zeros((513, 1, 8, 8), dtype=np.float32))
    else:
        name, i = "nope", _digits_input(x)
    if case == "bytes":  # the protocol's stub: 2 samples' bytes for a shape of 6
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_address))
        request = pb.ModelInferRequest(model_name=name)
        request.inputs.add(name="INPUT", datatype="FP32", shape=[6, 1, 8, 8])
        request.raw_input_contents.append(x[:2].tobytes())
        with pytest.raises(grpc.RpcError) as raw_err:
            stub.ModelInfer(request, timeout=30)
        status, message = str(raw_err.value.code()), raw_err.value.details()
    else:
        with pytest.raises(InferenceServerException) as err:
            client.infer(name, [i])
        status, message = err.value.status(), err.value.message()
    assert status == f"StatusCode.{code}"
    assert says in message, message
    # counted as a client error, as HTTP counts it; the server keeps serving
    after = httpx.get(f"{server.url}/metrics", timeout=60).text
    label = "unknown" if case == "model" else "digits-cnn"
    counts = [
        metric_value(t, "slimserve_inference_requests_total", model=label, status="client_error")
        for t in (before, after)
    ]
    assert counts[1] == counts[0] + 1
    assert client.infer("digits-cnn", [_digits_input(x)]).as_numpy("SCORES").shape == (6, 10)


def test_a_swap_under_grpc_load_fails_no_request(tmp_path, fast_profiles_dir):
    # A server of its own: the swap leaves a variant serving, which the session's shared server
    # (tests/e2e/test_service.py expects its original) must not see.
    server = SlimServer(
        tmp_path / "home", models="digits-cnn", SLIMSERVE_CANARY="false",
        SLIMSERVE_PROFILES_DIR=str(fast_profiles_dir),
    ).start()  # fmt: skip
    try:
        _swap_under_load(server)
    finally:
        server.stop()


def _swap_under_load(server) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_address))
    request = pb.ModelInferRequest(model_name="digits-cnn")
    request.inputs.add(name="INPUT", datatype="FP32", shape=[1, 1, 8, 8])
    request.raw_input_contents.append(DIGITS[:1].tobytes())
    stop, outcomes, variants = threading.Event(), [], []

    def send() -> None:
        while not stop.is_set():
            try:
                _, call = stub.ModelInfer.with_call(request, timeout=30)
                outcomes.append("ok")
                variants.append(dict(call.trailing_metadata())["x-slimserve-variant"])
            except grpc.RpcError as err:
                outcomes.append(str(err.code()))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        job = server.compress("digits-cnn", "fast")
        deadline = time.monotonic() + 60
        while variants[-1:] != [job["variant"]] and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert outcomes and set(outcomes) == {"ok"}, sorted(set(outcomes))
    assert variants[0] == "original" and variants[-1] == job["variant"], set(variants)
