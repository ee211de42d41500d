"""ASGI guards around every route of the BentoML app: a body limit enforced while the body
streams in, ``/predict`` error bodies in the shape ``/docs.json`` declares, every error JSON,
and no traceback logged for a client's mistake.

:class:`BodyLimit` sits in front of every route (BentoML's ``/predict`` included, which has no
limit of its own): a declared ``Content-Length`` over the limit is answered 413 before a byte
of the body is read, and a chunked body is counted as it arrives and answered 413 as soon as it
passes the limit, so a worker never holds more than ``max_bytes`` of one request. The
application then reads the buffered body as usual; it is never called for a refused one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _answer(
    send: Send, status: int, message: str, close: bool = False, extra: list | None = None
) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += extra or []
    if close:  # the rest of an unread body is not read on
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` (413) before the application parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return await _answer(send, 400, "Content-Length must be a number of bytes", True)
            if int(declared) > limit:
                return await _answer(
                    send,
                    413,
                    f"request body of {int(declared)} bytes is over the {limit}-byte limit",
                    close=True,
                )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _answer(
                    send, 413, f"request body is over the {limit}-byte limit", close=True
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as usual

        await self.app(scope, replay, send)


class PredictGuard:
    """``/predict`` as ``/docs.json`` declares it, where BentoML's own handling differs.

    * Only JSON bodies (the one declared media type; no Content-Type means JSON): anything else
      is 415 before BentoML's decoders see it (multipart without a boundary was a 500).
    * BentoML answers its own 4xx errors as ``[{"error": ...}]`` (a list) or with a list in
      ``detail``; the declared shape is ``{"error": string, "detail": string}``: such bodies are
      rewritten (successful and 5xx answers pass untouched).
    * A 405 gets the ``Allow: POST`` header HTTP requires (BentoML drops it).
    """

    def __init__(self, app: ASGIApp, paths: tuple[str, ...] = ("/predict",)) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        media = dict(scope["headers"]).get(b"content-type", b"application/json")
        if media.split(b";")[0].strip().lower() != b"application/json":
            shown = media.decode("latin-1")[:60]
            return await _answer(
                send, 415, f"expected Content-Type application/json, got {shown!r}"
            )

        async def rewrite(start: Message, body: bytes) -> None:
            extra = [(b"allow", b"POST")] if start["status"] == 405 else []
            await _answer(send, start["status"], _error_message(body), extra=extra)

        def client_error(start: Message) -> bool:
            return 400 <= start["status"] < 500

        await self.app(scope, receive, _rewriting(send, client_error, rewrite))


class JsonErrors:
    """Every error answer ``{"error": string}``, BentoML's own router's included.

    The app's handlers answer JSON; what never reaches them does not: BentoML's router answers a
    path its routes and the app's mount at ``/`` do not match (a ``%0A`` in an id: the mount's
    pattern stops at a newline) with a plain-text 404, a wrong method on its own routes with a
    plain-text 405. A 4xx or 5xx answer that is not JSON is rewritten here, its status kept.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        def plain_error(start: Message) -> bool:
            nonlocal started
            started = True
            media = dict(start.get("headers", [])).get(b"content-type", b"")
            return start["status"] >= 400 and not media.startswith(b"application/json")

        async def rewrite(start: Message, body: bytes) -> None:
            allow = [(k, v) for k, v in start.get("headers", []) if k.lower() == b"allow"]
            text = _plain_error(scope, start["status"], body, allow)
            await _answer(send, start["status"], text, extra=allow)

        try:
            await self.app(scope, receive, _rewriting(send, plain_error, rewrite))
        except Exception:  # a bug: the server logs it; the client gets JSON, not uvicorn's text
            if not started:
                await _answer(send, 500, "internal server error (logged)")
            raise


def _rewriting(
    send: Send,
    held: Callable[[Message], bool],
    rewrite: Callable[[Message, bytes], Awaitable[None]],
) -> Send:
    """A ``send`` that passes every response through except one whose start message ``held``
    selects: that one's body is collected and handed, with its start, to ``rewrite``."""
    start: Message | None = None
    parts: list[bytes] = []

    async def capture(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            if held(message):
                start = message
                return
            return await send(message)
        if start is None:
            return await send(message)
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            await rewrite(start, b"".join(parts))

    return capture


def _plain_error(scope: Scope, status: int, raw: bytes, allow: list) -> str:
    """The message for a plain-text error: what was asked, and where the routes are listed."""
    path = scope.get("path", "")
    shown = repr(path if len(path) <= 120 else path[:117] + "...")
    shown = shown.encode("utf-8", "backslashreplace").decode("utf-8")
    if status == 404:
        return f"no route {scope.get('method')} {shown}; the routes are listed at /docs.json"
    if status == 405:
        allowed = ", ".join(v.decode("latin-1") for _, v in allow) or "see /docs.json"
        return f"method {scope.get('method')} not allowed on {shown}; allowed: {allowed}"
    if status == 500:  # a bug, logged where it happened; its text is not the client's business
        return "internal server error (logged)"
    return raw.decode("utf-8", "replace")[:500] or f"HTTP {status}"


def _error_message(raw: bytes) -> str:
    """The message of a BentoML error body, whatever its shape."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:500] or "bad request"
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        doc = doc[0]
    if not isinstance(doc, dict):
        return str(doc)[:500]
    message = str(doc.get("error", "bad request"))
    detail = doc.get("detail")
    if isinstance(detail, list) and detail:  # pydantic errors: name the first field and issue
        first = detail[0] if isinstance(detail[0], dict) else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        message = f"{where}: {first.get('msg', message)}"
    return message


class QuietClientErrors(logging.Filter):
    """BentoML logs every error of an API call with its traceback at ERROR, a client's invalid
    body included (1,000 bad requests: 11,000 log lines). A client error (a validation error,
    a BentoML error with a 4xx status) becomes one DEBUG line; server errors are untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _is_client_error(exc):
            record.msg = f"client error: {record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _is_client_error(exc: BaseException) -> bool:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    code = getattr(getattr(exc, "error_code", None), "value", None)
    return isinstance(code, int) and 400 <= code < 500


def quiet_client_errors() -> None:
    """Install :class:`QuietClientErrors` on BentoML's HTTP loggers (idempotent)."""
    for name in ("bentoml._internal.server.http_app", "bentoml.server.http_app"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietClientErrors) for f in logger.filters):
            logger.addFilter(QuietClientErrors())
