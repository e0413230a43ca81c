"""Ctrl-C / SIGTERM: every generation stops at once, and the process exits in about a second.

uvicorn alone waits for open responses to finish (its graceful shutdown) while the engine keeps generating; here the
signal first stops the scheduler's jobs, so streams end with an error event and `[DONE]`, waiting requests are
answered 503, and the connections close by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)

GRACE_S = 1  # after the jobs are stopped, how long a response may take to drain before uvicorn cancels it


class Shutdown:
    """What the app does when the server is told to stop; `begin` runs each hook once, on the event loop."""

    def __init__(self) -> None:
        self._hooks: list[Callable[[], None]] = []
        self.begun = False

    def on_begin(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    def begin(self) -> None:
        if self.begun:
            return
        self.begun = True
        for hook in self._hooks:
            hook()


class StoppingServer(uvicorn.Server):
    """uvicorn's server, whose exit signal also begins `shutdown` (scheduled on the loop: a signal handler must
    not take the scheduler's lock, which the interrupted code may hold)."""

    def __init__(self, config: uvicorn.Config, shutdown: Shutdown) -> None:
        super().__init__(config)
        self.shutdown_hooks = shutdown
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first and self._loop is not None:
            self._loop.call_soon_threadsafe(self.shutdown_hooks.begin)
