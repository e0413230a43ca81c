"""Connections that cannot hold the server: a deadline for a request's headers, a limit on open connections.

uvicorn closes idle keep-alive connections, but a client that sends half a request line or half its headers is held
for as long as it likes (uvicorn has no header timeout), so a few hundred such sockets would use up the fd limit.
This h11 protocol gives each request `read_timeout` seconds to complete its headers, answering 408 otherwise, and
answers 503 to a connection beyond `max_connections`. The body's deadline is the app's (offload/server/app.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

READ_TIMEOUT_S = 30.0  # headers, and separately the body, must arrive within this
MAX_CONNECTIONS = 128  # open at once, idle keep-alive ones included


def _raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error response in OpenAI's shape, written before (or without) any parsed request."""
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "server_error" if status >= 500 else "invalid_request_error",
                "param": None,
                "code": code,
            }
        },
        ensure_ascii=True,
    ).encode("ascii")
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with a header deadline and a connection limit (set by `guarded_protocol`)."""

    read_timeout: float = READ_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            message = f"this server holds at most {self.max_connections} connections and all are open; retry later"
            transport.write(_raw_error(503, "Service Unavailable", message, "too_many_connections"))
            transport.close()
            return
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._await_headers()  # bytes of a request whose headers have not all come: the clock runs (once)
        else:
            self._stop_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for an idle connection
        self._stop_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.read_timeout, self._headers_too_slow)

    def _stop_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is None or self.cycle.response_complete:  # no response under way: say why, then close
            message = f"the request's headers did not arrive within {self.read_timeout:g} s"
            self.transport.write(_raw_error(408, "Request Timeout", message, "request_timeout"))
            self.logger.info("closed a connection whose request headers did not arrive in %g s", self.read_timeout)
        self.transport.close()


def guarded_protocol(read_timeout: float = READ_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> type[H11Protocol]:
    """The protocol class to give uvicorn.Config(http=...)."""
    if read_timeout <= 0 or max_connections < 1:
        raise ValueError(f"read_timeout {read_timeout} and max_connections {max_connections} must be positive")
    attrs = {"read_timeout": read_timeout, "max_connections": max_connections}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attrs)
