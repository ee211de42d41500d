"""The admin API: models, variants, compression jobs, activate and rollback (bearer token).

Every route checks ``Authorization: Bearer <SLIMSERVE_ADMIN_TOKEN>`` first (401; 403 when no
token is configured; compared in constant time). Bodies are pydantic models that forbid unknown
keys, read with a small size limit. Nothing a client sends names a server file: a profile is a
built-in or configured name, or an inline mapping validated like a profile YAML file; variant
and job ids are checked against the form the service issues before any lookup. Errors are
:class:`~service.serving.errors.ServiceError` subclasses, answered by the app's one handler.
"""

from __future__ import annotations

import hmac
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.serving.client_profiles import requested_profile
from service.serving.errors import AdminDisabled, BadRequest, Unauthorized
from service.serving.registry import check_variant_id
from service.serving.routes import core, read_body

# Admin bodies are a few hundred bytes; an inline profile a few KB.
ADMIN_BODY_BYTES = 64 << 10


class CompressBody(BaseModel):
    """POST /admin/models/{name}/compress: ``{"profile": "cpu"}`` or ``{"profile": {...}}``."""

    model_config = ConfigDict(extra="forbid")
    profile: str | dict[str, Any] | None = Field(
        None,
        description="A built-in or configured profile name, or an inline mapping of profile "
        "keys (validated like a profile YAML file); never a path.",
    )


class ActivateBody(BaseModel):
    """POST /admin/models/{name}/activate"""

    model_config = ConfigDict(extra="forbid")
    variant: str = Field(max_length=200)


def _authorise(request: Request) -> None:
    token = core(request).settings.admin_token
    if not token:
        raise AdminDisabled("admin API disabled: set SLIMSERVE_ADMIN_TOKEN to enable it")
    sent = request.headers.get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("missing or wrong bearer token: send 'Authorization: Bearer <token>'")


async def _body(request: Request, model: type[BaseModel]) -> BaseModel:
    raw = await read_body(request, ADMIN_BODY_BYTES)
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
    return JSONResponse({"variants": core(request).variants_view(request.path_params["name"])})


@admin_route
async def admin_compress(request: Request) -> Response:
    body = await _body(request, CompressBody)
    c = core(request)
    c.plane.served(request.path_params["name"])  # 404 before anything else
    name, inline = requested_profile(body.profile, c.settings.profiles_dir)
    job = c.variants.compress(request.path_params["name"], name, inline=inline)
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
    manager.plane.served(request.path_params["name"])  # 404 before the id's 400
    vid = check_variant_id(body.variant)
    # Loading a variant reads and checks its weights: off the event loop. An operator's
    # choice is pinned: a restart serves it and starts no compression over it.
    result = await anyio.to_thread.run_sync(
        lambda: manager.activate(request.path_params["name"], vid, pinned=True)
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
