"""Request bodies parsed and checked into frozen dataclasses; every problem is a 400 naming the field.

Fields this server does not know (user, metadata, store, ...) are ignored, as OpenAI clients send many. Known fields
whose values it cannot honour (n > 1, logprobs, penalties, JSON modes, a forced tool choice) are refused with a
message, never ignored: a client that asked for them would otherwise get something else than it thinks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from offload.engine.sampling import SamplingParams
from offload.server.errors import bad_request

# Kimi's advice for K2.5 (KIMI.md §5): temperature 1.0 with thinking, 0.6 without; top_p 0.95
THINKING_TEMPERATURE, INSTANT_TEMPERATURE, TOP_P = 1.0, 0.6, 0.95
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "seed")


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """POST /v1/chat/completions."""

    model: str
    messages: tuple[dict[str, Any], ...]  # checked in depth by the chat format when the prompt is rendered
    tools: tuple[dict[str, Any], ...] | None
    thinking: bool
    sampling: SamplingParams
    max_tokens: int | None  # None: up to the end of the context
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool  # stream_options.include_usage


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """POST /v1/completions: one prompt, as text or token ids."""

    model: str
    prompt: str | tuple[int, ...]
    sampling: SamplingParams
    max_tokens: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


MAX_STOPS, MAX_STOP_CHARS = 16, 256  # every stop string is searched after every token, on the shared engine thread


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (NaN and Infinity refused: they are not JSON)."""

    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad_request("the request body nests too deeply to parse") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object; got {_kind(body)}")
    return body


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    _refuse_unsupported(body)
    messages = body.get("messages")
    if messages is None:
        raise bad_request("`messages` is required: a list of {'role': ..., 'content': ...} objects", "messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise bad_request(f"`messages` must be a non-empty array of objects; got {_kind(messages)}", "messages")
    tools = _optional(body, "tools", list, "an array of tool objects")
    if tools is not None:
        for i, t in enumerate(tools):
            fn = t.get("function") if isinstance(t, dict) else None
            if not (
                isinstance(t, dict)
                and t.get("type") == "function"
                and isinstance(fn, dict)
                and isinstance(fn.get("name"), str)
                and fn["name"]
            ):
                raise bad_request(
                    f"tools[{i}] must be {{'type': 'function', 'function': {{'name': str, ...}}}}", "tools"
                )
            if not isinstance(fn.get("parameters", {}), dict):
                raise bad_request(
                    f"tools[{i}].function.parameters must be a JSON Schema object; got {_kind(fn['parameters'])}",
                    "tools",
                )
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "none"):
        raise bad_request(f"tool_choice {choice!r} is not supported; use 'auto' or 'none'", "tool_choice")
    kwargs = _optional(body, "chat_template_kwargs", dict, "an object") or {}
    thinking = kwargs.get("thinking", True)
    if not isinstance(thinking, bool):
        raise bad_request(
            f"chat_template_kwargs.thinking must be a boolean; got {_kind(thinking)}", "chat_template_kwargs"
        )
    max_tokens = _optional_int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens", 1)
    stream = _optional(body, "stream", bool, "a boolean") or False
    return ChatRequest(
        model=_model(body),
        messages=tuple(messages),
        tools=None if tools is None or choice == "none" else tuple(tools),
        thinking=thinking,
        sampling=_sampling(body, THINKING_TEMPERATURE if thinking else INSTANT_TEMPERATURE),
        max_tokens=max_tokens,
        stop=_stop(body),
        stream=stream,
        include_usage=_include_usage(body),
    )


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    _refuse_unsupported(body)
    for name, ok in (("echo", False), ("suffix", None), ("best_of", 1)):
        if body.get(name) not in (None, ok):
            raise bad_request(f"`{name}` is not supported by this server; leave it out", name)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        prompt = tuple(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        raise bad_request(f"`prompt` holds {len(prompt)} prompts; send one per request", "prompt")
    elif not isinstance(prompt, str) or not prompt:
        raise bad_request(f"`prompt` must be a non-empty string or array of token ids; got {_kind(prompt)}", "prompt")
    max_tokens = _optional_int(body, "max_tokens", 1)
    return CompletionRequest(
        model=_model(body),
        prompt=prompt,
        sampling=_sampling(body, 1.0),
        max_tokens=COMPLETION_MAX_TOKENS if max_tokens is None else max_tokens,
        stop=_stop(body),
        stream=_optional(body, "stream", bool, "a boolean") or False,
        include_usage=_include_usage(body),
    )


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise bad_request(f"n = {body['n']!r}: this server returns one choice per request; set n to 1", "n")
    for name in ("logprobs", "top_logprobs"):
        if body.get(name) not in (None, False, 0):
            raise bad_request(f"`{name}` is not supported by this server; leave it out", name)
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise bad_request(f"`{name}` is not supported by this server; leave it out or set it to 0", name)
    if body.get("logit_bias") not in (None, {}):
        raise bad_request("`logit_bias` is not supported by this server; leave it out", "logit_bias")
    if body.get("repetition_penalty") not in (None, 1, 1.0):
        raise bad_request(
            "`repetition_penalty` is not supported by this server; leave it out or set it to 1", "repetition_penalty"
        )
    if body.get("parallel_tool_calls") not in (None, True):
        raise bad_request(
            "parallel_tool_calls = false is not supported: the model may call several tools in one turn; leave it "
            "out or set it to true",
            "parallel_tool_calls",
        )
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad_request("response_format: only {'type': 'text'} is supported", "response_format")


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request(f"`model` must be the served model's name (a string); got {_kind(model)}", "model")
    return model


def _sampling(body: Mapping[str, Any], temperature: float) -> SamplingParams:
    values: dict[str, Any] = {"temperature": temperature, "top_p": TOP_P}
    for name in _SAMPLING_FIELDS:
        if body.get(name) is None:
            continue
        v = body[name]
        integral = name in ("top_k", "seed")
        if isinstance(v, bool) or not isinstance(v, int if integral else (int, float)):
            raise bad_request(f"`{name}` must be {'an integer' if integral else 'a number'}; got {_kind(v)}", name)
        values[name] = v
    if not 0 <= values["temperature"] <= 2:
        raise bad_request(f"temperature = {values['temperature']}; expected 0 <= temperature <= 2", "temperature")
    if values.get("top_k") == -1:  # vLLM's spelling of "no limit"
        values["top_k"] = 0
    try:
        return SamplingParams(**values)
    except ValueError as e:
        param = next((n for n in _SAMPLING_FIELDS if str(e).startswith(f"{n} ")), None)
        raise bad_request(str(e), param) from None


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_request(f"`stop` must be a non-empty string or an array of them; got {_kind(stop)}", "stop")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise bad_request(f"`stop` takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters", "stop")
    return tuple(stops)


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = _optional(body, "stream_options", dict, "an object") or {}
    if options and body.get("stream") is not True:  # as OpenAI answers
        raise bad_request("`stream_options` is only allowed when `stream` is true", "stream_options")
    value = options.get("include_usage", False)
    if not isinstance(value, bool):
        raise bad_request(f"stream_options.include_usage must be a boolean; got {_kind(value)}", "stream_options")
    return value


def _optional(body: Mapping[str, Any], name: str, kind: type, what: str) -> Any:
    v = body.get(name)
    if v is not None and (not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool)):
        raise bad_request(f"`{name}` must be {what}; got {_kind(v)}", name)
    return v


def _optional_int(body: Mapping[str, Any], name: str, least: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(f"`{name}` must be an integer; got {_kind(v)}", name)
    if v < least:
        raise bad_request(f"{name} = {v}; expected at least {least}", name)
    return v


def _kind(v: object) -> str:
    """A value's JSON type in words, with the value when it is short."""
    kinds = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    kind = "an empty array" if v == [] else kinds.get(type(v), type(v).__name__)
    short = json.dumps(v) if v is not None and not isinstance(v, (list, dict)) else ""
    return f"{kind} ({short[:40]})" if short else kind
