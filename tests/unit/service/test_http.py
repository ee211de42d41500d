"""The HTTP edge in process: ``create_app(core)`` driven through ``httpx.ASGITransport``.

Real core (real digits-cnn and MiniLM, real runtime, real registry), no server process: the
4xx/401/403/404/413 matrix and the v2 routes answer in milliseconds here. The few things only a
real server shows (tritonclient over the wire, swaps under load, restarts) stay in tests/e2e.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.serving.app import create_app
from service.serving.settings import Settings

from .harness import TOKEN, Client, started_core

pytestmark = pytest.mark.unit
IMAGE = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with started_core(home, models=["digits-cnn", "minilm"], max_body_bytes=1 << 20) as core:
        yield core


def _infer_body(name="INPUT", datatype="FP32", shape=(1, 1, 8, 8), data=None) -> str:
    n = int(np.prod(shape))
    tensor = {"name": name, "datatype": datatype, "shape": list(shape)}
    tensor["data"] = data if data is not None else [0.0] * n
    return json.dumps({"inputs": [tensor]})


def test_v2_infer_matches_the_model_in_process(client, core):
    r = client.post(
        "/v2/models/digits-cnn/infer",
        content=_infer_body(data=IMAGE.ravel().tolist()),
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-slimserve-variant"] == "original"
    (out,) = r.json()["outputs"]
    assert out["name"] == "SCORES" and out["shape"] == [1, 10]
    import torch

    with torch.inference_mode():
        expected = core.plane.originals["digits-cnn"](torch.from_numpy(IMAGE)).numpy()
    assert np.allclose(np.asarray(out["data"]).reshape(1, 10), expected, atol=1e-5)


def test_v2_metadata_health_and_versions(client):
    assert client.get("/v2").json()["name"] == "slimserve"
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2/models/minilm").json()
    assert meta["inputs"][0]["datatype"] == "BYTES" and meta["outputs"][0]["shape"] == [-1, 384]
    assert client.get("/v2/models/minilm/versions/1").status_code == 200
    for path in ("/v2/models/minilm/versions/99", "/v2/models/minilm/versions/99/ready"):
        r = client.get(path)
        assert r.status_code == 404 and "no version '99'" in r.json()["error"], (path, r.text)
    r = client.post("/v2/models/digits-cnn/versions/99/infer", content=_infer_body())
    assert r.status_code == 404 and "no version '99'" in r.json()["error"], r.text
    assert client.post("/v2/models/digits-cnn/versions/1/infer", content=_infer_body()).is_success


def test_text_model_returns_normalised_embeddings(client):
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}
    r = client.post("/v2/models/minilm/infer", json=body)
    assert r.status_code == 200, r.text
    emb = np.asarray(r.json()["outputs"][0]["data"]).reshape(2, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_the_minilm_original_serves_packed_with_the_padded_models_answers(client, core):
    from compression.forms.packing import is_packed

    served = core.plane.runtime.models["minilm"].active
    assert served.variant == "original" and is_packed(served.module)
    assert is_packed(core.variants.load("minilm", "original").module)  # after a rollback too
    assert is_packed(core.shadow.originals["minilm"].module)  # and in shadow
    assert not is_packed(core.plane.originals["minilm"])  # as loaded: digests, variants built on
    sentences = ["a", "Structured pruning removes whole channels, so the model is faster.", "b c"]
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [3], "data": sentences}]}
    r = client.post("/v2/models/minilm/infer", json=body)
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["outputs"][0]["data"]).reshape(3, 384)
    from service.serving.runtime import Active, Runtime

    adapter = core.plane.runtime.models["minilm"].adapter
    unpacked = Active("original", "none", core.plane.originals["minilm"])
    rows = [np.array(sentences, dtype=object)]
    padded = Runtime._forward(adapter, unpacked, rows)  # one padded batch, the unpacked model
    assert np.abs(got - padded.reshape(3, 384)).max() < 1e-4


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (_infer_body(shape=(1, 3, 8, 8)), 400, "[-1, 1, 8, 8]"),
        (_infer_body(datatype="INT64", data=[0] * 64), 400, "FP32"),
        (_infer_body(name="IMAGE"), 400, "INPUT"),
        ("{not json", 400, "JSON"),
        (_infer_body(data=[0.0] * 10), 400, "64"),
        ("x" * (2 << 20), 413, "limit"),
    ],
    ids=["shape", "datatype", "name", "json", "count", "too-large"],
)
def test_bad_input_is_a_4xx_that_says_what_was_expected(client, body, status, needle):
    r = client.post("/v2/models/digits-cnn/infer", content=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"], r.text


def test_truncated_binary_tensor_and_bad_header_length(client):
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
    path = "/v2/models/digits-cnn/infer"
    r = client.post(
        path,
        content=header + b"\x00" * 100,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400 and "256" in r.json()["error"], r.text
    r = client.post(path, content=header, headers={"Inference-Header-Content-Length": "abc"})
    assert r.status_code == 400 and "non-negative integer" in r.json()["error"], r.text


def test_unknown_model_is_404_naming_the_served_ones_and_counted(client, core):
    from prometheus_client import REGISTRY

    def client_errors() -> float:
        value = REGISTRY.get_sample_value(
            "slimserve_inference_requests_total",
            {"model": "unknown", "variant": "none", "status": "client_error"},
        )
        return value or 0.0

    before = client_errors()
    r = client.post("/v2/models/resnet/infer", content=_infer_body())
    assert r.status_code == 404 and "digits-cnn" in r.json()["error"], r.text
    assert client.get("/v2/models/resnet").status_code == 404
    assert client.get("/v2/models/resnet/ready").status_code == 404
    assert client_errors() == before + 1
    # ... and the server still serves.
    assert client.post("/v2/models/digits-cnn/infer", content=_infer_body()).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/models"),
        ("GET", "/admin/jobs"),
        ("GET", "/admin/jobs/abc"),
        ("DELETE", "/admin/jobs/abc"),
        ("GET", "/admin/models/digits-cnn/variants"),
        ("POST", "/admin/models/digits-cnn/compress"),
        ("POST", "/admin/models/digits-cnn/activate"),
        ("POST", "/admin/models/digits-cnn/rollback"),
    ],
)
def test_admin_calls_without_the_right_token_are_401(client, method, path):
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"bearer {TOKEN}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"X-Admin-Token": TOKEN},
    ):
        r = client.request(method, path, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert "Bearer" in r.json()["error"]
    assert client.request(method, path, params={"token": TOKEN}).status_code == 401


def test_admin_is_403_when_no_token_is_configured(core):

    settings = Settings(**{**core.settings.model_dump(), "admin_token": None})

    class NoToken:
        """The same core seen with no admin token."""

        def __init__(self) -> None:
            self.settings = settings

    app = create_app(NoToken())  # type: ignore[arg-type]
    c = Client(app)
    try:
        r = c.get("/admin/models", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 403 and "SLIMSERVE_ADMIN_TOKEN" in r.json()["error"], r.text
    finally:
        c.close()


def test_admin_views_and_error_statuses(client):
    models = client.admin("GET", "/models").json()["models"]
    assert {m["name"] for m in models} == {"digits-cnn", "minilm"}
    assert all(m["active_variant"] == "original" for m in models)
    variants = client.admin("GET", "/models/digits-cnn/variants").json()["variants"]
    # The BentoML store is one per test process: other tests' digits-cnn variants may be listed.
    assert [v["id"] for v in variants if v["active"]] == ["original"], variants
    cases = [
        ("GET", "/models/nope/variants", None, 404, "unknown model"),
        ("POST", "/models/nope/compress", {}, 404, "unknown model"),
        ("POST", "/models/digits-cnn/activate", {"variant": "cpu-x"}, 404, "no variant"),
        ("POST", "/models/digits-cnn/activate", {"nope": 1}, 400, "variant"),
        ("POST", "/models/digits-cnn/compress", {"profile": "tpu"}, 400, "tpu"),
        ("POST", "/models/digits-cnn/rollback", None, 409, "no earlier variant"),
        ("GET", "/jobs/nope", None, 404, "unknown job"),
        ("DELETE", "/jobs/nope", None, 404, "unknown job"),
    ]
    for method, path, body, status, needle in cases:
        r = client.admin(method, path, json=body)
        assert r.status_code == status, (method, path, r.text)
        assert needle in r.json()["error"], (method, path, r.text)
    r = client.admin("POST", "/models/digits-cnn/activate", content=b"{broken")
    assert r.status_code == 400, r.text


def test_original_size_gauges_exist_as_soon_as_a_model_serves(core):
    from prometheus_client import REGISTRY

    for name in ("digits-cnn", "minilm"):
        params = REGISTRY.get_sample_value(
            "slimserve_model_params", {"model": name, "variant": "original"}
        )
        macs = REGISTRY.get_sample_value(
            "slimserve_model_macs", {"model": name, "variant": "original"}
        )
        module = core.plane.originals[name]
        assert params == sum(p.numel() for p in module.parameters()), (name, params)
        assert macs is not None and macs > params, (name, macs)


# ---- text with lone UTF-16 surrogates: a 400 that says where, and the server keeps serving ----
# "\udfff" is a valid JSON escape, but a lone surrogate has no UTF-8 form: once it reached the
# BYTES encoder it was a 500, once it reached the tokenizer it failed the whole micro-batch.

SURROGATE_V2_BODY = (
    b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [3], '
    b'"data": ["a\\udfffb", "", "%s%n"]}]}'
)


def _still_serves_text(client) -> None:
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}
    assert client.post("/v2/models/minilm/infer", json=body).status_code == 200


def test_v2_text_with_a_lone_surrogate_is_a_400_naming_the_input_and_element(client):
    r = client.post("/v2/models/minilm/infer", content=SURROGATE_V2_BODY)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "input 'TEXT'" in error and "element 0" in error and "character 1" in error, error
    assert "surrogate" in error and "UTF-8" in error, error
    _still_serves_text(client)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            b'{"id": "a\\ud800", "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], '
            b'"data": ["x"]}]}',
            "'id'",
        ),
        (
            b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], '
            b'"data": ["ok", "\\udbff"]}]}',
            "element 1",
        ),
        (
            b'{"inputs": [{"name": "T\\ud800", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}',
            "unknown input 'T\\ud800'",
        ),
        (
            b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["x"]}], '
            b'"outputs": [{"name": "\\udc00"}]}',
            "unknown output '\\udc00'",
        ),
    ],
    ids=["id", "second-element", "input-name", "output-name"],
)
def test_v2_lone_surrogates_anywhere_are_a_400_quoting_no_surrogate(client, body, needle):
    r = client.post("/v2/models/minilm/infer", content=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"], r.text
    r.content.decode("utf-8")  # the answer itself is valid UTF-8
    _still_serves_text(client)


def test_predict_text_with_a_lone_surrogate_is_a_400_naming_the_position(client, core):
    from service.serving.predict import predict

    status, body = client.run(predict(core.plane, "minilm", ["a\ud800"]))
    assert status == 400, body
    assert set(body) == {"error"} and "inputs[0]" in body["error"], body
    assert "character 1" in body["error"] and "surrogate" in body["error"], body
    status, body = client.run(predict(core.plane, "minilm", ["fine", "x\udc00"]))
    assert status == 400 and "inputs[1]" in body["error"], body
    status, body = client.run(predict(core.plane, "a\ud800", ["fine"]))
    assert status == 404 and "\\ud800" in body["error"], body
    body["error"].encode("utf-8")
    status, body = client.run(predict(core.plane, "minilm", ["fine"]))
    assert status == 200 and len(body["outputs"]) == 1, body


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/models/minilm/activate", b'{"variant": "a\\ud800"}'),
        ("/models/minilm/compress", b'{"profile": "a\\udfff"}'),
        ("/models/minilm/compress", b'{"profile": {"name": "\\ud800"}}'),
        ("/models/minilm/compress", b'{"\\udc00": 1}'),
    ],
)
def test_admin_bodies_with_lone_surrogates_are_a_400(client, path, body):
    r = client.admin("POST", path, content=body)
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["error"], str), r.text
    _still_serves_text(client)
