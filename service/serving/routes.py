"""Open Inference Protocol v2 routes (what Triton and KServe speak; ``tritonclient`` works).

Each handler decodes with :mod:`service.serving.v2`, calls the data plane, and encodes; every
error is a :class:`~service.serving.errors.ServiceError` answered by the app's one handler.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.serving import v2
from service.serving.errors import BadRequest, PayloadTooLarge, ServiceError


def core(request: Request):
    """The app's core (set by ``create_app`` or at BentoML start-up)."""
    c = request.app.state.core
    if c is None:
        raise ServiceError("the service is starting: no models loaded yet", 503)
    return c


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to be over ``limit`` bytes.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body
    is counted while it streams in, so at most ``limit`` bytes are ever held.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest(f"Content-Length must be a number of bytes, got {declared[:40]!r}")
        if int(declared) > limit:
            raise PayloadTooLarge(
                f"request body of {int(declared)} bytes is over the {limit}-byte limit"
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _served(request: Request):
    served = core(request).plane.served(request.path_params["name"])
    v2.check_version(served.adapter.signature, request.path_params.get("version"))
    return served


async def server_metadata(request: Request) -> Response:
    return JSONResponse(v2.server_metadata())


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    c = request.app.state.core
    ok = c is not None and c.ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


async def model_metadata(request: Request) -> Response:
    return JSONResponse(_served(request).adapter.signature.metadata())


async def model_ready(request: Request) -> Response:
    _served(request)
    return JSONResponse({"name": request.path_params["name"], "ready": True})


async def infer(request: Request) -> Response:
    name = request.path_params["name"]
    served = _served(request)
    limit = core(request).settings.max_body_bytes
    body = await read_body(request, limit)
    parsed = v2.parse_infer_request(
        body,
        request.headers.get("inference-header-content-length"),
        request.headers.get("content-type"),
        served.adapter.signature,
        limit,
        content_encoding=request.headers.get("content-encoding"),
    )
    rows = served.adapter.sample_rows(parsed.inputs)
    out, active = await core(request).plane.infer(name, rows)
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
