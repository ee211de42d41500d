"""The BentoML service: decode, delegate to :class:`service.serving.core.Core`, encode, map errors.

Routes (contract in shared/DESIGN.md): Open Inference Protocol v2 under ``/v2``, the admin API
under ``/admin`` (bearer token), BentoML's own ``/predict``, ``/livez``, ``/readyz``, ``/metrics``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from compression.errors import CompressionError, VariantError
from service.serving import v2
from service.serving.core import Core, UnknownModel
from service.serving.runtime import Overloaded
from service.serving.settings import Settings

log = logging.getLogger("slimserve.http")
_core: Core | None = None


def core() -> Core:
    if _core is None:
        raise RuntimeError("the service is not initialised yet")
    return _core


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# ---- Open Inference Protocol v2 ------------------------------------------------------------


async def server_metadata(request: Request) -> Response:
    return JSONResponse(v2.server_metadata())


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    ok = _core is not None and _core.ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


async def model_metadata(request: Request) -> Response:
    try:
        served = core().served(request.path_params["name"])
    except UnknownModel as err:
        return _error(404, err.args[0])
    return JSONResponse(served.adapter.signature.metadata())


async def model_ready(request: Request) -> Response:
    try:
        core().served(request.path_params["name"])
    except UnknownModel as err:
        return _error(404, err.args[0])
    return JSONResponse({"name": request.path_params["name"], "ready": True})


async def infer(request: Request) -> Response:
    name = request.path_params["name"]
    c = core()
    try:
        served = c.served(name)
    except UnknownModel as err:
        c.count_client_error(name)
        return _error(404, err.args[0])
    limit = c.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        c.count_client_error(name)
        return _error(413, f"request body of {declared} bytes is over the {limit}-byte limit")
    body = await request.body()
    header = request.headers.get("inference-header-content-length")
    try:
        parsed = v2.parse_infer_request(
            body,
            int(header) if header is not None else None,
            request.headers.get("content-type"),
            served.adapter.signature,
            limit,
            content_encoding=request.headers.get("content-encoding"),
        )
        rows = served.adapter.sample_rows(parsed.inputs)
    except (v2.V2Error, ValueError) as err:
        c.count_client_error(name)
        return _error(getattr(err, "status", 400), str(err))
    try:
        out, active = await c.infer(name, rows)
    except Overloaded as err:
        return _error(503, str(err))
    outputs = {served.adapter.output_name: out}
    body, headers = v2.encode_infer_response(
        name, "1", parsed.id, outputs, served.adapter.signature, parsed.outputs_binary
    )
    headers = dict(headers)
    headers["x-slimserve-variant"] = active.variant
    return Response(body, headers=headers)


V2_ROUTES = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/models/{name}", model_metadata, methods=["GET"]),
    Route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
    Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
]


# ---- admin ---------------------------------------------------------------------------------


class CompressBody(BaseModel):
    """POST /admin/models/{name}/compress"""

    model_config = ConfigDict(extra="forbid")
    profile: str | None = None


class ActivateBody(BaseModel):
    """POST /admin/models/{name}/activate"""

    model_config = ConfigDict(extra="forbid")
    variant: str


def _authorised(request: Request) -> JSONResponse | None:
    token = core().settings.admin_token
    if not token:
        return _error(403, "admin API disabled: set SLIMSERVE_ADMIN_TOKEN to enable it")
    if request.headers.get("authorization") != f"Bearer {token}":
        return _error(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'")
    return None


async def _body(request: Request, model: type[BaseModel]) -> BaseModel:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ValueError(f"{where}: {first['msg']}") from None


def admin_route(handler):
    async def wrapped(request: Request) -> Response:
        denied = _authorised(request)
        if denied is not None:
            return denied
        try:
            return await handler(request)
        except UnknownModel as err:
            return _error(404, err.args[0])
        except KeyError as err:
            return _error(404, str(err.args[0]))
        except VariantError as err:
            return _error(409, f"variant refused: {err}")
        except (ValueError, LookupError, CompressionError) as err:
            return _error(400 if isinstance(err, ValueError) else 409, str(err))

    return wrapped


@admin_route
async def admin_models(request: Request) -> Response:
    return JSONResponse({"models": core().models()})


@admin_route
async def admin_variants(request: Request) -> Response:
    name = request.path_params["name"]
    core().served(name)
    return JSONResponse({"variants": core().registry.variants(name)})


@admin_route
async def admin_compress(request: Request) -> Response:
    body = await _body(request, CompressBody)
    job = core().compress(request.path_params["name"], body.profile)
    return JSONResponse({"job": job.id}, status_code=202)


@admin_route
async def admin_jobs(request: Request) -> Response:
    return JSONResponse({"jobs": [j.summary() for j in core().jobs.list()]})


@admin_route
async def admin_job(request: Request) -> Response:
    job_id = request.path_params["job"]
    if job_id not in core().jobs.jobs:
        return _error(404, f"unknown job {job_id!r}")
    if request.method == "DELETE":
        return JSONResponse(core().jobs.cancel(job_id).detail())
    return JSONResponse(core().jobs.jobs[job_id].detail())


@admin_route
async def admin_activate(request: Request) -> Response:
    body = await _body(request, ActivateBody)
    import anyio

    result = await anyio.to_thread.run_sync(
        core().activate, request.path_params["name"], body.variant
    )
    return JSONResponse(result)


@admin_route
async def admin_rollback(request: Request) -> Response:
    import anyio

    result = await anyio.to_thread.run_sync(core().rollback, request.path_params["name"])
    return JSONResponse(result)


ADMIN_ROUTES = [
    Route("/admin/models", admin_models, methods=["GET"]),
    Route("/admin/models/{name}/variants", admin_variants, methods=["GET"]),
    Route("/admin/models/{name}/compress", admin_compress, methods=["POST"]),
    Route("/admin/models/{name}/activate", admin_activate, methods=["POST"]),
    Route("/admin/models/{name}/rollback", admin_rollback, methods=["POST"]),
    Route("/admin/jobs", admin_jobs, methods=["GET"]),
    Route("/admin/jobs/{job}", admin_job, methods=["GET", "DELETE"]),
]
# Mounted at "/" (after BentoML's own routes) so that "/v2" itself answers without a redirect.
http_app = Starlette(routes=V2_ROUTES + ADMIN_ROUTES)


# ---- the BentoML service -------------------------------------------------------------------


def _bentoml_options(settings: Settings) -> dict:
    """BentoML's per-request access log and OpenTelemetry spans, unless asked for.

    Both run on every request in the worker's event loop: on a small model they cost more than
    the forward itself (benchmarks/loadgen.py on 2 cores, digits-cnn, one torch thread,
    concurrency 32: ~1300 req/s with both, ~2760 without). Health, metrics and admin calls keep
    their spans.
    """
    options: dict = {}
    if not settings.access_log:
        options["logging"] = {"access": {"enabled": False}}
    if not settings.trace_inference:
        options["tracing"] = {"excluded_urls": ["/v2/models/", "/predict"]}
    return options


@bentoml.service(
    name="slimserve",
    workers=int(os.environ.get("SLIMSERVE_WORKERS", "1")),
    traffic={"timeout": 120},
    **_bentoml_options(Settings.from_env()),
)
@bentoml.asgi_app(http_app, path="/")
class SlimServe:
    """Serves every configured model at once and compresses each in the background."""

    def __init__(self) -> None:
        global _core
        logging.basicConfig(level=logging.INFO)
        _core = Core(Settings.from_env())
        self.core = _core

    def __is_ready__(self) -> bool:
        return self.core.ready

    @bentoml.api
    async def predict(self, model: str, inputs: Any) -> dict:
        """BentoML-native JSON: ``{"model": "digits-cnn", "inputs": [[...8x8...]]}``."""
        try:
            served = self.core.served(model)
            rows = served.adapter.from_json(inputs)
        except UnknownModel as err:
            self.core.count_client_error(model)
            raise bentoml.exceptions.NotFound(err.args[0]) from None
        except (v2.V2Error, ValueError) as err:
            self.core.count_client_error(model)
            raise bentoml.exceptions.InvalidArgument(str(err)) from None
        try:
            out, active = await self.core.infer(model, rows)
        except Overloaded as err:
            raise bentoml.exceptions.ServiceUnavailable(str(err)) from None
        return {"model": model, "variant": active.variant, "outputs": np.asarray(out).tolist()}
