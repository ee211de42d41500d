"""The admin API: models, variants, compression jobs, activate and rollback (bearer token).

Every route checks ``Authorization: Bearer <SLIMSERVE_ADMIN_TOKEN>`` first (401; 403 when no
token is configured). Bodies are pydantic models that forbid unknown keys. Errors are
:class:`~service.serving.errors.ServiceError` subclasses, answered by the app's one handler.
"""

from __future__ import annotations

import hmac

import anyio
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.serving.errors import AdminDisabled, BadRequest, Unauthorized
from service.serving.routes import core


class CompressBody(BaseModel):
    """POST /admin/models/{name}/compress"""

    model_config = ConfigDict(extra="forbid")
    profile: str | None = None


class ActivateBody(BaseModel):
    """POST /admin/models/{name}/activate"""

    model_config = ConfigDict(extra="forbid")
    variant: str


def _authorise(request: Request) -> None:
    token = core(request).settings.admin_token
    if not token:
        raise AdminDisabled("admin API disabled: set SLIMSERVE_ADMIN_TOKEN to enable it")
    sent = request.headers.get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("missing or wrong bearer token: send 'Authorization: Bearer <token>'")


async def _body(request: Request, model: type[BaseModel]) -> BaseModel:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}") from None


def admin_route(handler):
    async def wrapped(request: Request) -> Response:
        _authorise(request)
        return await handler(request)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


@admin_route
async def admin_models(request: Request) -> Response:
    return JSONResponse({"models": core(request).plane.models()})


@admin_route
async def admin_variants(request: Request) -> Response:
    return JSONResponse({"variants": core(request).variants.variants(request.path_params["name"])})


@admin_route
async def admin_compress(request: Request) -> Response:
    body = await _body(request, CompressBody)
    job = core(request).variants.compress(request.path_params["name"], body.profile)
    return JSONResponse({"job": job.id}, status_code=202)


@admin_route
async def admin_jobs(request: Request) -> Response:
    return JSONResponse({"jobs": [j.summary() for j in core(request).jobs.list()]})


@admin_route
async def admin_job(request: Request) -> Response:
    jobs = core(request).jobs
    job_id = request.path_params["job"]
    job = jobs.cancel(job_id) if request.method == "DELETE" else jobs.get(job_id)
    return JSONResponse(job.detail())


@admin_route
async def admin_activate(request: Request) -> Response:
    body = await _body(request, ActivateBody)
    manager = core(request).variants
    # Loading a variant reads and checks its weights: off the event loop.
    result = await anyio.to_thread.run_sync(
        manager.activate, request.path_params["name"], body.variant
    )
    return JSONResponse(result)


@admin_route
async def admin_rollback(request: Request) -> Response:
    manager = core(request).variants
    result = await anyio.to_thread.run_sync(manager.rollback, request.path_params["name"])
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
