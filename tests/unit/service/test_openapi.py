"""The OpenAPI document lists every route, and the app holds to it (issue 29, item 7).

schemathesis loads ``/openapi.json`` from ``create_app(core)`` in process (its ASGI transport:
no server, no port) and drives every route the app answers (v2, admin, this document) with
generated bodies, paths and headers, checking each answer: no 5xx, a declared status and
media type, and a body that conforms to the declared schema. The routes BentoML answers itself
(``/predict``, ``/livez``, ``/readyz``, ``/healthz``, ``/metrics``, ``/docs.json``, ``/``) are in
the same document and are run by ``tests/e2e/test_faults.py`` against a real server.
Bounded: a few examples per route, a deadline per example and per test.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.serving.app import create_app, full_document
from service.serving.core import Core
from service.serving.settings import Settings

from .harness import TOKEN, isolated_model_store

pytestmark = pytest.mark.unit
# Answered by BentoML, not by create_app: run against a real server (tests/e2e/test_faults.py).
BENTOML_PATHS = ["/predict", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/"]
CHECKS = [
    not_a_server_error,  # no 5xx
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,  # every body as declared, errors included
    negative_data_rejection,  # what the document forbids is a 4xx
]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with isolated_model_store(tmp_path_factory.mktemp("bentoml-models")):
        core = Core(
            Settings(
                home=tmp_path_factory.mktemp("home"),
                models=["digits-cnn"],
                profile="cpu",
                auto_compress=False,
                admin_token=TOKEN,
            )
        ).start()
        # A compression the fuzzer starts ends at once: the routes are under test, not the engine.
        core.jobs._run = lambda job, spec: core.jobs._finish(job, "cancelled", None)
        yield create_app(core)
        core.close()


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# Every operation create_app answers, by (method, path, data): positive data for each; data
# that breaks the document (negative) where there is something to break (a body, the token).
OPERATIONS = [
    pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode.value}")
    for path, ops in full_document()["paths"].items()
    if path not in BENTOML_PATHS
    for method, op in ops.items()
    for mode in GenerationMode
    if mode.is_positive or "requestBody" in op or "security" in op
]
DIGIT = {
    "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]
}
# Requests that succeed (generated ones mostly name no served model): their answers conform too.
GOOD = [
    ("GET", "/v2", {}, None),
    ("GET", "/v2/models/{name}", {"name": "digits-cnn"}, None),
    ("GET", "/v2/models/{name}/versions/{version}/ready", {"name": "digits-cnn", "version": "1"}, None),
    ("POST", "/v2/models/{name}/infer", {"name": "digits-cnn"}, DIGIT),
    ("POST", "/v2/models/{name}/infer", {"name": "digits-cnn"},
     {**DIGIT, "id": "7", "outputs": [{"name": "SCORES", "parameters": {"binary_data": True}}]}),
    ("POST", "/v2/models/{name}/versions/{version}/infer", {"name": "digits-cnn", "version": "1"}, DIGIT),
    ("GET", "/admin/models", {}, None),
    ("GET", "/admin/models/{name}/variants", {"name": "digits-cnn"}, None),
    ("POST", "/admin/models/{name}/compress", {"name": "digits-cnn"}, {"profile": "cpu"}),
    ("POST", "/admin/models/{name}/compress", {"name": "digits-cnn"}, {"profile": {"threads": 1}}),
    ("GET", "/admin/jobs", {}, None),
    ("POST", "/admin/models/{name}/activate", {"name": "digits-cnn"}, {"variant": "original"}),
    ("POST", "/admin/models/{name}/rollback", {"name": "digits-cnn"}, None),
    ("GET", "/openapi.json", {}, None),
]  # fmt: skip


def test_the_document_lists_every_route_the_server_answers(app):
    from starlette.routing import Route

    paths = set(full_document()["paths"])
    served = {r.path for r in app.routes if isinstance(r, Route)}
    assert served <= paths, served - paths
    assert set(BENTOML_PATHS) <= paths
    for path, ops in full_document()["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            if path.startswith("/admin"):
                assert {"401", "403"} <= set(op["responses"]), (method, path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_every_route_holds_to_the_document(api_schema, method, path, mode):
    operation = api_schema[path][method]

    # schemathesis' own pytest plugin does not run under this pytest: hypothesis directly.
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=8,
        deadline=timedelta(seconds=10),
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)

    run()


def test_requests_that_succeed_hold_to_the_document(api_schema):
    statuses = []
    for method, path, params, body in GOOD:
        case = api_schema[path][method].Case(
            path_parameters=params, **({} if body is None else {"body": body})
        )
        response = case.call_and_validate(
            headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS
        )
        statuses.append(response.status_code)
        if path.endswith("/compress"):
            job = response.json()["job"]
            case = api_schema["/admin/jobs/{job}"]["GET"].Case(path_parameters={"job": job})
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)
    assert statuses == [200] * 8 + [202, 202, 200, 200, 409, 200], statuses


def test_docs_json_in_front_of_bentoml_answers_the_whole_document():
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from service.serving.app import SlimServe
    from service.serving.openapi import DocsJson

    assert (DocsJson, {"doc": full_document}) in SlimServe.middlewares

    async def bentoml_docs(request):
        return JSONResponse({"paths": {"/predict": {}}})

    inner = Starlette(routes=[Route("/docs.json", bentoml_docs), Route("/other", bentoml_docs)])

    async def call(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=DocsJson(inner, doc=full_document))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get(path)

    served = asyncio.run(call("/docs.json")).json()
    assert served == json.loads(json.dumps(full_document()))
    assert "/v2/models/{name}/infer" in served["paths"]
    assert asyncio.run(call("/other")).json() == {"paths": {"/predict": {}}}
