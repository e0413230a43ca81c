"""The OpenAI-compatible server: the openai client against a live server on the tiny model, raw HTTP for errors."""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import typer
import uvicorn
from openai import OpenAI
from rich.console import Console

from offload.cli.serve import run_server
from offload.engine.engine import Engine
from offload.planner.plan import RuntimeConfig
from offload.engine.generate import GenerationResult
from offload.engine.reasoning import AssistantOutput, ToolCall
from offload.engine.sampling import SamplingParams
from offload.planner.profile import detect_profile
from offload.server import responses
from offload.server.app import create_app
from offload.server.connections import guarded_protocol
from offload.server.scheduler import QueueFull, Scheduler

SYSTEM = "You are Kimi, an AI assistant created by Moonshot AI."
QUESTION = "Which one is bigger, 9.11 or 9.9? Think carefully."
SEED_MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]


class Served:
    """A uvicorn server on a free local port, in a background thread."""

    def __init__(self, app: Any, **protocol: Any) -> None:
        """`protocol`: guarded_protocol's read_timeout and max_connections (the serve command's protocol)."""
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, http=guarded_protocol(**protocol), log_config=None, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture(scope="module")
def engine(tiny_k25: Path) -> Iterator[Engine]:
    with Engine(tiny_k25, RuntimeConfig(context=4096, dtype="float32"), detect_profile(probe=False)) as e:
        yield e


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[Served]:
    with Served(create_app(engine, "tiny-k25", max_queue=8)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Served) -> OpenAI:
    return OpenAI(api_key="unused", base_url=f"{server.url}/v1", max_retries=0, timeout=60)


def greedy_chat(client: OpenAI, content: str, max_tokens: int = 12, **extra: Any) -> Any:
    return client.chat.completions.create(
        model="kimi-k2.5",
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        seed=1,
        **extra,
    )


def reasoning_of(message: Any) -> str | None:
    return (message.model_extra or {}).get("reasoning_content")


def split(message: Any) -> tuple[str, str]:
    return reasoning_of(message) or "", message.content or ""


def stream_text(client: OpenAI, content: str, max_tokens: int = 12) -> tuple[str, str, list[Any]]:
    chunks = list(
        client.chat.completions.create(
            model="kimi-k2.5",
            messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens,
            temperature=0,
            seed=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(reasoning_of(d) or "" for d in deltas)
    return reasoning, "".join(d.content or "" for d in deltas), chunks


def assert_error(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
    for w in words:
        assert w in err["message"], err["message"]
    return err


# ---- the seed's example, thinking, streaming, usage ---------------------------------------------------------------


def test_seed_example_runs_unchanged(server: Served) -> None:
    client = OpenAI(api_key="...", base_url=f"{server.url}/v1")
    response = client.chat.completions.create(
        model="kimi-k2.5", messages=SEED_MESSAGES, max_tokens=64, temperature=1.0, top_p=0.95
    )
    message = response.choices[0].message
    print(reasoning_of(message))  # thinking is on by default
    print(message.content)
    assert isinstance(reasoning_of(message) or "", str) and isinstance(message.content or "", str)
    assert reasoning_of(message) or message.content or response.choices[0].finish_reason == "stop"
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.model == "kimi-k2.5" and response.id.startswith("chatcmpl-")
    assert response.usage is not None and 0 < response.usage.completion_tokens <= 64


def test_thinking_off_gives_no_reasoning(client: OpenAI) -> None:
    r = greedy_chat(client, QUESTION, extra_body={"chat_template_kwargs": {"thinking": False}})
    assert not reasoning_of(r.choices[0].message)
    on = greedy_chat(client, QUESTION)
    assert reasoning_of(on.choices[0].message)


def test_usage_and_text_equal_the_engine(client: OpenAI, engine: Engine) -> None:
    r = greedy_chat(client, QUESTION, max_tokens=10)
    turn = engine.chat([{"role": "user", "content": QUESTION}], sampling=SamplingParams(temperature=0), max_tokens=10)
    out = turn.run()  # the server is idle between tests: the engine is free
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(turn.prompt_ids) == turn.result.prompt_tokens
    assert r.usage.completion_tokens == len(turn.result.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert split(r.choices[0].message) == (out.reasoning, out.content)


def test_stream_adds_up_to_the_answer(client: OpenAI, server: Served) -> None:
    whole = greedy_chat(client, QUESTION, max_tokens=16)
    reasoning, content, chunks = stream_text(client, QUESTION, max_tokens=16)
    assert (reasoning, content) == split(whole.choices[0].message)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert with_choices[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # include_usage: the last chunk
    assert len({c.id for c in chunks}) == 1

    body = {"model": "tiny-k25", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and all(e.startswith("data: ") for e in events[:-1])
    assert all("usage" not in json.loads(e[6:]) for e in events[:-2])  # no include_usage: no usage field


def test_concurrent_streams_get_their_own_answers(client: OpenAI) -> None:
    prompts = ["Hello there", "What is MLA?", "Count to three", "Tell me a story"]
    expected = [stream_text(client, p)[:2] for p in prompts]  # one after another
    got: dict[int, tuple[str, str]] = {}

    def ask(i: int) -> None:
        got[i] = stream_text(client, prompts[i])[:2]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got.get(i) for i in range(len(prompts))] == expected


# ---- clients that go away -----------------------------------------------------------------------------------------


def _long_body(**extra: Any) -> dict[str, Any]:
    # greedy on this prompt runs for hundreds of tokens on the tiny model before a stop token
    return {
        "model": "kimi-k2.5",
        "messages": [{"role": "user", "content": "Which one is bigger?"}],
        "max_tokens": 3000,
        "temperature": 0,
        **extra,
    }


def _cancelled(caplog: pytest.LogCaptureFixture, request_id: str) -> bool:
    return any(request_id in r.getMessage() and "cancelled after" in r.getMessage() for r in caplog.records)


def test_disconnect_mid_stream_cancels_and_frees(
    server: Served, client: OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="offload.server")
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=_long_body(stream=True), timeout=60) as r:
        lines = r.iter_lines()
        first = json.loads(next(line for line in lines if line)[6:])
        for _ in range(6):  # a few tokens: the generation is running
            next(lines)
    r2 = greedy_chat(client, "Hi", max_tokens=3)  # queued behind the cancelled one, which stops at once
    assert r2.choices[0].finish_reason in ("stop", "length")
    assert _cancelled(caplog, first["id"])
    _wait_for(lambda: httpx.get(f"{server.url}/health").json()["running"] == 0, "the worker is still busy")


def test_disconnect_while_waiting_for_a_plain_answer(
    server: Served, client: OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="offload.server")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=_long_body(), timeout=httpx.Timeout(60, read=0.5))
    r2 = greedy_chat(client, "Hi", max_tokens=3)
    assert r2.choices[0].finish_reason in ("stop", "length")
    # cancelled if it had started within the 0.5 s, withdrawn from the queue if not (a loaded machine)
    assert any("cancelled after" in r.getMessage() or "withdrawn" in r.getMessage() for r in caplog.records)


# ---- completions, models, health, tools ---------------------------------------------------------------------------


def test_completions_text_ids_and_stream(server: Served, client: OpenAI, engine: Engine) -> None:
    text = client.completions.create(model="tiny-k25", prompt="The capital of", max_tokens=8, temperature=0)
    ids = engine.tokenizer.encode("The capital of")
    by_ids = client.completions.create(model="tiny-k25", prompt=ids, max_tokens=8, temperature=0)
    assert text.choices[0].text == by_ids.choices[0].text and text.object == "text_completion"
    assert text.usage is not None and text.usage.prompt_tokens == len(ids)
    assert text.usage.completion_tokens == 8 or text.choices[0].finish_reason == "stop"
    chunks = list(
        client.completions.create(model="tiny-k25", prompt="The capital of", max_tokens=8, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == text.choices[0].text
    assert chunks[-1].choices[0].finish_reason == text.choices[0].finish_reason
    default = httpx.post(f"{server.url}/v1/completions", json={"model": "kimi-k2.5", "prompt": "a", "temperature": 0})
    assert default.json()["usage"]["completion_tokens"] <= 16  # OpenAI's default max_tokens


def test_models_and_health(server: Served, client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny-k25", "kimi-k2.5"]
    assert client.models.retrieve("kimi-k2.5").id == "kimi-k2.5"
    assert_error(httpx.get(f"{server.url}/v1/models/gpt-4"), 404, "gpt-4")
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-k25" and health["max_queue"] == 8
    client.completions.create(model="kimi-k2.5", prompt="a", max_tokens=2, temperature=0)
    metrics = httpx.get(f"{server.url}/metrics").json()
    assert metrics["model"] == "tiny-k25" and metrics["experts"]["device"] == "cpu"
    assert metrics["experts"]["decode"]["tokens"] >= 1 and metrics["experts"]["prefill"]["from_ram"] > 0


def test_tools_and_tool_messages_are_accepted(client: OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "functions.get_weather:0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "18 C, sunny"},
    ]
    r = client.chat.completions.create(model="kimi-k2.5", messages=messages, tools=tools, max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_tool_calls_in_the_openai_shape() -> None:
    calls = (
        ToolCall("functions.get_weather:0", "get_weather", {"city": "Paris"}, ' {"city": "Paris"} '),
        ToolCall("functions.lookup:1", "lookup", None, "{not json"),
    )
    output = AssistantOutput("I should check.", "", calls, True)
    result = GenerationResult(token_ids=[1, 2, 3], text="...", finish_reason="stop", prompt_tokens=7)
    env = responses.Envelope("chatcmpl-x", 0, "kimi-k2.5", "chat.completion")
    body = responses.chat_completion(env, output, result)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "reasoning_content": "I should check.",
        "tool_calls": [
            {
                "id": "functions.get_weather:0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {"id": "functions.lookup:1", "type": "function", "function": {"name": "lookup", "arguments": "{not json"}},
        ],
    }
    assert body["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert [c["index"] for c in responses.tool_calls(calls, streaming=True)] == [0, 1]
    cut = GenerationResult(token_ids=[1], finish_reason="length", prompt_tokens=1)
    assert responses.finish_reason(cut, output) == "length"


# ---- errors: the OpenAI shape and status for each -----------------------------------------------------------------

CHAT = {"model": "kimi-k2.5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({**CHAT, "temperature": "hot"}, 400, "temperature", ["number"]),
        ({**CHAT, "temperature": 3}, 400, "temperature", ["temperature"]),
        ({**CHAT, "top_p": 0}, 400, "top_p", ["top_p"]),
        ({**CHAT, "max_tokens": 1.5}, 400, "max_tokens", ["integer"]),
        ({**CHAT, "max_tokens": 0}, 400, "max_tokens", ["at least 1"]),
        ({**CHAT, "stream": "yes"}, 400, "stream", ["boolean"]),
        ({**CHAT, "stop": 5}, 400, "stop", ["stop"]),
        ({**CHAT, "stop": ["x"] * 17}, 400, "stop", ["at most 16"]),
        ({**CHAT, "stream_options": {"include_usage": True}}, 400, "stream_options", ["only allowed when"]),
        ({**CHAT, "stop": ["x" * 257]}, 400, "stop", ["256 characters"]),
        ({**CHAT, "seed": -1}, 400, "seed", ["seed"]),
        ({**CHAT, "n": 2}, 400, "n", ["one choice"]),
        ({**CHAT, "tools": [{"type": "function"}]}, 400, "tools", ["tools[0]"]),
        ({**CHAT, "chat_template_kwargs": {"thinking": "no"}}, 400, "chat_template_kwargs", ["boolean"]),
        ({**CHAT, "messages": "hi"}, 400, "messages", ["array"]),
        ({**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages", ["robot"]),
        ({**CHAT, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages", ["tool_call_id"]),
        ({"model": "kimi-k2.5"}, 400, "messages", ["required"]),
        ({"messages": CHAT["messages"]}, 400, "model", ["model"]),
        ({**CHAT, "model": "gpt-4o"}, 404, "model", ["gpt-4o", "tiny-k25"]),
        ({**CHAT, "logit_bias": {"5": 10}}, 400, "logit_bias", ["not supported"]),  # once silently ignored
        ({**CHAT, "repetition_penalty": 1.3}, 400, "repetition_penalty", ["not supported"]),
        ({**CHAT, "parallel_tool_calls": False}, 400, "parallel_tool_calls", ["several tools"]),
        (
            {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
            400,
            "tools",
            ["parameters must be a JSON Schema object"],
        ),
        ({**CHAT, "max_tokens": 4090}, 400, "messages", ["4096", "4090"]),
    ],
)
def test_chat_request_errors(server: Served, body: dict[str, Any], status: int, param: str, words: list[str]) -> None:
    err = assert_error(httpx.post(f"{server.url}/v1/chat/completions", json=body), status, *words)
    assert err["param"] == param


def test_a_lone_surrogate_in_the_model_name_is_still_a_404(server: Served) -> None:
    """`\\ud800` is valid JSON text but not UTF-8: echoing it in the 404 once failed to encode (a 500)."""
    body = json.dumps({**CHAT, "model": "x\ud800"}).encode()  # ensure_ascii: the escape travels as text
    r = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    err = assert_error(r, 404, "x\ud800")
    assert err["code"] == "model_not_found" and r.content.isascii()


def test_tiny_temperature_and_top_p_decode_greedily(server: Served) -> None:
    """temperature 1e-300 and top_p 5e-324 once divided the logits to NaN (a 500); now greedy, as temperature 0."""
    greedy = httpx.post(f"{server.url}/v1/chat/completions", json={**CHAT, "temperature": 0, "max_tokens": 4})
    for extra in ({"temperature": 1e-300}, {"temperature": 1.0, "top_p": 5e-324}):
        r = httpx.post(f"{server.url}/v1/chat/completions", json={**CHAT, **extra, "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]


def test_context_overflow_names_both_numbers(server: Served, engine: Engine) -> None:
    body = {**CHAT, "max_tokens": 4000, "messages": [{"role": "user", "content": "word " * 200}]}
    prompt = len(engine.chat_format.encode(body["messages"]))
    err = assert_error(httpx.post(f"{server.url}/v1/chat/completions", json=body), 400, str(prompt), "4000", "4096")
    assert err["code"] == "context_length_exceeded"
    long = {**CHAT, "max_tokens": None, "messages": [{"role": "user", "content": "word " * 5000}]}
    assert_error(httpx.post(f"{server.url}/v1/chat/completions", json=long), 400, "4096", "prompt has")
    ids = {"model": "kimi-k2.5", "prompt": [1] * 4090, "max_tokens": 10}
    assert_error(httpx.post(f"{server.url}/v1/completions", json=ids), 400, "4090", "4096")


def test_malformed_bodies(server: Served) -> None:
    url = f"{server.url}/v1/chat/completions"
    headers = {"content-type": "application/json"}
    assert_error(httpx.post(url, content=b'{"model": "kimi-k2.5", ', headers=headers), 400, "not valid JSON")
    assert_error(httpx.post(url, content=b"[1, 2]", headers=headers), 400, "JSON object")
    assert_error(httpx.post(url, content=b'{"temperature": NaN}', headers=headers), 400, "NaN")
    assert_error(httpx.post(url, content=b"\xff\xfe", headers=headers), 400, "not valid JSON")
    completions = f"{server.url}/v1/completions"
    assert_error(httpx.post(completions, json={"model": "kimi-k2.5", "prompt": ""}), 400, "prompt")
    assert_error(httpx.post(completions, json={"model": "kimi-k2.5", "prompt": ["a", "b"]}), 400, "one per request")
    assert_error(httpx.post(completions, json={"model": "kimi-k2.5", "prompt": [10**9]}), 400, "vocabulary")
    assert_error(httpx.post(completions, json={"model": "kimi-k2.5", "prompt": "a", "echo": True}), 400, "echo")
    assert_error(httpx.get(f"{server.url}/v1/nothing"), 404)
    assert_error(httpx.get(url), 405)
    deep = b'{"model": "kimi-k2.5", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_error(httpx.post(url, content=deep, headers=headers), 400, "nests too deeply")


def test_raw_completion_prompts_may_spell_special_tokens(server: Served, engine: Engine) -> None:
    prompt = "<|im_user|>user<|im_middle|>Hi<|im_end|><|im_assistant|>assistant<|im_middle|>"
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "kimi-k2.5", "prompt": prompt, "max_tokens": 2})
    assert r.status_code == 200, r.text
    specials = len(engine.tokenizer.encode_with_specials(prompt))
    assert r.json()["usage"]["prompt_tokens"] == specials < len(engine.tokenizer.encode(prompt))


def test_developer_role_is_the_system_role(client: OpenAI) -> None:
    dev = client.chat.completions.create(
        model="kimi-k2.5",
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
    )
    sys_ = client.chat.completions.create(
        model="kimi-k2.5",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
    )
    assert dev.usage is not None and sys_.usage is not None
    assert dev.usage.prompt_tokens == sys_.usage.prompt_tokens
    # 4 greedy tokens all go to the reasoning (thinking is on): compare both parts, and not two empty answers
    assert split(dev.choices[0].message) == split(sys_.choices[0].message) != ("", "")


def test_body_too_large(server: Served) -> None:
    url = f"{server.url}/v1/chat/completions"
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * (5 << 20)}]}).encode()
    err = assert_error(httpx.post(url, content=big, headers={"content-type": "application/json"}), 413, "4,194,304")
    assert err["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for i in range(0, len(big), 1 << 16):
            yield big[i : i + (1 << 16)]

    assert_error(httpx.post(url, content=chunked(), headers={"content-type": "application/json"}), 413)


def test_api_key(engine: Engine) -> None:
    with Served(create_app(engine, "tiny-k25", api_key="sekret")) as s:
        err = assert_error(httpx.get(f"{s.url}/v1/models"), 401, "Authorization: Bearer")
        assert err["type"] == "authentication_error"
        assert_error(httpx.get(f"{s.url}/v1/models", headers={"Authorization": "Bearer nope"}), 401, "incorrect")
        assert_error(httpx.post(f"{s.url}/v1/chat/completions", json=CHAT), 401)
        assert httpx.get(f"{s.url}/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200
        assert httpx.get(f"{s.url}/health").status_code == 200  # stays open
        assert_error(httpx.get(f"{s.url}/metrics"), 401)
        models = OpenAI(api_key="sekret", base_url=f"{s.url}/v1", max_retries=0).models.list()
        assert [m.id for m in models] == ["tiny-k25", "kimi-k2.5"]


# ---- the queue: a fake engine whose generation waits to be released -----------------------------------------------


class HeldTurn:
    """Generates one piece when released; records that it ran and whether it was cancelled."""

    def __init__(self, release: threading.Event, started: list[HeldTurn]) -> None:
        self.prompt_ids = [1, 2, 3]
        self.release, self.started, self.cancelled = release, started, threading.Event()
        self.result = GenerationResult(prompt_tokens=3)
        self.output = AssistantOutput("", "", (), True)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        self.started.append(self)
        while not (self.release.wait(0.01) or self.cancelled.is_set()):
            pass
        self.result.token_ids, self.result.finish_reason = [7], "cancelled" if self.cancelled.is_set() else "stop"
        self.output = AssistantOutput("", "done", (), True)
        yield "", "done"

    def cancel(self) -> None:
        self.cancelled.set()


class HeldEngine:
    max_context = 4096

    class tokenizer:  # noqa: N801 - stands in for engine.tokenizer: what the server's size bound reads
        max_token_bytes = 16

    class chat_format:  # noqa: N801 - stands in for engine.chat_format: the server renders once, then checks
        @staticmethod
        def encode(messages: Any, tools: Any = None, thinking: bool = True) -> list[int]:
            return [1, 2, 3]

    def __init__(self) -> None:
        self.release = threading.Event()
        self.turns: list[HeldTurn] = []
        self.started: list[HeldTurn] = []

    def chat(self, messages: Any, **kwargs: Any) -> HeldTurn:
        self.turns.append(HeldTurn(self.release, self.started))
        return self.turns[-1]


def _wait_for(cond: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_queue_full_is_503_and_a_gone_client_frees_its_place() -> None:
    fake = HeldEngine()
    with Served(create_app(fake, "held", max_queue=1)) as s:
        url, body = f"{s.url}/v1/chat/completions", {**CHAT, "stream": True}
        with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b, httpx.Client(timeout=30) as c:
            first = a.send(a.build_request("POST", url, json=body), stream=True)
            _wait_for(lambda: len(fake.started) == 1, "the first request did not start")
            second = b.send(b.build_request("POST", url, json=body), stream=True)  # waits
            _wait_for(lambda: httpx.get(f"{s.url}/health").json()["waiting"] == 1, "the second did not queue")
            err = assert_error(c.post(url, json=CHAT), 503, "busy")
            assert err["type"] == "server_error" and err["code"] == "queue_full"
            second.close()  # a waiting client goes away: its place is free at once
            _wait_for(lambda: httpx.get(f"{s.url}/health").json()["waiting"] == 0, "the place was not freed")
            third = c.send(c.build_request("POST", url, json=body), stream=True)
            _wait_for(lambda: httpx.get(f"{s.url}/health").json()["waiting"] == 1, "the third did not queue")
            fake.release.set()
            for r in (first, third):
                text = r.read().decode()
                assert '"content": "done"' in text and text.endswith("data: [DONE]\n\n")
        assert len(fake.started) == 2 and fake.turns[1] not in fake.started  # the withdrawn one never ran


def test_scheduler_runs_in_order_and_bounds_the_wait() -> None:
    done: list[int] = []
    gate = threading.Event()

    class Job:
        def __init__(self, i: int) -> None:
            self.i, self.cancelled = i, False

        def run(self, delivered: Any) -> None:
            gate.wait(10)
            done.append(self.i)

        def cancel(self) -> None:
            self.cancelled = True

    sched = Scheduler(max_queue=2)
    jobs = [Job(i) for i in range(4)]
    sched.start()
    sched.submit(jobs[0])
    _wait_for(lambda: sched.running == 1, "the first job did not start")
    sched.submit(jobs[1])
    sched.submit(jobs[2])
    with pytest.raises(QueueFull):
        sched.submit(jobs[3])
    sched.withdraw(jobs[1])
    sched.submit(jobs[3])
    gate.set()
    _wait_for(lambda: len(done) == 3, "the jobs did not finish")
    sched.close()
    assert done == [0, 2, 3] and jobs[1].cancelled and not jobs[2].cancelled


# ---- the command ---------------------------------------------------------------------------------------------------


def test_serve_command(tiny_k25: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "offload.cli",
        "serve",
        "--model",
        str(tiny_k25),
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--context",
        "2048",
        "--api-key",
        "k",
        "--model-name",
        "tiny",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.ConnectError:
                time.sleep(0.1)
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer k"}).json()
        assert [m["id"] for m in models["data"]] == ["tiny", "kimi-k2.5"] and models["data"][0]["max_model_len"] == 2048
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert f"serving tiny (also as kimi-k2.5) at http://127.0.0.1:{port}/v1" in stderr  # the path has "tiny" too


def test_serve_refuses_a_taken_port_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import offload.cli.serve

    messages: list[str] = []

    def fail(msg: str) -> typer.Exit:
        messages.append(msg)
        return typer.Exit(2)

    monkeypatch.setattr(offload.cli.serve, "fail", fail)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(typer.Exit):  # the folder does not even exist: the port is checked first
            run_server(
                model_dir=tmp_path / "none",
                host="127.0.0.1",
                port=port,
                api_key=None,
                model_name=None,
                profile="auto",
                max_queue=4,
                runtime=RuntimeConfig(context=2048, dtype="float32"),
            )
    assert messages and f"cannot listen on 127.0.0.1:{port}" in messages[0]


def test_a_client_hanging_up_mid_body_logs_one_line(server: Served, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 19, item 6: Starlette's ClientDisconnect once escaped as a ~45-line traceback per connection."""
    import socket as socketlib
    import time

    caplog.set_level(logging.INFO)
    host, port = server.url.removeprefix("http://").split(":")
    with socketlib.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"model": "kimi-k2.5", '
        )
        time.sleep(0.2)
    deadline = time.time() + 5
    while time.time() < deadline and not any("hung up after" in r.getMessage() for r in caplog.records):
        time.sleep(0.05)
    assert any("hung up after 23 bytes" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records if r.exc_info]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_huge_prompt_is_refused_before_rendering(server: Served, engine: Engine) -> None:
    """Issue 19, item 3: a prompt far over the context is refused by its size (bytes / the longest token), before
    the template renders it and the tokenizer encodes it (seconds of CPU for a 4 MB prompt)."""
    longest = engine.tokenizer.max_token_bytes
    text = "word " * (engine.max_context * longest // 5 + 10)
    body = {**CHAT, "messages": [{"role": "user", "content": text}]}
    err = assert_error(httpx.post(f"{server.url}/v1/chat/completions", json=body), 400, "bytes of text", "at least")
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    raw = {"model": "kimi-k2.5", "prompt": text, "max_tokens": 4}
    err = assert_error(httpx.post(f"{server.url}/v1/completions", json=raw), 400, "bytes of text")
    assert err["param"] == "prompt"
    short = {**CHAT, "messages": [{"role": "user", "content": "word " * 200}], "max_tokens": 4}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=short).status_code == 200  # the bound is a floor


def test_an_over_long_prompt_is_rendered_once(server: Served, engine: Engine, monkeypatch) -> None:
    """Issue 19, item 3: a prompt over the context that passes the size bound was encoded a second time for the
    error message; now the one rendering's ids name the excess."""
    renders: list[int] = []
    encode = engine.chat_format.encode

    def counted(*args: Any, **kwargs: Any) -> list[int]:
        ids = encode(*args, **kwargs)
        renders.append(len(ids))
        return ids

    monkeypatch.setattr(engine.chat_format, "encode", counted)
    text = "word " * (engine.max_context + 50)  # a token or more a word: over the context, under the byte bound
    body = {**CHAT, "messages": [{"role": "user", "content": text}]}
    err = assert_error(httpx.post(f"{server.url}/v1/chat/completions", json=body), 400, "context holds")
    assert err["code"] == "context_length_exceeded" and len(renders) == 1
    assert f"needs {renders[0]} prompt tokens" in err["message"]
    renders.clear()
    short = [{"role": "user", "content": "word " * 100}]  # 504 bytes of text: under 40 tokens by the size bound
    assert 504 // engine.tokenizer.max_token_bytes < 40
    body = {**CHAT, "messages": short, "max_tokens": engine.max_context - 40}
    err = assert_error(httpx.post(f"{server.url}/v1/chat/completions", json=body), 400, "max_tokens")
    assert len(renders) == 1 and f"{renders[0]} prompt tokens" in err["message"]  # past the bound: rendered once
    body["max_tokens"] = engine.max_context
    err = assert_error(httpx.post(f"{server.url}/v1/chat/completions", json=body), 400, "or lower max_tokens")
    assert len(renders) == 1 and f"+ max_tokens {engine.max_context:,}" in err["message"]  # refused unrendered


def test_a_delivered_job_no_longer_holds_the_only_place() -> None:
    """Issue 19, item 2: the finished job counted as running after its [DONE] was sent (until the generator's own
    cleanup returned), so a client resubmitting at once got 503 queue_full about 1 time in 6 with --max-queue 0."""
    from offload.engine.generate import GenerationResult
    from offload.server.jobs import EngineJob, Finished, Piece

    delivered_then, order, cleanup = threading.Event(), [], threading.Event()

    class Recorder:
        def put(self, event: Any) -> None:
            order.append(type(event).__name__)
            if isinstance(event, Finished):
                delivered_then.set()

    def events() -> Any:
        yield Piece("", "hi")
        yield Finished(GenerationResult(), None)
        cleanup.wait(10)  # the generation's bookkeeping after its last event, while the client already has [DONE]

    sched = Scheduler(max_queue=0)
    sched.start()
    first = EngineJob("first", events(), lambda: None, Recorder())  # type: ignore[arg-type]
    sched.submit(first)
    assert delivered_then.wait(10) and order == ["Piece", "Finished"]
    assert not sched.full and sched.running == 0  # the client's next request is accepted now
    second = EngineJob("second", iter(()), lambda: None, Recorder())  # type: ignore[arg-type]
    sched.submit(second)  # raised QueueFull before the fix
    cleanup.set()
    sched.close()


def test_without_a_key_other_hosts_and_origins_are_refused(engine: Engine) -> None:
    """Issue 19, item 8: with no API key, any web page could make the server generate (a text/plain "simple" POST)
    and, by DNS rebinding, read the answer. Now Host and Origin must be this server, and bodies application/json."""
    with Served(create_app(engine, "tiny-k25")) as s:
        url = f"{s.url}/v1/chat/completions"
        port = s.url.rsplit(":", 1)[1]
        ok = httpx.post(url, json={**CHAT, "max_tokens": 1}, headers={"origin": f"http://localhost:{port}"})
        assert ok.status_code == 200, ok.text
        err = assert_error(httpx.post(url, json=CHAT, headers={"host": f"evil.example:{port}"}), 403, "DNS rebinding")
        assert err["code"] == "host_not_allowed"
        assert_error(httpx.get(f"{s.url}/v1/models", headers={"host": "evil.example"}), 403, "evil.example")
        err = assert_error(
            httpx.post(url, json=CHAT, headers={"origin": "https://evil.example"}), 403, "--allow-origin"
        )
        assert err["code"] == "origin_not_allowed"
        text = json.dumps({**CHAT, "max_tokens": 1})
        plain = httpx.post(url, content=text, headers={"content-type": "text/plain"})
        assert_error(plain, 415, "application/json")
    with Served(create_app(engine, "tiny-k25", api_key="sekret")) as s:  # a key protects it: no Host check
        r = httpx.get(f"{s.url}/v1/models", headers={"host": "my.lan", "authorization": "Bearer sekret"})
        assert r.status_code == 200


def test_allow_origin_lets_a_browser_ui_in_with_cors(engine: Engine) -> None:
    ui = "http://localhost:3000"
    with Served(create_app(engine, "tiny-k25", allow_origins=(ui, "https://ui.example"))) as s:
        url = f"{s.url}/v1/chat/completions"
        pre = httpx.options(
            url,
            headers={
                "origin": "https://ui.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://ui.example"
        r = httpx.post(url, json={**CHAT, "max_tokens": 1}, headers={"origin": "https://ui.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ui.example"
        assert_error(httpx.post(url, json=CHAT, headers={"origin": "https://other.example"}), 403)
