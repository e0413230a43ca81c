"""Issue 19, item 10: half-sent requests are not held forever and open connections are bounded."""

from __future__ import annotations

import inspect
import json
import socket
import time
from typing import Any

import httpx
import pytest

from offload.cli.serve import run_server, serve_cmd
from offload.server.app import create_app
from offload.server.connections import MAX_CONNECTIONS, READ_TIMEOUT_S, guarded_protocol
from tests.test_server import CHAT, HeldEngine, Served


def _connect(s: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _read_response(sock: socket.socket) -> bytes:
    """One response: its headers, then content-length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _error(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


@pytest.fixture
def served():
    with Served(create_app(HeldEngine(), "held", read_timeout=0.5), read_timeout=0.5, max_connections=3) as s:
        yield s


def test_half_sent_headers_are_answered_408_and_closed(served: Served) -> None:
    with _connect(served) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
        t = time.monotonic()
        status, err = _error(_read_all(sock))
        assert time.monotonic() - t < 5
    assert (
        status == 408 and err["code"] == "request_timeout" and "headers did not arrive within 0.5 s" in err["message"]
    )


def test_half_sent_headers_after_a_kept_alive_request_are_408_too(served: Served) -> None:
    with _connect(served) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")  # the next request stalls mid-header
        status, err = _error(_read_all(sock))
    assert status == 408 and err["code"] == "request_timeout"


def test_a_body_that_stops_arriving_is_408(served: Served) -> None:
    body = json.dumps(CHAT).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    with _connect(served) as sock:
        sock.sendall(head + body[:10])
        raw = _read_response(sock)
    status, err = _error(raw)
    assert status == 408 and err["code"] == "request_timeout" and "body did not arrive within 0.5 s" in err["message"]


def test_connections_past_the_limit_get_503_and_a_freed_place_is_reused(served: Served) -> None:
    idle = [_connect(served) for _ in range(3)]  # connected, nothing sent: each holds a place
    try:
        time.sleep(0.1)
        with _connect(served) as extra:
            status, err = _error(_read_all(extra))
        assert status == 503 and err["code"] == "too_many_connections" and "at most 3 connections" in err["message"]
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the server notices the closed ones
        try:
            if httpx.get(f"{served.url}/health").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "no place was freed"
        time.sleep(0.05)


def test_an_ordinary_slow_client_within_the_deadline_is_served(served: Served) -> None:
    with _connect(served) as sock:
        for part in (b"GET /health HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
            sock.sendall(part)
            time.sleep(0.1)  # 0.3 s in all, under the 0.5 s deadline
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_the_serve_command_defaults_are_the_protocol_s() -> None:
    for fn in (serve_cmd, run_server):
        params = inspect.signature(fn).parameters
        assert params["read_timeout"].default == READ_TIMEOUT_S and params["max_connections"].default == MAX_CONNECTIONS
    with pytest.raises(ValueError, match="must be positive"):
        guarded_protocol(0, 1)
