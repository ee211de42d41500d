"""Issue 15 regressions with the exact bodies, in process: empty batches (item 7), row caps and
split requests (item 2), body limits while streaming (item 3), non-finite numbers (item 10),
and ``/predict`` as a plain function (items 10: its error bodies, counts and logs)."""

from __future__ import annotations

import json
import logging
import struct

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from service.serving.predict import predict

from .harness import started_core

pytestmark = pytest.mark.unit
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    models = ["digits-cnn", "minilm"]
    with started_core(home, models=models, max_body_bytes=LIMIT, max_rows_per_request=512) as c:
        yield c


def _client_errors(model: str) -> float:
    value = REGISTRY.get_sample_value(
        "slimserve_inference_requests_total",
        {
            "model": model,
            "variant": "none" if model == "unknown" else "original",
            "status": "client_error",
        },
    )
    return value or 0.0


# ---- item 7: empty batches ------------------------------------------------------------------------


def test_an_empty_text_batch_answers_an_empty_output_json_and_binary(client):
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [0], "data": []}]}
    r = client.post("/v2/models/minilm/infer", json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["shape"] == [0, 384] and out["data"] == []
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "TEXT",
                    "datatype": "BYTES",
                    "shape": [0],
                    "parameters": {"binary_data_size": 0},
                }
            ],
            "outputs": [{"name": "EMBEDDING", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = client.post(
        "/v2/models/minilm/infer",
        content=header,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    hlen = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:hlen])
    assert meta["outputs"][0]["shape"] == [0, 384] and len(r.content) == hlen


def test_an_empty_image_batch_answers_an_empty_output(client):
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [0, 1, 8, 8], "data": []}]}
    r = client.post("/v2/models/digits-cnn/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [0, 10]


# ---- item 2: rows per request --------------------------------------------------------------------


def test_forty_thousand_empty_strings_are_refused_naming_the_cap(client):
    body = json.dumps(
        {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [40000], "data": [""] * 40000}]}
    )
    assert len(body) > 150_000  # the 160 KB body of the report
    r = client.post("/v2/models/minilm/infer", content=body)
    assert r.status_code == 413, r.text
    assert "at most 512 rows" in r.json()["error"] and "40000" in r.json()["error"], r.text
    assert r.headers["connection"] == "close"


def test_a_request_over_the_batch_size_is_split_and_matches_the_model(client, core):
    x = np.random.default_rng(1).random((100, 1, 8, 8), dtype=np.float32)
    body = {
        "inputs": [
            {
                "name": "INPUT",
                "datatype": "FP32",
                "shape": [100, 1, 8, 8],
                "data": x.ravel().tolist(),
            }
        ]
    }
    r = client.post("/v2/models/digits-cnn/infer", json=body)
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(100, 10)
    with torch.inference_mode():
        expected = core.plane.originals["digits-cnn"](torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() < 1e-4, np.abs(got - expected).max()


# ---- item 3: body limits, counted while streaming --------------------------------------------------


def test_a_chunked_body_over_the_limit_is_refused_before_it_is_all_read(client):
    sent = []

    async def chunks():
        for _ in range(64):  # 64 x 256 KB = 16 MB offered; the limit is 1 MB
            sent.append(256 << 10)
            yield b" " * (256 << 10)

    r = client.post("/v2/models/digits-cnn/infer", content=chunks())
    assert r.status_code == 413 and "limit" in r.json()["error"], r.text
    assert sum(sent) <= LIMIT + (512 << 10), f"read {sum(sent)} bytes for a {LIMIT}-byte limit"


def test_a_declared_length_over_the_limit_is_refused_at_once(client):
    r = client.post(
        "/v2/models/digits-cnn/infer",
        content=b"x" * 10,
        headers={"content-length": str(9 << 20)},
    )
    assert r.status_code == 413 and str(9 << 20) in r.json()["error"], r.text


def test_admin_bodies_have_a_small_limit(client):
    r = client.admin("POST", "/models/digits-cnn/activate", content=b" " * (65 << 10))
    assert r.status_code == 413, r.text


# ---- item 10: numbers JSON cannot carry ------------------------------------------------------------


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_tokens_are_400(client, token):
    head = '{"inputs":[{"name":"INPUT","datatype":"FP32","shape":[1,1,8,8],"data":['
    body = head + token + ",0" * 63 + "]}]}"
    r = client.post("/v2/models/digits-cnn/infer", content=body)
    assert r.status_code == 400 and token.lstrip("-") in r.json()["error"], r.text


def test_fp32_out_of_range_is_400_not_infinity(client):
    body = {
        "inputs": [
            {
                "name": "INPUT",
                "datatype": "FP32",
                "shape": [1, 1, 8, 8],
                "data": [1e39] + [0.0] * 63,
            }
        ]
    }
    r = client.post("/v2/models/digits-cnn/infer", json=body)
    assert r.status_code == 400 and "3.402823e+38" in r.json()["error"], r.text


def test_binary_nan_inputs_are_400(client):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "datatype": "FP32",
                    "shape": [1, 1, 8, 8],
                    "parameters": {"binary_data_size": 256},
                }
            ]
        }
    ).encode()
    data = struct.pack("<64f", *([float("nan")] + [0.0] * 63))
    r = client.post(
        "/v2/models/digits-cnn/infer",
        content=header + data,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400 and "finite" in r.json()["error"], r.text


def test_a_nan_output_is_400_in_json_and_ieee_in_binary(client):
    # Finite inputs at the edge of FP32 overflow inside digits-cnn: its scores are NaN.
    tensor = {"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [3e38] * 64}
    r = client.post("/v2/models/digits-cnn/infer", json={"inputs": [tensor]})
    assert r.status_code == 400 and "binary_data=true" in r.json()["error"], r.text
    body = {
        "inputs": [tensor],
        "outputs": [{"name": "SCORES", "parameters": {"binary_data": True}}],
    }
    r = client.post("/v2/models/digits-cnn/infer", json=body)
    assert r.status_code == 200, r.text
    hlen = int(r.headers["inference-header-content-length"])
    json.loads(r.content[:hlen], parse_constant=lambda t: pytest.fail(f"bare {t}"))
    assert np.isnan(np.frombuffer(r.content[hlen:], dtype="<f4")).all()


def test_json_responses_are_strict_json(client):
    body = {
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]
    }
    r = client.post("/v2/models/digits-cnn/infer", json=body)
    json.loads(r.text, parse_constant=lambda t: pytest.fail(f"bare {t} in {r.text[:100]}"))


# ---- /predict: declared error bodies, counted, not logged -------------------------------------------


def test_predict_answers_its_declared_shapes_and_logs_no_tracebacks(client, core, caplog):
    plane = core.plane

    def call(model, inputs):
        return client.run(predict(plane, model, inputs))

    status, body = call("digits-cnn", np.zeros((2, 8, 8)).tolist())
    assert status == 200 and np.asarray(body["outputs"]).shape == (2, 10), body
    assert body["variant"] == "original"
    before = _client_errors("unknown")
    with caplog.at_level(logging.INFO):
        for _ in range(100):
            status, body = call("resnet", [[1]])
            assert status == 404 and set(body) == {"error"} and "digits-cnn" in body["error"]
    assert _client_errors("unknown") == before + 100
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text[:500]
    cases = [
        ("digits-cnn", [[1, 2, 3]], 400, "[N, 64]"),
        ("digits-cnn", [[1e39] * 64], 400, "finite"),
        ("digits-cnn", [[3e38] * 64], 400, "NaN or infinity"),
        ("digits-cnn", [[10**400] * 64], 400, "inputs"),
        ("digits-cnn", {"a": 1}, 400, "inputs"),
        ("minilm", [], 400, "non-empty"),
        ("minilm", [1, 2], 400, "strings"),
        ("minilm", [""] * 513, 413, "at most 512 rows"),
        (7, [[0] * 64], 400, "model"),
    ]
    for model, inputs, status, needle in cases:
        got, body = call(model, inputs)
        assert got == status and set(body) == {"error"}, (model, str(inputs)[:40], got, body)
        assert needle in body["error"], (needle, body)
