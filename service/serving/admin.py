"""The admin API: models, variants, compression jobs, activate and rollback (bearer token).

Every route checks ``Authorization: Bearer <SLIMSERVE_ADMIN_TOKEN>`` first (401; 403 when no
token is configured; compared in constant time; more than one Authorization header is a 401,
whichever comes first). Bodies are pydantic models that forbid unknown keys, read with a small
size limit. Nothing a client sends names a server file: a profile is a built-in or configured
name, or an inline mapping validated like a profile YAML file, within the engine's ranges and
this server's (threads up to its cores, a device it has); variant and job ids are checked
against the form the service issues before any lookup. A variant its verification or live
traffic rejected is activated only with ``"force": true`` (logged, counted in
``slimserve_forced_activations_total``); otherwise 409 with the reason. Errors are
:class:`~service.serving.errors.ServiceError` subclasses, answered by the app's one handler.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import anyio
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from compression.profiles import profile_from_dict
from service.serving import metrics
from service.serving.client_profiles import requested_profile
from service.serving.core import available_cores
from service.serving.errors import AdminDisabled, BadRequest, Conflict, Unauthorized
from service.serving.profiles import check_fits_server
from service.serving.registry import ORIGINAL, check_variant_id
from service.serving.routes import core, read_body

log = logging.getLogger("slimserve")
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
    variant: str = Field(max_length=200, description="A variant id, or 'original'.")
    force: bool = Field(
        False,
        description="Serve a variant that was rejected (by its verification or by live "
        "traffic) anyway; logged and counted (slimserve_forced_activations_total). Without "
        "it such a variant is refused (409) with the reason.",
    )


def _authorise(request: Request) -> None:
    token = core(request).settings.admin_token
    if not token:
        raise AdminDisabled("admin API disabled: set SLIMSERVE_ADMIN_TOKEN to enable it")
    sent = request.headers.getlist("authorization")
    if len(sent) > 1:  # which one counts differs from proxy to proxy: none does
        raise Unauthorized(
            f"{len(sent)} Authorization headers: send exactly one 'Authorization: Bearer <token>'"
        )
    if not hmac.compare_digest((sent or [""])[0].encode(), f"Bearer {token}".encode()):
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
    if inline is not None:  # an operator's typo meets this server's ranges, not only the engine's
        check_fits_server(profile_from_dict(inline), available_cores(), torch.cuda.is_available())
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
    name, vid = request.path_params["name"], check_variant_id(body.variant)
    rejected = rejection(core(request), name, vid)
    if rejected and not body.force:
        raise Conflict(
            f'variant {vid!r} of {name!r} was rejected: {rejected}; send "force": true to '
            "serve it anyway"
        )
    # Loading a variant reads and checks its weights: off the event loop. An operator's
    # choice is pinned: a restart serves it and starts no compression over it.
    reason = "forced" if rejected else "manual"
    result = await anyio.to_thread.run_sync(
        lambda: manager.activate(name, vid, reason=reason, pinned=True)
    )
    if rejected:
        log.warning("model %s: rejected variant %s served by force: %s", name, vid, rejected)
        metrics.series().forced.labels(name).inc()
    return JSONResponse(result)


def rejection(c, name: str, vid: str) -> str | None:
    """Why ``vid`` was rejected (its verification, or live traffic), or None.

    A variant whose report cannot be read is left to the activation's own checks (409).
    """
    if vid == ORIGINAL:
        return None
    try:
        report = c.registry.report(name, vid)  # UnknownVariant (404) for an id never stored
    except (OSError, ValueError):
        return None
    if isinstance(report, dict) and report.get("accepted") is False:
        return f"its verification did not accept it ({report.get('reason') or 'over budget'})"
    for mark in c.live.marks(name):
        if isinstance(mark, dict) and mark.get("variant") == vid:
            live = mark.get("live") if isinstance(mark.get("live"), dict) else {}
            return (
                f"live traffic rejected it ({mark.get('when')}: {live.get('metric')} "
                f"{live.get('value')} under its budget {mark.get('budget')})"
            )
    return None


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
