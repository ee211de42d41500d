"""The OpenAPI document of every route the server answers: v2, admin, /predict, health, metrics.

BentoML's ``/docs.json`` describes only BentoML's own routes (``/predict``, ``/livez``,
``/readyz``, ``/healthz``, ``/metrics``). :func:`document` adds the routes of
:func:`~service.serving.app.create_app` (Open Inference Protocol v2, the admin API, this
document) with their bodies and every status they answer, so a client can be generated for any
of them and schemathesis can hold the server to it. The same document is served at
``/openapi.json`` (the app's own route) and at ``/docs.json`` (:class:`DocsJson`, in front of
BentoML's route of that name, whose Swagger UI at ``/`` then shows every route).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from service.serving.guards import Message, Receive, Scope, Send

V2_DATATYPES = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
]  # fmt: skip
JOB_STATES = ["queued", "running", "succeeded", "rejected", "failed", "cancelled"]
REASONS = {
    200: "OK", 202: "Accepted", 400: "Bad request: the message says what was expected",
    401: "No, a wrong or more than one bearer token", 403: "Admin API disabled (no token set)",
    404: "Unknown model, version, variant or job", 405: "Method not allowed",
    409: "The state refuses it (the message says why)", 413: "Body or row count over the limit",
    415: "Unsupported media type", 503: "Starting, not ready, or the model's queue is full",
    507: "The variant store cannot be written; what served keeps serving",
}  # fmt: skip


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **props: Any) -> dict:
    return {"type": "object", "required": required, "properties": props}


STR, INT, NUM, BOOL = (
    {"type": "string"},
    {"type": "integer"},
    {"type": "number"},
    {"type": "boolean"},
)
ANY_OBJ = {"type": "object"}  # any keys (JSON Schema's default)
NULLABLE_OBJ = {**ANY_OBJ, "nullable": True}
PARAMETERS = {**NULLABLE_OBJ, "description": "Parameters (null: none)"}


def _array(items: dict) -> dict:
    return {"type": "array", "items": items}


def _nullable(kind: str) -> dict:
    return {"type": kind, "nullable": True}


def _v2_schemas() -> dict[str, dict]:
    """The bodies of the v2 routes (OpenAPI 3.0, like BentoML's document)."""
    tensor = _obj(
        ["name", "datatype", "shape"],
        name=STR,
        datatype={"type": "string", "enum": V2_DATATYPES},
        shape=_array(INT),
    )
    output = _obj(
        ["name", "datatype", "shape"],
        name=STR, datatype=STR, shape=_array(INT), data=_array({}), parameters=ANY_OBJ,
    )  # fmt: skip
    return {
        "Error": _obj(["error"], error=STR, detail=STR),
        "ServerMetadata": _obj(
            ["name", "version", "extensions"], name=STR, version=STR, extensions=_array(STR)
        ),
        "Live": _obj(["live"], live=BOOL),
        "Ready": _obj(["ready"], ready=BOOL),
        "TensorMetadata": tensor,
        "ModelMetadata": _obj(
            ["name", "versions", "platform", "inputs", "outputs"],
            name=STR,
            versions=_array(STR),
            platform=STR,
            parameters=ANY_OBJ,
            inputs=_array(_ref("TensorMetadata")),
            outputs=_array(_ref("TensorMetadata")),
        ),
        "ModelReady": _obj(["name", "ready"], name=STR, ready=BOOL),
        "InferRequest": _infer_request(),
        "InferResponse": _obj(
            ["model_name", "model_version", "outputs"],
            model_name=STR,
            model_version=STR,
            id=STR,
            parameters=ANY_OBJ,
            outputs=_array(output),
        ),
    }


def _admin_schemas() -> dict[str, dict]:
    """The bodies of the admin routes."""
    summary = _obj(
        ["id", "model", "profile", "state", "progress"],
        id=STR, model=STR, profile=STR,
        state={"type": "string", "enum": JOB_STATES}, progress=NUM,
    )  # fmt: skip
    detail = copy.deepcopy(summary)
    detail["required"] += ["message", "report", "variant", "error", "created", "finished"]
    detail["properties"].update(
        message=STR, report=NULLABLE_OBJ, variant=_nullable("string"), error=_nullable("string"),
        created=NUM, finished=_nullable("number"),
    )  # fmt: skip
    model = _obj(
        ["name", "active_variant", "profile"],
        name=STR, active_variant=STR, profile=_nullable("string"),
    )  # fmt: skip
    variant = _obj(
        ["id", "active", "profile", "accepted", "report"],
        id=STR, active=BOOL, profile=_nullable("string"), accepted=BOOL, report=NULLABLE_OBJ,
        created=STR, live=NULLABLE_OBJ,
    )  # fmt: skip
    profile = {
        "nullable": True,
        "oneOf": [STR, ANY_OBJ],
        "description": "A built-in or configured profile name, or an inline mapping of profile "
        "keys (each range-checked); never a path. Absent: the service's.",
    }
    force = {"type": "boolean", "description": "Serve a rejected variant anyway (logged, counted)."}
    return {
        "Models": _obj(["models"], models=_array(model)),
        "Variants": _obj(["variants"], variants=_array(variant)),
        "CompressBody": _obj([], profile=profile),
        "Job": _obj(["job"], job=STR),
        "JobSummary": summary,
        "Jobs": _obj(["jobs"], jobs=_array(_ref("JobSummary"))),
        "JobDetail": detail,
        "ActivateBody": _obj(
            ["variant"], variant={"type": "string", "maxLength": 200}, force=force
        ),
        "ActiveVariant": _obj(["model", "active_variant"], model=STR, active_variant=STR),
    }


def _infer_request() -> dict:
    """The JSON infer body; the server checks every input against the model's signature."""
    request = _obj(
        ["inputs"],
        id=_nullable("string"),
        parameters=PARAMETERS,
        inputs={
            "type": "array",
            "minItems": 1,
            "items": _obj(
                ["name", "datatype", "shape"],
                name=STR,
                datatype={"type": "string", "enum": V2_DATATYPES},
                shape={"type": "array", "items": {"type": "integer", "minimum": 0}},
                parameters=PARAMETERS,
                data={"description": "The values: a list, flat (row-major) or nested by the "
                      "shape; GET the model's metadata for its inputs"},
            ),
        },
        outputs={**_array(_obj(["name"], name=STR, parameters=PARAMETERS)), "nullable": True},
    )  # fmt: skip
    request["example"] = {
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}]
    }
    return request


def _responses(ok: int, schema: str | None, *errors: int, media: str = "application/json"):
    out: dict[str, Any] = {str(ok): {"description": REASONS[ok]}}
    if schema is not None:
        out[str(ok)]["content"] = {media: {"schema": _ref(schema)}}
    for status in sorted(set(errors)):
        body = {"application/json": {"schema": _ref("Error")}}
        out[str(status)] = {"description": REASONS[status], "content": body}
    return out


def _param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": STR, "description": description}


MODEL = _param("name", "A served model (GET /admin/models or /v2/models/{name} lists them)")
VERSION = _param("version", "The model's version: 1")
JOB = _param("job", "A job id from POST /admin/models/{name}/compress")


def _op(summary: str, responses: dict, *params: dict, body: str | None = None, **extra) -> dict:
    op: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if params:
        op["parameters"] = list(params)
    if body is not None:
        media = {"application/json": {"schema": _ref(body)}}
        op["requestBody"] = {"required": body == "InferRequest", "content": media}
    return op


def _v2_paths() -> dict[str, dict]:
    tags = {"tags": ["Open Inference Protocol v2"]}
    meta = _op("Model metadata", _responses(200, "ModelMetadata", 404, 503), MODEL, **tags)
    ready = _op("Model readiness", _responses(200, "ModelReady", 404, 503), MODEL, **tags)
    infer_ok = _responses(200, "InferResponse", 400, 404, 413, 503)
    infer_ok["200"]["content"]["application/octet-stream"] = {
        "schema": {"type": "string", "format": "binary", "description": "binary tensor data: "
                   "the JSON header (Inference-Header-Content-Length bytes), then the outputs"}
    }  # fmt: skip
    infer = _op("Inference (JSON, or binary tensor data)", infer_ok, MODEL, body="InferRequest")
    infer.update(tags)
    versioned = {
        k: copy.deepcopy(v) for k, v in (("meta", meta), ("ready", ready), ("infer", infer))
    }
    for op in versioned.values():
        op["parameters"].append(VERSION)
    return {
        "/v2": {"get": _op("Server metadata", _responses(200, "ServerMetadata"), **tags)},
        "/v2/health/live": {"get": _op("Server liveness", _responses(200, "Live"), **tags)},
        "/v2/health/ready": {"get": _op("Server readiness", _responses(200, "Ready", 503), **tags)},
        "/v2/models/{name}": {"get": meta},
        "/v2/models/{name}/versions/{version}": {"get": versioned["meta"]},
        "/v2/models/{name}/ready": {"get": ready},
        "/v2/models/{name}/versions/{version}/ready": {"get": versioned["ready"]},
        "/v2/models/{name}/infer": {"post": infer},
        "/v2/models/{name}/versions/{version}/infer": {"post": versioned["infer"]},
    }


def _admin_paths() -> dict[str, dict]:
    extra = {"tags": ["Admin"], "security": [{"bearer": []}]}

    def op(summary, ok, schema, errors=(), params=(MODEL,), body=None):
        responses = _responses(ok, schema, 401, 403, 503, *errors)
        return _op(summary, responses, *params, body=body, **extra)

    changes = (400, 404, 409, 413, 507)
    return {
        "/admin/models": {"get": op("Served models, active variants", 200, "Models", params=())},
        "/admin/models/{name}/variants": {
            "get": op("Stored variants with reports", 200, "Variants", (404,))
        },
        "/admin/models/{name}/compress": {
            "post": op("Start a compression job", 202, "Job", changes, body="CompressBody")
        },
        "/admin/models/{name}/activate": {
            "post": op(
                "Serve a stored variant (409 for a rejected one unless forced)",
                200,
                "ActiveVariant",
                changes,
                body="ActivateBody",
            )
        },
        "/admin/models/{name}/rollback": {
            "post": op(
                "Back to the variant active before the last swap",
                200,
                "ActiveVariant",
                (404, 409, 507),
            )
        },
        "/admin/jobs": {"get": op("All jobs, newest first", 200, "Jobs", params=())},
        "/admin/jobs/{job}": {
            "get": op("A job's state, progress, report", 200, "JobDetail", (404,), (JOB,)),
            "delete": op("Cancel a job", 200, "JobDetail", (404,), (JOB,)),
        },
    }


def _doc_paths() -> dict[str, dict]:
    doc = _op("This document", _responses(200, None), tags=["Infrastructure"])
    doc["responses"]["200"]["content"] = {"application/json": {"schema": ANY_OBJ}}
    index = _op(
        "Swagger UI of this document (BentoML)", _responses(200, None), tags=["Infrastructure"]
    )
    index["responses"]["200"]["content"] = {"text/html": {"schema": STR}}
    return {
        "/openapi.json": {"get": doc},
        "/docs.json": {"get": copy.deepcopy(doc)},
        "/": {"get": index},
    }


def _predict_statuses(paths: dict) -> None:
    """What the guards add to BentoML's /predict: 405, 413 and 415, all ``{"error"}``."""
    predict = paths.get("/predict", {}).get("post")
    if predict is None:
        return
    for status in (405, 413, 415, 503):
        predict["responses"].setdefault(
            str(status),
            {
                "description": REASONS[status],
                "content": {"application/json": {"schema": _ref("Error")}},
            },
        )


def document(bentoml_doc: dict) -> dict:
    """BentoML's document of its own routes, plus every route of the app, errors included."""
    doc = copy.deepcopy(bentoml_doc)
    doc["info"] = {
        "title": "SlimServe",
        "version": "2",
        "description": "PyTorch models served while they are compressed for the device: Open "
        "Inference Protocol v2 (/v2), BentoML JSON (/predict), the admin API (/admin, bearer "
        'token), health and metrics. Every error is a JSON body {"error": string}.',
    }
    paths = doc.setdefault("paths", {})
    paths.update({**_v2_paths(), **_admin_paths(), **_doc_paths()})
    _predict_statuses(paths)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update({**_v2_schemas(), **_admin_schemas()})
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "SLIMSERVE_ADMIN_TOKEN; exactly one Authorization header",
    }
    tags = doc.setdefault("tags", [])
    tags += [
        {"name": "Open Inference Protocol v2", "description": "What Triton and KServe speak."},
        {"name": "Admin", "description": "Variants and compression jobs (bearer token)."},
    ]
    return doc


class DocsJson:
    """Answer ``GET /docs.json`` with :func:`document` (every route), not BentoML's part alone."""

    def __init__(self, app, doc: Callable[[], dict], path: str = "/docs.json") -> None:
        self.app = app
        self.doc = doc
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mine = scope["type"] == "http" and scope["path"] == self.path
        if not mine or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        body = json.dumps(self.doc()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        start: Message = {"type": "http.response.start", "status": 200, "headers": headers}
        await send(start)
        await send(
            {"type": "http.response.body", "body": body if scope["method"] == "GET" else b""}
        )
