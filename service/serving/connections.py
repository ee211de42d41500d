"""Slow and idle clients cannot hold a worker's connections: header and body deadlines and a
cap on open connections, in uvicorn's HTTP protocol.

uvicorn (under BentoML) has no header or body read timeout: a client that sends its headers a
byte at a time, or never finishes its body, keeps its connection for ever (40 of 40 such
connections were still open after 30 s). BentoML 1.4 exposes none of uvicorn's protocol
options, so :func:`install` makes uvicorn's ``auto``/``httptools`` protocol this subclass of
its own, before the worker builds its uvicorn config (the service module is imported first):

* ``header_timeout_s``: a request's headers must be complete this long after its connection
  opened or its first byte arrived (a deadline, not an idle timer: a byte every second does
  not keep it alive); then 408 and the connection closes.
* ``body_timeout_s``: its body must be complete this long after its headers; then 408.
* ``max_connections``: connections open at once per worker; one more is answered 503 and
  closed at once. Idle kept-alive connections close after uvicorn's keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("slimserve.http")


@dataclass
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 1024


def _response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    return head + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines and a connection cap."""

    limits = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            log.warning("refused a connection: %d open", len(self.connections) - 1)
            self._refuse(503, "Service Unavailable", "too many open connections; retry later")
            return
        self._arm(self.limits.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.limits.header_timeout_s, "headers")  # a next request on this connection

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_s, "body")  # disarmed when the body is complete

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._disarm()
        super().on_response_complete()

    # ---- deadlines ---------------------------------------------------------------------------

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, what, seconds)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, what: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            return  # answering already: the request was read in time
        self._refuse(408, "Request Timeout", f"the request {what} took longer than {seconds:g} s")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.response_complete = True  # the app's own answer, if any, goes nowhere
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write(_response(status, reason, message))
        self.transport.close()


def install(limits: ConnectionLimits) -> None:
    """Make uvicorn build :class:`GuardedHttpToolsProtocol` for ``http="auto"|"httptools"``."""
    from uvicorn import config

    GuardedHttpToolsProtocol.limits = limits
    target = f"{__name__}:GuardedHttpToolsProtocol"
    config.HTTP_PROTOCOLS["auto"] = target
    config.HTTP_PROTOCOLS["httptools"] = target
