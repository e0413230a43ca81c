"""A soak test of `kimi-offload serve` (a benchmark, not a CI test): clients sending a mix of valid, invalid,
cancelled and streaming requests for a while; requests by outcome, latency, the server's RSS, errors in its log.

    python benchmarks/soak_server.py [--model DIR] [--minutes 10] [--clients 8] [--seed 0] [--json OUT.json]

The server runs as its own process (the built-in demo model by default) with its log in a file; each client picks a
case at random from CASES for each request. RSS is read after a warm-up and at the end; the log is searched for
tracebacks and ERROR lines. Ends by sending SIGINT and timing the exit.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

MODEL = "kimi-k2.5"
QUESTIONS = ["What does os.path.join do?", "Explain list comprehensions.", "How do I open a file?", "What is a dict?"]


def chat(msg: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": msg}], "max_tokens": 32, **extra}


def case_chat(url: str, rng: random.Random) -> str:
    r = httpx.post(f"{url}/v1/chat/completions", json=chat(rng.choice(QUESTIONS), temperature=0.7), timeout=300)
    return str(r.status_code) + ("" if r.status_code == 200 else f" {r.json()['error']['code']}")


def case_stream(url: str, rng: random.Random) -> str:
    body = chat(rng.choice(QUESTIONS), stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as r:
        lines = [line for line in r.iter_lines() if line]
    if r.status_code != 200:
        return f"{r.status_code}"
    return "200 stream" if lines and lines[-1] == "data: [DONE]" else "200 stream without [DONE]"


def case_cancel(url: str, rng: random.Random) -> str:
    """A stream the client drops after a few chunks."""
    body = chat(rng.choice(QUESTIONS), stream=True, max_tokens=200)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 3:
                break
    return "cancelled by the client"


def case_completion(url: str, rng: random.Random) -> str:
    body = {"model": MODEL, "prompt": "The os module", "max_tokens": 24, "seed": rng.randrange(1 << 30)}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
    return str(r.status_code)


INVALID: list[tuple[str, dict[str, Any] | bytes, dict[str, str]]] = [
    ("bad temperature", chat("hi", temperature=5), {}),
    ("unknown model", {**chat("hi"), "model": "gpt-9"}, {}),
    ("no messages", {"model": MODEL}, {}),
    ("logit_bias", chat("hi", logit_bias={"1": 5}), {}),
    ("broken JSON", b'{"model": "kimi-k2.5", "messages": [', {"content-type": "application/json"}),
    ("text/plain body", json.dumps(chat("hi")).encode(), {"content-type": "text/plain"}),
    ("over the context", chat("word " * 40000), {}),
]


def case_invalid(url: str, rng: random.Random) -> str:
    _, body, headers = rng.choice(INVALID)
    if isinstance(body, bytes):
        r = httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers, timeout=60)
    else:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    if not r.headers.get("content-type", "").startswith("application/json"):
        return f"{r.status_code} {r.text[:40]!r}"
    err = r.json().get("error", {})
    return f"{r.status_code} {err.get('code') or 'param ' + str(err.get('param'))}"


def case_hangup(url: str, rng: random.Random) -> str:
    """Half a body, then the client goes away."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(chat("hi")).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
        time.sleep(0.05)
    return "hung up mid-body"


CASES: list[tuple[str, Callable[[str, random.Random], str], float]] = [
    ("chat", case_chat, 0.25),
    ("stream", case_stream, 0.25),
    ("cancel", case_cancel, 0.15),
    ("completion", case_completion, 0.1),
    ("invalid", case_invalid, 0.2),
    ("hangup", case_hangup, 0.05),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    port = free_port()
    log_path = Path(tempfile.mkdtemp()) / "serve.log"
    cmd = [sys.executable, "-m", "offload.cli", "serve", "--port", str(port)]
    cmd += ["--model", args.model] if args.model else []
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the server did not start:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.ConnectError:
            time.sleep(0.2)
    server = psutil.Process(proc.pid)
    for q in QUESTIONS:  # warm-up
        httpx.post(f"{url}/v1/chat/completions", json=chat(q), timeout=300)
    rss_start = server.memory_info().rss

    records: list[tuple[str, str, float]] = []  # (case, outcome, seconds)
    lock = threading.Lock()
    stop_at = time.monotonic() + args.minutes * 60
    names, fns, weights = zip(*CASES, strict=True)

    def client(i: int) -> None:
        rng = random.Random(args.seed * 1000 + i)
        while time.monotonic() < stop_at:
            k = rng.choices(range(len(CASES)), weights=weights)[0]
            t = time.monotonic()
            try:
                outcome = fns[k](url, rng)
            except httpx.HTTPError as e:
                outcome = f"client error {type(e).__name__}"
            with lock:
                records.append((names[k], outcome, time.monotonic() - t))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss_end = server.memory_info().rss
    health = httpx.get(f"{url}/health").json()
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(30)
    exit_s = time.monotonic() - sent
    log_text = log_path.read_text()

    by_outcome = Counter((c, o) for c, o, _ in records)
    latency: dict[str, list[float]] = defaultdict(list)
    for c, _, s in records:
        latency[c].append(s)

    def pct(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=100)[int(p) - 1] if len(xs) >= 2 else xs[0]

    report = {
        "minutes": args.minutes,
        "clients": args.clients,
        "requests": len(records),
        "outcomes": {f"{c}: {o}": n for (c, o), n in sorted(by_outcome.items())},
        "latency_s": {c: {"n": len(v), "p50": pct(v, 50), "p99": pct(v, 99)} for c, v in sorted(latency.items())},
        "rss_mb_start": rss_start / 1e6,
        "rss_mb_end": rss_end / 1e6,
        "health_at_end": health,
        "tracebacks_in_log": log_text.count("Traceback"),
        "error_lines_in_log": sum(1 for line in log_text.splitlines() if line.startswith("ERROR")),
        "sigint_exit_s": exit_s,
        "exit_code": rc,
        "log": str(log_path),
    }
    print(f"{len(records)} requests from {args.clients} clients in {args.minutes:g} min")
    print("| case | outcome | requests |\n|---|---|---|")
    for (c, o), n in sorted(by_outcome.items()):
        print(f"| {c} | {o} | {n} |")
    print("\n| case | requests | p50 s | p99 s |\n|---|---|---|---|")
    for c, v in report["latency_s"].items():
        print(f"| {c} | {v['n']} | {v['p50']:.2f} | {v['p99']:.2f} |")
    print(
        f"\nRSS {report['rss_mb_start']:.0f} MB after warm-up, {report['rss_mb_end']:.0f} MB at the end; "
        f"/health at the end {health}; log: {report['tracebacks_in_log']} tracebacks, "
        f"{report['error_lines_in_log']} ERROR lines ({log_path}); SIGINT -> exit {rc} in {exit_s:.2f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
