"""The routes: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics; one engine, one scheduler."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from offload.engine.chat import ChatTurn
from offload.engine.chat_format import ChatFormatError
from offload.engine.engine import Engine, PromptError
from offload.engine.generate import Generation
from offload.server import errors, responses
from offload.server.connections import READ_TIMEOUT_S
from offload.server.guard import HostGuard
from offload.server.jobs import (
    EngineJob,
    Failed,
    Finished,
    Piece,
    Relay,
    ServerStopping,
    Stopped,
    chat_job,
    completion_job,
)
from offload.server.requests import ChatRequest, CompletionRequest, parse_chat, parse_completion, parse_json
from offload.server.scheduler import Closed, QueueFull, Scheduler
from offload.server.shutdown import Shutdown
from offload.server.streaming import EventStream, unless_disconnected

log = logging.getLogger(__name__)

ALIAS = "kimi-k2.5"  # the name Kimi's own examples use, accepted besides the served name
MAX_BODY_BYTES = 4 << 20
RENDERS = 2  # concurrent prompt renders: more would only slow each other and the running generation
CLIENT_GONE = 499  # nginx's status for a request whose client hung up; nobody receives it


def create_app(
    engine: Engine,
    model_name: str,
    api_key: str | None = None,
    max_queue: int = 16,
    max_body_bytes: int = MAX_BODY_BYTES,
    host: str = "127.0.0.1",
    allow_origins: Sequence[str] = (),
    shutdown: Shutdown | None = None,
    read_timeout: float = READ_TIMEOUT_S,
) -> ASGIApp:
    """An ASGI app serving `engine` under `model_name` (and ALIAS); the scheduler's thread lives with the app.
    Without `api_key`, HostGuard refuses other hosts' and origins' requests (offload/server/guard.py);
    `allow_origins` also enables CORS for those origins (a browser UI). When `shutdown` begins, every running and
    waiting generation stops at once (offload/server/shutdown.py). A body must arrive within `read_timeout` seconds
    (408 otherwise; the headers' deadline is the protocol's, offload/server/connections.py)."""
    scheduler = Scheduler(max_queue)
    if shutdown is not None:
        shutdown.on_begin(scheduler.stop_all)
    names = [model_name] + ([ALIAS] if model_name != ALIAS else [])
    created = int(time.time())

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise errors.unauthorized("no API key: send the header `Authorization: Bearer KEY`")
        if not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise errors.unauthorized("incorrect API key")

    async def read_json(request: Request) -> dict[str, Any]:
        check_key(request)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise errors.too_large(max_body_bytes)
        body = bytearray()
        try:
            with anyio.fail_after(read_timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > max_body_bytes:
                        raise errors.too_large(max_body_bytes)
        except TimeoutError:
            log.info("a request body was still incomplete after %g s (%d bytes): answered 408", read_timeout, len(body))
            raise errors.APIError(
                408, f"the request body did not arrive within {read_timeout:g} s", code="request_timeout"
            ) from None
        except ClientDisconnect:  # hung up mid-body: one log line, not Starlette's traceback
            log.info("a client hung up after %d bytes of its request body", len(body))
            raise errors.APIError(CLIENT_GONE, "the client hung up before the body ended", code="client_gone") from None
        return parse_json(bytes(body))

    def check_model(name: str) -> None:
        if name not in names:
            raise errors.model_not_found(name, names)

    def check_context(prompt_tokens: int, max_tokens: int | None, param: str) -> None:
        limit = engine.max_context
        if max_tokens is None and prompt_tokens >= limit:
            raise errors.bad_request(
                f"the prompt has {prompt_tokens} tokens and this model's context holds {limit}; shorten the {param}",
                param,
                "context_length_exceeded",
            )
        if max_tokens is not None and prompt_tokens + max_tokens > limit:
            raise errors.bad_request(
                f"this model's context holds {limit} tokens; this request needs {prompt_tokens} prompt tokens + "
                f"max_tokens {max_tokens} = {prompt_tokens + max_tokens}; shorten the {param} or lower max_tokens",
                param,
                "context_length_exceeded",
            )

    renders = threading.BoundedSemaphore(RENDERS)  # prompt renders and tokenizations at once (CPU-bound)

    def check_size(text_bytes: int, max_tokens: int | None, param: str) -> None:
        """Refuse, before rendering or tokenizing, a prompt that cannot fit: a text of n UTF-8 bytes is at least
        n / (the longest token's bytes) tokens."""
        least = text_bytes // engine.tokenizer.max_token_bytes
        if least + (max_tokens or 1) > engine.max_context:
            plus = f" + max_tokens {max_tokens:,}" if max_tokens else ""
            raise errors.bad_request(
                f"the {param} hold {text_bytes:,} bytes of text, at least {least:,} tokens{plus}, and this model's "
                f"context holds {engine.max_context:,}; shorten the {param}{' or lower max_tokens' if plus else ''}",
                param,
                "context_length_exceeded",
            )

    def prepare_chat(req: ChatRequest) -> ChatTurn:
        """The rendered prompt, checked against the context (on a thread: a long prompt takes a while). At most
        RENDERS run at once, each after a cheap size bound."""
        messages, tools = list(req.messages), None if req.tools is None else list(req.tools)
        check_size(_text_bytes(messages), req.max_tokens, "messages")
        with renders:
            return _render(req, messages, tools)

    def _render(req: ChatRequest, messages: list[Any], tools: list[Any] | None) -> ChatTurn:
        try:
            ids = engine.chat_format.encode(messages, tools, thinking=req.thinking)
        except ChatFormatError as e:
            raise errors.bad_request(str(e), "tools" if str(e).startswith("tools") else "messages") from None
        except RecursionError:
            raise errors.bad_request("the messages or tools nest too deeply to render", "messages") from None
        check_context(len(ids), req.max_tokens, "messages")  # the same ids, rendered once, name the excess
        options: dict[str, Any] = {"tools": tools, "thinking": req.thinking, "sampling": req.sampling, "stop": req.stop}
        return engine.chat(messages, max_tokens=req.max_tokens or engine.max_context, prompt_ids=ids, **options)

    def prepare_completion(req: CompletionRequest) -> Generation:
        # a raw prompt is the client's own rendering: its special-token text means the special tokens (as in vLLM)
        if isinstance(req.prompt, str):
            check_size(_text_bytes(req.prompt), req.max_tokens, "prompt")
            with renders:
                ids = engine.tokenizer.encode_prompt(req.prompt, True)
        else:
            ids = list(req.prompt)
        try:
            engine.check_prompt(ids)
        except PromptError as e:
            raise errors.bad_request(str(e), "prompt") from None
        check_context(len(ids), req.max_tokens, "prompt")
        return engine.generate(ids, req.sampling, req.max_tokens, req.stop)

    def busy() -> errors.APIError:
        log.warning("a request refused: the queue is full (%d waiting, --max-queue %d)", scheduler.waiting, max_queue)
        return errors.queue_full(max_queue)

    def check_room() -> None:
        """Before rendering a prompt that could not be queued anyway (submit checks again, under its lock)."""
        if scheduler.closed:
            raise errors.shutting_down()
        if scheduler.full:
            raise busy()

    def submit(job: EngineJob) -> None:
        try:
            scheduler.submit(job)
        except QueueFull:
            raise busy() from None
        except Closed:
            raise errors.shutting_down() from None

    async def answer(request: Request, job: EngineJob) -> Finished | None:
        """Wait for a non-streamed job; a client that hangs up first withdraws it."""
        try:
            return await unless_disconnected(job.relay.finished, request.receive)
        except ServerStopping:
            raise errors.shutting_down() from None
        finally:
            scheduler.withdraw(job)

    async def chat_completions(request: Request) -> Response:
        req = parse_chat(await read_json(request))
        check_model(req.model)
        check_room()
        turn = await run_in_threadpool(prepare_chat, req)
        kind = "chat.completion.chunk" if req.stream else "chat.completion"
        env = responses.Envelope.new("chatcmpl", req.model, kind)
        job = chat_job(env.id, turn, Relay())
        submit(job)
        if req.stream:
            return EventStream(chat_stream(env, job.relay, req.include_usage), lambda: scheduler.withdraw(job))
        done = await answer(request, job)
        if done is None or done.output is None:
            return Response(status_code=CLIENT_GONE)
        return JSONResponse(responses.chat_completion(env, done.output, done.result))

    async def completions(request: Request) -> Response:
        req = parse_completion(await read_json(request))
        check_model(req.model)
        check_room()
        gen = await run_in_threadpool(prepare_completion, req)
        env = responses.Envelope.new("cmpl", req.model, "text_completion")
        job = completion_job(env.id, gen, Relay())
        submit(job)
        if req.stream:
            return EventStream(completion_stream(env, job.relay, req.include_usage), lambda: scheduler.withdraw(job))
        done = await answer(request, job)
        if done is None:
            return Response(status_code=CLIENT_GONE)
        return JSONResponse(responses.completion(env, done.result.text, done.result))

    async def models(request: Request) -> Response:
        check_key(request)
        return JSONResponse(responses.model_list(names, created, engine.max_context))

    async def model(request: Request) -> Response:
        check_key(request)
        check_model(request.path_params["model"])
        return JSONResponse(responses.model_card(request.path_params["model"], created, engine.max_context))

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": model_name,
                "running": scheduler.running,
                "waiting": scheduler.waiting,
                "max_queue": max_queue,
            }
        )

    async def metrics(request: Request) -> Response:
        """The expert runtime's counters since the server started (the same object `generate --stats` prints)."""
        check_key(request)
        stats = await run_in_threadpool(engine.stats)
        kv = None if engine.prefix_cache is None else engine.prefix_cache.stats().to_dict()
        return JSONResponse({"model": model_name, "experts": stats.to_dict(), "prefix_cache": kv})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.close)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    handlers = {errors.APIError: errors.api_error, HTTPException: errors.http_exception, 500: errors.server_error}
    app: ASGIApp = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    if api_key is None:
        app = HostGuard(app, host, allow_origins)
    if allow_origins:
        app = CORSMiddleware(
            app, allow_origins=list(allow_origins), allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"]
        )
    return app


async def chat_stream(env: responses.Envelope, relay: Relay, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    """Chunks: the role, then reasoning_content / content deltas, tool calls, the finish reason, usage."""
    yield responses.chat_chunk(env, {"role": "assistant", "content": ""}, include_usage=include_usage)
    while True:
        event = await relay.get()
        if isinstance(event, Piece):
            delta = {"reasoning_content": event.reasoning} if event.reasoning else {}
            delta.update({"content": event.content} if event.content else {})
            yield responses.chat_chunk(env, delta, include_usage=include_usage)
        elif isinstance(event, Finished):
            assert event.output is not None
            if event.output.tool_calls:
                calls = responses.tool_calls(event.output.tool_calls, streaming=True)
                yield responses.chat_chunk(env, {"tool_calls": calls}, include_usage=include_usage)
            finish = responses.finish_reason(event.result, event.output)
            yield responses.chat_chunk(env, {}, finish, include_usage=include_usage)
            if include_usage:
                yield responses.usage_chunk(env, event.result)
            return
        else:
            yield _stream_error(event)
            return


async def completion_stream(
    env: responses.Envelope, relay: Relay, include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    while True:
        event = await relay.get()
        if isinstance(event, Piece):
            yield responses.completion_chunk(env, event.content, include_usage=include_usage)
        elif isinstance(event, Finished):
            finish = responses.finish_reason(event.result)
            yield responses.completion_chunk(env, "", finish, include_usage=include_usage)
            if include_usage:
                yield responses.usage_chunk(env, event.result)
            return
        else:
            yield _stream_error(event)
            return


def _stream_error(event: Failed | Stopped) -> dict[str, Any]:
    """A generation that failed or was stopped by the shutdown after the stream began: the error as one event (the
    status was already sent)."""
    if isinstance(event, Stopped):
        return errors.shutting_down().body()
    err = errors.APIError(500, f"generation failed: {type(event.error).__name__}; see the server log", "server_error")
    return err.body()


def _text_bytes(value: Any) -> int:
    """UTF-8 bytes of every string in a request's messages (contents, names, tool call arguments), recursively."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, dict):
        return sum(_text_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_text_bytes(v) for v in value)
    return 0
