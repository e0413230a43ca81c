"""Server-sent events, and noticing a client that hangs up, with or without a stream.

Starlette's StreamingResponse listens for the disconnect only under ASGI spec < 2.4 (later it relies on `send`
failing, which uvicorn makes a silent no-op); this response always listens, so a client that goes away cancels its
generation on any server.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


async def until_disconnected(receive: Receive) -> None:
    """Return when the client has gone (call after the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(work: Callable[[], Awaitable[T]], receive: Receive) -> T | None:
    """work()'s result, or None when the client hangs up first (work is then cancelled)."""
    outcome: list[T] = []
    failure: list[Exception] = []  # raised after the task group, which would wrap it in an ExceptionGroup
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await until_disconnected(receive)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            outcome.append(await work())
        except Exception as e:
            failure.append(e)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return outcome[0] if outcome else None


class EventStream(Response):
    """`data: {json}` per event, then `data: [DONE]`; on_close runs however the stream ends (done, client gone)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[dict[str, Any]], on_close: Callable[[], None]) -> None:
        self.events = events
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # ASGI 2.4 servers may report the hang-up here
                        await self._stream(send)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await until_disconnected(receive)
                tg.cancel_scope.cancel()
        finally:
            self.on_close()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for event in self.events:
            data = f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
