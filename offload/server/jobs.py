"""A request's generation as a scheduler job: run on the engine thread, its events relayed to the request's loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from offload.engine.chat import ChatTurn
from offload.engine.generate import Generation, GenerationResult
from offload.engine.reasoning import AssistantOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Piece:
    """New text: reasoning and answer for a chat turn; a completion's text is all `content`."""

    reasoning: str
    content: str


@dataclass(frozen=True, slots=True)
class Finished:
    result: GenerationResult
    output: AssistantOutput | None  # None for a completion


@dataclass(frozen=True, slots=True)
class Failed:
    error: Exception


@dataclass(frozen=True, slots=True)
class Stopped:
    """The server is shutting down: the generation was stopped, or never started."""


class ServerStopping(Exception):
    """A non-streamed request's job was stopped by the shutdown."""


Event = Piece | Finished | Failed | Stopped


class Relay:
    """Carries events from the engine thread to one request's event loop, in order."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def put(self, event: Event) -> None:
        """From any thread."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server stops and nobody listens
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def get(self) -> Event:
        return await self._queue.get()

    async def finished(self) -> Finished:
        """Wait for the end, skipping the pieces (non-streaming requests)."""
        while True:
            event = await self.get()
            if isinstance(event, Finished):
                return event
            if isinstance(event, Failed):
                raise RuntimeError("generation failed") from event.error
            if isinstance(event, Stopped):
                raise ServerStopping()


class EngineJob:
    """Iterates `events` on the engine thread and relays each; `cancel` stops the generation after its token."""

    def __init__(self, name: str, events: Iterator[Piece | Finished], cancel: Callable[[], None], relay: Relay) -> None:
        self.name = name
        self._events = events
        self._cancel = cancel
        self._cancelled = threading.Event()
        self._stopped = threading.Event()  # the client has been told; nothing more goes to it
        self.relay = relay

    def run(self, delivered: Callable[[], None] = lambda: None) -> None:
        if self._cancelled.is_set():
            return
        try:
            for event in self._events:
                if self._stopped.is_set():
                    log.info("%s: stopped by the shutdown", self.name)
                    return
                if isinstance(event, Finished):
                    delivered()  # before the client can see [DONE] and send its next request
                self.relay.put(event)
        except Exception as e:
            log.exception("%s: generation failed", self.name)
            delivered()
            self.relay.put(Failed(e))

    def cancel(self) -> None:
        self._cancelled.set()
        self._cancel()

    def stop(self) -> None:
        """Shutdown: cancel the generation and end the client's stream (or answer it 503) now."""
        if not self._stopped.is_set():
            self._stopped.set()
            self.cancel()
            self.relay.put(Stopped())


def chat_job(name: str, turn: ChatTurn, relay: Relay) -> EngineJob:
    def events() -> Iterator[Piece | Finished]:
        for reasoning, content in turn:
            yield Piece(reasoning, content)
        _log_end(name, turn.result)
        yield Finished(turn.result, turn.output)

    return EngineJob(name, events(), turn.cancel, relay)


def completion_job(name: str, gen: Generation, relay: Relay) -> EngineJob:
    def events() -> Iterator[Piece | Finished]:
        for text in gen:
            yield Piece("", text)
        _log_end(name, gen.result)
        yield Finished(gen.result, None)

    return EngineJob(name, events(), gen.cancel, relay)


def _log_end(name: str, r: GenerationResult) -> None:
    if not r.token_ids:  # cancelled during the prefill: no rate means anything
        log.info("%s: cancelled in the prefill of %d prompt tokens, after %.1f s", name, r.prompt_tokens, r.prefill_s)
        return
    log.info(
        "%s: %s after %d prompt + %d generated tokens (prefill %.1f tok/s, decode %.1f tok/s)",
        name,
        r.finish_reason,
        r.prompt_tokens,
        len(r.token_ids),
        r.prefill_tok_s,
        r.decode_tok_s,
    )
