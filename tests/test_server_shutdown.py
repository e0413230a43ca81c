"""Issue 19, item 1: on SIGINT / SIGTERM every generation stops at once, streams end with an error event and [DONE],
waiting requests are answered 503 in OpenAI's shape, and the process exits within 2 s (the real server process)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from offload.server.app import create_app
from offload.server.shutdown import Shutdown
from tests.test_server import CHAT, HeldEngine, Served, _wait_for, assert_error

STOPPING = "the server is shutting down"


def test_shutdown_stops_running_and_waiting_requests_and_refuses_new_ones() -> None:
    fake, shutdown = HeldEngine(), Shutdown()
    with Served(create_app(fake, "held", max_queue=4, shutdown=shutdown)) as s:
        url = f"{s.url}/v1/chat/completions"
        out: dict[str, Any] = {}

        def stream() -> None:
            with httpx.stream("POST", url, json={**CHAT, "stream": True}, timeout=30) as r:
                out["stream"] = [line for line in r.iter_lines() if line]

        def wait() -> None:
            out["waiting"] = httpx.post(url, json=CHAT, timeout=30)

        threads = [threading.Thread(target=stream)]
        threads[0].start()
        _wait_for(lambda: len(fake.started) == 1, "the first request did not start")
        threads.append(threading.Thread(target=wait))
        threads[1].start()
        _wait_for(lambda: httpx.get(f"{s.url}/health").json()["waiting"] == 1, "the second did not queue")
        shutdown.begin()  # what the exit signal does, on the loop
        for t in threads:
            t.join(10)
        assert not fake.release.is_set() and fake.turns[0].cancelled.is_set()  # stopped, not finished
        events = out["stream"]
        assert events[-1] == "data: [DONE]"
        err = json.loads(events[-2].removeprefix("data: "))["error"]
        assert err["code"] == "server_shutting_down" and STOPPING in err["message"]
        assert assert_error(out["waiting"], 503, STOPPING)["code"] == "server_shutting_down"
        assert len(fake.started) == 1  # the waiting one never ran
        assert_error(httpx.post(url, json=CHAT), 503, STOPPING)  # nor does anything sent after


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_server_process_stops_within_two_seconds_of_a_signal(tiny_k25: Path, tmp_path: Path, sig: int) -> None:
    port, log = _free_port(), tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "offload.cli", "serve", "--model", str(tiny_k25), "--port", str(port)]
    cmd += ["--dtype", "float32", "--context", "2048", "--prefill-chunk", "1"]  # a prefill of a pass per token
    with log.open("w") as err:  # a file, not a pipe: a full pipe would stall the server's logging
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
    url, out = f"http://127.0.0.1:{port}", {}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.ConnectError:
                time.sleep(0.1)
        prompt = [10 + i % 700 for i in range(1790)]  # token ids: 1,790 one-token passes, seconds of work

        def stream() -> None:
            body = {"model": "kimi-k2.5", "prompt": prompt, "max_tokens": 200, "stream": True}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
                out["stream"] = [line for line in r.iter_lines() if line]

        def wait() -> None:
            out["waiting"] = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60)

        health = lambda: httpx.get(f"{url}/health", timeout=30).json()  # noqa: E731
        a = threading.Thread(target=stream)
        a.start()
        _wait_for(lambda: health()["running"] == 1, "the stream did not start")
        b = threading.Thread(target=wait)
        b.start()
        _wait_for(lambda: health()["waiting"] == 1, "the second request did not queue")
        sent = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(10)
        took = time.monotonic() - sent
        a.join(10)
        b.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc == 0 and took < 2.0, (rc, took, text)
    assert out["stream"][-1] == "data: [DONE]"
    assert json.loads(out["stream"][-2].removeprefix("data: "))["error"]["code"] == "server_shutting_down"
    assert assert_error(out["waiting"], 503, STOPPING)["code"] == "server_shutting_down"
    assert "1 running and 1 waiting requests stopped" in text and "stopped by the shutdown" in text
    assert "Traceback" not in text and "CancelledError" not in text and text.rstrip().endswith("stopped")
