"""The HTTP edge: decode, delegate to the core, encode; errors mapped in one place.

Routes (contract in the README): Open Inference Protocol v2 under ``/v2``, the admin API under
``/admin`` (bearer token), BentoML's own ``/predict``, ``/livez``, ``/readyz``, ``/metrics``;
the OpenAPI document of all of them at ``/openapi.json`` and ``/docs.json``
(:mod:`service.serving.openapi`).
:func:`create_app` builds the Starlette app around a :class:`~service.serving.core.Core`, so
tests drive it in process through ``httpx.ASGITransport``; the BentoML class at the bottom
mounts the same app and gives it the core it builds at start-up.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Annotated, Any

import bentoml
from pydantic import Field
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.serving import connections, openapi
from service.serving.admin import ADMIN_ROUTES
from service.serving.core import Core
from service.serving.errors import ServiceError, printable
from service.serving.grpc_v2 import GrpcServer
from service.serving.guards import BodyLimit, JsonErrors, PredictGuard, quiet_client_errors
from service.serving.predict import predict
from service.serving.routes import V2_ROUTES
from service.serving.settings import Settings

log = logging.getLogger("slimserve.http")


async def _service_error(request: Request, err: Exception) -> Response:
    """The one error map: a :class:`ServiceError` answers its status and message."""
    assert isinstance(err, ServiceError)
    if request.url.path.startswith("/v2/models/") and request.method == "POST":
        core: Core | None = request.app.state.core
        if core is not None:
            core.plane.count_client_error(request.path_params.get("name", ""))
    return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)


async def _http_error(request: Request, err: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (method): JSON like every other error."""
    assert isinstance(err, HTTPException)
    path = printable(request.scope.get("path", ""))
    path = path if len(path) <= 120 else path[:117] + "..."
    if err.status_code == 404:
        message = f"no route {request.method} {path!r}; the routes are listed at /docs.json"
    elif err.status_code == 405:  # Starlette lists a set: sorted, the answer is always the same
        allowed = ", ".join(sorted(m.strip() for m in (err.headers or {})["Allow"].split(",")))
        message = f"method {request.method} not allowed on {path!r}; allowed: {allowed}"
        return JSONResponse({"error": message}, status_code=405, headers={"Allow": allowed})
    else:
        message = printable(str(err.detail))
    return JSONResponse({"error": message}, status_code=err.status_code, headers=err.headers)


async def _server_error(request: Request, err: Exception) -> Response:
    """A bug (anything but a ServiceError): logged with its traceback, a JSON 500 to the client."""
    log.error("%s %s failed", request.method, printable(request.url.path), exc_info=err)
    return JSONResponse({"error": "internal server error (logged)"}, status_code=500)


@lru_cache(maxsize=1)
def full_document() -> dict:
    """The OpenAPI document of every route: BentoML's own, then this app's."""
    return openapi.document(SlimServe.openapi_spec.asdict())


async def _openapi(request: Request) -> Response:
    return JSONResponse(full_document())


def create_app(core: Core | None = None) -> Starlette:
    """The Starlette app of the v2 and admin routes; ``core`` may be given later (``state``).

    Every error it answers is ``{"error": string}``: a :class:`ServiceError`, a path no route
    matches (404), a method a route does not take (405, with ``Allow``), and a bug (500).
    """
    routes = [*V2_ROUTES, *ADMIN_ROUTES, Route("/openapi.json", _openapi, methods=["GET"])]
    handlers = {ServiceError: _service_error, HTTPException: _http_error, 500: _server_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.core = core
    return app


# Mounted at "/" (after BentoML's own routes) so that "/v2" itself answers without a redirect.
http_app = create_app()


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


def _guard(service, settings: Settings) -> None:
    """Limits in front of every route of the worker (issue 15): body size while it streams,
    read deadlines and a connection cap in uvicorn's protocol, /predict's declared error
    bodies, no traceback logged for a client's mistake."""
    connections.install(
        connections.ConnectionLimits(
            settings.header_timeout_s, settings.body_timeout_s, settings.max_connections
        )
    )
    service.add_asgi_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    service.add_asgi_middleware(PredictGuard)
    service.add_asgi_middleware(JsonErrors)
    service.add_asgi_middleware(openapi.DocsJson, doc=full_document)
    quiet_client_errors()


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
        logging.basicConfig(level=logging.INFO)
        # BentoML configured the root logger first (WARNING): the service's own events (swaps,
        # canary decisions, jobs; none per request) are INFO and belong in the server's log.
        logging.getLogger("slimserve").setLevel(logging.INFO)
        self.core = Core(Settings.from_env()).start()
        http_app.state.core = self.core
        self.grpc: GrpcServer | None = None

    @bentoml.on_startup
    async def _start_grpc(self) -> None:
        """gRPC beside HTTP, on this worker's event loop (its requests batch with HTTP's)."""
        s = self.core.settings
        if s.grpc_port:
            self.grpc = GrpcServer(self.core, s.grpc_port, s.workers, s.max_body_bytes)
            await self.grpc.start()

    @bentoml.on_shutdown
    async def _stop_grpc(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()

    def __is_ready__(self) -> bool:
        return self.core.ready

    @bentoml.api
    async def predict(
        self,
        model: Annotated[str, Field(examples=["digits-cnn", "minilm"])],
        inputs: Annotated[Any, Field(examples=[[[0.5] * 64], ["A sentence to embed."]])],
    ) -> dict:
        """BentoML-native JSON: ``{"model": "digits-cnn", "inputs": [[...8x8...]]}``."""
        status, body = await predict(self.core.plane, model, inputs)
        # Client errors are answered, not raised: no traceback logged, the declared body shape.
        return body if status == 200 else JSONResponse(body, status_code=status)


_guard(SlimServe, Settings.from_env())
