"""The worker's guards (issue 15, items 3, 9, 10): the body limit as an ASGI middleware, read
deadlines and the connection cap in a real uvicorn server on a free port, /predict's error
shape and BentoML's client-error logs."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.serving import connections
from service.serving.guards import BodyLimit, QuietClientErrors, _error_message

pytestmark = pytest.mark.unit


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"size": len(await request.body())})


ECHO = Starlette(routes=[Route("/echo", _echo, methods=["POST", "GET"])])


def _call(app, **kw) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            return await c.post("/echo", **kw)

    return asyncio.run(go())


# ---- item 3: body limit while streaming, on every route -----------------------------------------


def test_bodies_under_the_limit_reach_the_app_whole():
    r = _call(BodyLimit(ECHO, max_bytes=1000), content=b"x" * 1000)
    assert r.status_code == 200 and r.json() == {"size": 1000}


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    read = []

    async def app(scope, receive, send):
        async def counting():
            message = await receive()
            read.append(len(message.get("body", b"")))
            return message

        await BodyLimit(ECHO, max_bytes=1000)(scope, counting, send)

    r = _call(app, content=b"x" * 5000)
    assert r.status_code == 413 and "5000 bytes is over the 1000-byte limit" in r.json()["error"]
    assert r.headers["connection"] == "close" and read == [], read


def test_a_chunked_body_is_refused_once_it_passes_the_limit():
    offered = []

    async def chunks():
        for _ in range(1000):  # 64 MB offered
            offered.append(64 << 10)
            yield b"x" * (64 << 10)

    r = _call(BodyLimit(ECHO, max_bytes=1 << 20), content=chunks())
    assert r.status_code == 413 and "1048576-byte limit" in r.json()["error"], r.text
    assert sum(offered) <= (1 << 20) + (128 << 10), f"read {sum(offered)} bytes"


# ---- item 10: BentoML's error bodies and logs ----------------------------------------------------


def test_bentoml_error_bodies_are_rewritten_into_the_declared_shape():
    assert _error_message(b'[{"error": "Invalid JSON input"}]') == "Invalid JSON input"
    pydantic_style = (
        b'{"error": "1 validation error for Input", "detail": '
        b'[{"type": "missing", "loc": ["body", "model"], "msg": "Field required"}]}'
    )
    assert _error_message(pydantic_style) == "model: Field required"
    assert _error_message(b"not json") == "not json"


def test_client_errors_log_one_debug_line_and_server_errors_keep_their_traceback(caplog):
    import bentoml
    from pydantic import BaseModel, ValidationError

    logger = logging.getLogger("bentoml._internal.server.http_app.test")
    logger.addFilter(QuietClientErrors())

    class M(BaseModel):
        x: int

    def log_with(exc: BaseException) -> None:
        try:
            raise exc
        except BaseException:
            logger.error("Exception on /predict [POST]", exc_info=True)

    with caplog.at_level(logging.INFO, logger=logger.name):
        try:
            M(x="nope")
        except ValidationError as err:
            log_with(err)
        log_with(bentoml.exceptions.InvalidArgument("bad input"))
        log_with(bentoml.exceptions.NotFound("no such thing"))
        assert caplog.records == [], [r.getMessage() for r in caplog.records]
        log_with(RuntimeError("a bug"))
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None


# ---- item 9: read deadlines and a connection cap in a real uvicorn server ------------------------


@pytest.fixture
def server():
    """uvicorn on a free port with the guarded protocol: 0.5 s header, 1 s body, 4 connections."""
    connections.install(connections.ConnectionLimits(0.5, 1.0, 4))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(ECHO, log_config=None, http="auto", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    yield port
    srv.should_exit = True
    thread.join(10)
    connections.install(connections.ConnectionLimits())


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (at most 10 s: it must close sooner)."""
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:  # closed while we were still sending
            return data
        if not chunk:
            return data
        data += chunk


def test_slow_headers_are_answered_408_and_closed(server):
    s = _connect(server)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\n")  # ... and never the rest
    data = _read_all(s)  # socket timeout 10 s: a hung connection fails the test
    assert data.startswith(b"HTTP/1.1 408") and b"headers took longer than 0.5 s" in data, data


def test_dribbled_headers_do_not_keep_a_connection_alive(server):
    s = _connect(server)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\n")
    sent = 0
    for _ in range(40):  # a byte every 0.1 s for up to 4 s: a deadline, not an idle timer
        try:
            s.sendall(b"X")
        except OSError:
            break
        sent += 1
        time.sleep(0.1)
    data = _read_all(s)
    assert data.startswith(b"HTTP/1.1 408") or sent < 40, (sent, data)


def test_a_slow_body_is_answered_408_and_closed(server):
    s = _connect(server)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc")
    data = _read_all(s)
    assert data.startswith(b"HTTP/1.1 408") and b"body took longer than 1 s" in data, data


def test_an_idle_connection_is_closed(server):
    s = _connect(server)
    assert _read_all(s).startswith(b"HTTP/1.1 408")


def test_connections_over_the_cap_are_refused_at_once_and_normal_requests_work(server):
    held = [_connect(server) for _ in range(4)]
    time.sleep(0.1)  # let the server accept them
    extra = _connect(server)
    data = _read_all(extra)
    assert data.startswith(b"HTTP/1.1 503") and b"too many open connections" in data, data
    for s in held:  # the held ones time out (408) and free their slots
        assert _read_all(s).startswith(b"HTTP/1.1 408")
    r = httpx.post(f"http://127.0.0.1:{server}/echo", content=b"x" * 100, timeout=10)
    assert r.status_code == 200 and r.json() == {"size": 100}
