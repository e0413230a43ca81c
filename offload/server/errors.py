"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.

The rule for bad requests: every malformed body, wrong type, out-of-range or unsupported value is 400
`invalid_request_error`, with `param` naming the field (as OpenAI's own API answers); 422 is never used.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class ErrorJSON(JSONResponse):
    """JSON with non-ASCII escaped: an error may echo the client's input, and a lone surrogate in it (`\\ud800`, valid
    in JSON text, invalid in UTF-8) would otherwise fail to encode and turn the error into a 500."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class APIError(Exception):
    """An error to answer with; raised anywhere in request handling and turned into JSON by the app."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return ErrorJSON(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str, known: list[str]) -> APIError:
    return APIError(
        404,
        f"The model `{name}` does not exist; this server serves {' and '.join(map(repr, known))}",
        param="model",
        code="model_not_found",
    )


def unauthorized(message: str) -> APIError:
    return APIError(401, message, type="authentication_error", code="invalid_api_key")


def too_large(limit: int) -> APIError:
    return APIError(
        413, f"the request body is larger than {limit:,} bytes, this server's limit", code="request_too_large"
    )


def queue_full(max_queue: int) -> APIError:
    return APIError(
        503,
        f"the server is busy: one request runs and the queue is full ({max_queue} may wait); retry later",
        type="server_error",
        code="queue_full",
    )


def shutting_down() -> APIError:
    return APIError(
        503,
        "the server is shutting down; retry against another server or once it is back",
        "server_error",
        code="server_shutting_down",
    )


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method) in the same shape."""
    assert isinstance(exc, HTTPException)
    err = APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=None)
    return err.response(dict(exc.headers or {}))


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response({"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)


async def server_error(request: Request, exc: Exception) -> Response:
    """A bug, answered 500 without the details (Starlette re-raises it after, so uvicorn logs the traceback)."""
    return APIError(500, f"internal error: {type(exc).__name__}; see the server log", type="server_error").response()
