"""Issue 17 through the server: requests sharing a prompt start reuse its cache (OpenAI's cached_tokens), under a
byte budget, concurrently, and across a restart with --kv-cache-dir (a corrupt entry skipped)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from offload.engine.engine import Engine
from offload.engine.kv_disk import SUFFIX
from offload.engine.sampling import SamplingParams
from offload.planner.plan import RuntimeConfig
from offload.server.app import create_app
from tests.test_server import Served

DEMO = Path(__file__).resolve().parents[1] / "offload" / "demo_model"  # trained: answers are text, not one EOS
SYSTEM = "You are a careful assistant for Python's standard library. " * 30  # a long shared system prompt
GREEDY = SamplingParams(temperature=0)
QUESTIONS = ["What does os.path.join do?", "How do I read a file?", "What is a dict?", "Explain zip."]


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def fresh() -> Iterator[Engine]:
    """No reuse: the reference answers."""
    with Engine(DEMO, RuntimeConfig(context=2048, dtype="float32")) as e:
        yield e


def _reference(engine: Engine, question: str) -> str:
    turn = engine.chat(_messages(question), sampling=GREEDY, max_tokens=8, thinking=False)
    return turn.run().content


def _ask(client: OpenAI, question: str):
    return client.chat.completions.create(
        model="kimi-k2.5",
        messages=_messages(question),  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        extra_body={"chat_template_kwargs": {"thinking": False}},
    )


def _served(engine: Engine) -> Served:
    return Served(create_app(engine, "tiny"))


def test_requests_sharing_a_system_prompt_reuse_it(fresh: Engine) -> None:
    with Engine(DEMO, RuntimeConfig(context=2048, dtype="float32")) as engine:
        engine.enable_prefix_cache(1 << 30)
        system_tokens = len(engine.chat_format.encode([{"role": "system", "content": SYSTEM}], thinking=False))
        with _served(engine) as s:
            client = OpenAI(api_key="x", base_url=f"{s.url}/v1")
            first = _ask(client, QUESTIONS[0])
            second = _ask(client, QUESTIONS[1])
            assert first.usage is not None and second.usage is not None
            assert first.usage.prompt_tokens_details is not None and second.usage.prompt_tokens_details is not None
            assert first.usage.prompt_tokens_details.cached_tokens == 0
            shared = second.usage.prompt_tokens_details.cached_tokens
            assert system_tokens * 0.95 < shared < second.usage.prompt_tokens - 5  # the system prompt, not the question
            assert first.usage.completion_tokens == 8
            assert first.choices[0].message.content == _reference(fresh, QUESTIONS[0])
            assert second.choices[0].message.content == _reference(fresh, QUESTIONS[1])
            stream = client.chat.completions.create(
                model="kimi-k2.5",
                messages=_messages(QUESTIONS[0]),  # type: ignore[arg-type]
                max_tokens=8,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"chat_template_kwargs": {"thinking": False}},
            )
            chunks = list(stream)
            usage = chunks[-1].usage
            assert usage is not None and usage.prompt_tokens_details is not None
            assert usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens - 1  # all but the last
            metrics = httpx.get(f"{s.url}/metrics").json()["prefix_cache"]
            assert metrics["hits"] == 2 and metrics["lookups"] == 3 and metrics["bytes_held"] > 0
            assert metrics["tokens_saved"] == (
                second.usage.prompt_tokens_details.cached_tokens + usage.prompt_tokens_details.cached_tokens
            )


def test_concurrent_requests_get_their_own_answers(fresh: Engine) -> None:
    with Engine(DEMO, RuntimeConfig(context=2048, dtype="float32")) as engine:
        engine.enable_prefix_cache(1 << 30)
        with _served(engine) as s:
            client = OpenAI(api_key="x", base_url=f"{s.url}/v1")
            got: dict[str, str] = {}
            cached: dict[str, int] = {}

            def one(q: str) -> None:
                r = _ask(client, q)
                got[q] = r.choices[0].message.content or ""
                assert r.usage is not None and r.usage.prompt_tokens_details is not None
                cached[q] = r.usage.prompt_tokens_details.cached_tokens or 0

            threads = [threading.Thread(target=one, args=(q,)) for q in QUESTIONS]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        assert got == {q: _reference(fresh, q) for q in QUESTIONS}
        assert sorted(cached.values())[0] == 0 and all(v > 0 for v in sorted(cached.values())[1:])


def test_a_small_budget_evicts_the_least_recently_used() -> None:
    with Engine(DEMO, RuntimeConfig(context=2048, dtype="float32")) as engine:
        cfg = engine.model.cfg
        per_token = cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4 + 8  # float32 + an id
        prompt = len(engine.chat_format.encode(_messages(QUESTIONS[0]), thinking=False))
        budget = int(1.5 * per_token * (prompt + 8))  # one request's sequence, not two
        engine.enable_prefix_cache(budget)
        with _served(engine) as s:
            client = OpenAI(api_key="x", base_url=f"{s.url}/v1")
            first = _ask(client, QUESTIONS[0])
            _ask(client, QUESTIONS[1])  # shares the system prompt, then differs: two entries do not fit
            m = httpx.get(f"{s.url}/metrics").json()["prefix_cache"]
            assert m["evicted"] == 1 and m["entries"] == 1 and m["bytes_held"] <= m["budget_bytes"] == budget
            again = _ask(client, QUESTIONS[0])  # its own entry is gone: only the system prompt is reused
            assert again.usage is not None and again.usage.prompt_tokens_details is not None
            assert first.usage is not None and prompt == first.usage.prompt_tokens
            assert 0.8 * prompt < again.usage.prompt_tokens_details.cached_tokens < prompt - 5
            assert again.choices[0].message.content == first.choices[0].message.content


# ---- the real process, restarted ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Process:
    def __init__(self, model: Path, log: Path, *args: str) -> None:
        self.port = _free_port()
        cmd = [sys.executable, "-m", "offload.cli", "serve", "--model", str(model), "--port", str(self.port)]
        cmd += ["--dtype", "float32", "--context", "2048", *args]
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    break
            except httpx.ConnectError:
                time.sleep(0.1)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(30) == 0
        return self.log.read_text()


def test_a_restart_with_kv_cache_dir_reuses_and_a_corrupt_entry_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "kv"
    first = Process(DEMO, tmp_path / "1.log", "--kv-cache-dir", str(folder))
    answer = _ask(OpenAI(api_key="x", base_url=f"{first.url}/v1"), QUESTIONS[0])
    first.stop()  # the writer finishes before the process exits
    files = list(folder.glob(f"*{SUFFIX}"))
    assert len(files) == 1
    second = Process(DEMO, tmp_path / "2.log", "--kv-cache-dir", str(folder))
    again = _ask(OpenAI(api_key="x", base_url=f"{second.url}/v1"), QUESTIONS[0])
    assert again.usage is not None and again.usage.prompt_tokens_details is not None and answer.usage is not None
    assert again.usage.prompt_tokens_details.cached_tokens == answer.usage.prompt_tokens - 1
    assert again.choices[0].message.content == answer.choices[0].message.content
    assert httpx.get(f"{second.url}/metrics").json()["prefix_cache"]["disk_loads"] == 1
    second.stop()
    for f in folder.glob(f"*{SUFFIX}"):  # one flipped byte in the cached values
        data = bytearray(f.read_bytes())
        data[-5] ^= 0x55
        f.write_bytes(bytes(data))
    third = Process(DEMO, tmp_path / "3.log", "--kv-cache-dir", str(folder))
    fresh = _ask(OpenAI(api_key="x", base_url=f"{third.url}/v1"), QUESTIONS[0])
    assert fresh.usage is not None and fresh.usage.prompt_tokens_details is not None
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0
    assert fresh.choices[0].message.content == answer.choices[0].message.content
    log = third.stop()
    assert "skipped: its bytes do not match their CRC-32" in log and "Traceback" not in log
