"""OpenAI response objects built from the engine's results: completions, stream chunks, usage, tool calls."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from offload.engine.generate import GenerationResult
from offload.engine.reasoning import AssistantOutput, ToolCall

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Envelope:
    """What every object of one response repeats: its id, creation time and the model name the client used."""

    id: str
    created: int
    model: str
    object: str  # "chat.completion.chunk", "text_completion", ...

    @classmethod
    def new(cls, prefix: str, model: str, object: str) -> Envelope:
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model, object)

    def wrap(self, choices: list[Json], **extra: Any) -> Json:
        head = {"id": self.id, "object": self.object, "created": self.created, "model": self.model}
        return {**head, "choices": choices, **extra}


def usage(result: GenerationResult) -> Json:
    """Token counts as the engine made them: the prompt (with the part reused from cached sequences, OpenAI's
    prompt_tokens_details.cached_tokens), and every generated id (a stop token included)."""
    n = len(result.token_ids)
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": n,
        "total_tokens": result.prompt_tokens + n,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


def finish_reason(result: GenerationResult, output: AssistantOutput | None = None) -> str:
    """OpenAI's reason: a turn that ends after asking for tools is "tool_calls"; a cancelled one (the client is
    gone, or the server stops) reads "stop"."""
    if output is not None and output.tool_calls and result.finish_reason != "length":
        return "tool_calls"
    return "length" if result.finish_reason == "length" else "stop"


def tool_calls(calls: tuple[ToolCall, ...], streaming: bool = False) -> list[Json]:
    """OpenAI's tool_calls list. Arguments are the JSON text the model wrote (invalid JSON too, for the client to
    report, as OpenAI does); Kimi's ids (functions.NAME:IDX) are kept: the chat format renders results by them."""
    out = []
    for k, c in enumerate(calls):
        fn = {"name": c.name, "arguments": c.raw_arguments.strip()}
        call: Json = {"id": c.id, "type": "function", "function": fn}
        out.append({"index": k, **call} if streaming else call)
    return out


def chat_completion(env: Envelope, output: AssistantOutput, result: GenerationResult) -> Json:
    message: Json = {
        "role": "assistant",
        "content": output.content if output.content or not output.tool_calls else None,
        "reasoning_content": output.reasoning or None,
    }
    if output.tool_calls:
        message["tool_calls"] = tool_calls(output.tool_calls)
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(result, output)}
    return env.wrap([choice], usage=usage(result))


def chat_chunk(env: Envelope, delta: Json, finish: str | None = None, include_usage: bool = False) -> Json:
    """One stream chunk; with include_usage every chunk carries `usage: null` but the last (see usage_chunk)."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return env.wrap([choice], **({"usage": None} if include_usage else {}))


def usage_chunk(env: Envelope, result: GenerationResult) -> Json:
    """The extra last chunk of a stream with stream_options.include_usage: no choices, the usage."""
    return env.wrap([], usage=usage(result))


def completion(env: Envelope, text: str, result: GenerationResult) -> Json:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(result)}
    return env.wrap([choice], usage=usage(result))


def completion_chunk(env: Envelope, text: str, finish: str | None = None, include_usage: bool = False) -> Json:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return env.wrap([choice], **({"usage": None} if include_usage else {}))


def model_list(names: list[str], created: int, max_context: int) -> Json:
    return {"object": "list", "data": [model_card(n, created, max_context) for n in names]}


def model_card(name: str, created: int, max_context: int) -> Json:
    return {"id": name, "object": "model", "created": created, "owned_by": "kimi-offload", "max_model_len": max_context}
