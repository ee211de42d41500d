"""The HTTP edge: decode, delegate to the core, encode; errors mapped in one place.

Routes (contract in the README): Open Inference Protocol v2 under ``/v2``, the admin API under
``/admin`` (bearer token), BentoML's own ``/predict``, ``/livez``, ``/readyz``, ``/metrics``.
:func:`create_app` builds the Starlette app around a :class:`~service.serving.core.Core`, so
tests drive it in process through ``httpx.ASGITransport``; the BentoML class at the bottom
mounts the same app and gives it the core it builds at start-up.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import bentoml
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.serving import connections
from service.serving.admin import ADMIN_ROUTES
from service.serving.core import Core
from service.serving.errors import ServiceError
from service.serving.guards import BodyLimit, PredictGuard, quiet_client_errors
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


def create_app(core: Core | None = None) -> Starlette:
    """The Starlette app of the v2 and admin routes; ``core`` may be given later (``state``)."""
    app = Starlette(
        routes=V2_ROUTES + ADMIN_ROUTES, exception_handlers={ServiceError: _service_error}
    )
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
        self.core = Core(Settings.from_env()).start()
        http_app.state.core = self.core

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
