"""The guard for a server without an API key: a web page the user visits must not be able to use it.

Without a key, any page could POST to http://127.0.0.1:8000 (a CORS "simple" request: `Content-Type: text/plain`
needs no preflight) and make the model generate, and with DNS rebinding (evil.example resolving to 127.0.0.1) read
the answers. Ollama fixed exactly this (CVE-2024-28224) by checking the Host header. So, with no key:

- the Host header must name this server: a loopback name (localhost, 127.0.0.1, ::1) or the `--host` value (any
  Host when `--host` is a wildcard, 0.0.0.0 or ::, an exposure the CLI already warns about);
- an Origin header, when a browser sends one, must be such a host too, or one of `--allow-origin`;
- a request with a body must say `Content-Type: application/json` (which a page cannot send without a preflight).

Refusals are 403 / 415 in OpenAI's error shape.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from offload.server import errors

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD = ("0.0.0.0", "::")


def _hostname(host: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1', 'Example.COM' -> 'example.com'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HostGuard:
    """ASGI middleware: refuses requests whose Host or Origin is not this server (see the module docstring)."""

    def __init__(self, app: ASGIApp, host: str, allow_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = {*LOOPBACK_NAMES, _hostname(host)} - {"", *WILDCARD}
        self.any_host = _hostname(host) in WILDCARD  # bound to every address on purpose: any Host may come
        self.origins = {o.rstrip("/").lower() for o in allow_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self._problem(headers, scope["method"])
        if problem is None:
            await self.app(scope, receive, send)
            return
        await problem.response()(scope, receive, send)

    def _problem(self, headers: dict[str, str], method: str) -> errors.APIError | None:
        host = _hostname(headers.get("host", ""))
        if host not in self.hosts and not self.any_host:
            return errors.APIError(
                403,
                f"Host {headers.get('host', '')!r} is not this server's name; without --api-key the server answers "
                f"only requests for {', '.join(sorted(self.hosts))} (a guard against DNS rebinding)",
                code="host_not_allowed",
            )
        origin = headers.get("origin")
        if origin is not None and origin != "null":
            allowed = origin.rstrip("/").lower() in self.origins or _hostname(urlsplit(origin).netloc) in self.hosts
            if not allowed:
                return errors.APIError(
                    403,
                    f"Origin {origin!r} may not use this server: a web page cannot drive it without --api-key; "
                    "start it with --allow-origin ORIGIN for a browser UI you trust",
                    code="origin_not_allowed",
                )
        if method in ("POST", "PUT", "PATCH") and not self._json(headers.get("content-type", "")):
            return errors.APIError(
                415,
                f"Content-Type {headers.get('content-type', '')!r}: send application/json",
                code="unsupported_media_type",
            )
        return None

    @staticmethod
    def _json(content_type: str) -> bool:
        return content_type.split(";", 1)[0].strip().lower() == "application/json"
