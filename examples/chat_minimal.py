"""A chat loop on the library API: keep the messages, stream each reply (thinking dimmed, then the answer).

    python examples/chat_minimal.py [MODEL_FOLDER [MAX_TOKENS]]      (Ctrl-D ends; or pipe lines in)

No folder: the built-in demo model (small, trained on Python's documentation: it knows Python docs, not Kimi)."""

from __future__ import annotations

import sys

import torch

from offload.engine.engine import Engine
from offload.planner.plan import RuntimeConfig
from offload.engine.sampling import SamplingParams
from offload.synth.demo import ensure_demo_model

folder = sys.argv[1] if len(sys.argv) > 1 else ensure_demo_model()[0]
max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 256
dim, plain = ("\x1b[2m", "\x1b[0m") if sys.stdout.isatty() else ("", "")
messages: list[dict[str, str]] = []
with Engine(folder, RuntimeConfig(context=8192)) as engine:
    while True:
        try:
            messages.append({"role": "user", "content": input("> " if sys.stdin.isatty() else "")})
        except EOFError:
            break
        sampling = SamplingParams(temperature=1.0, top_p=0.95, seed=len(messages))  # Kimi's advice with thinking
        turn = engine.chat(messages, thinking=True, sampling=sampling, max_tokens=max_tokens)
        shown = ""  # what this reply has written so far: "", "reasoning" or "content"
        for reasoning, content in turn:
            if reasoning:
                print(("" if shown else "thinking: ") + dim + reasoning + plain, end="", flush=True)
                shown = "reasoning"
            if content:
                print(("\n" if shown == "reasoning" else "") + content, end="", flush=True)
                shown = "content"
        reply = turn.output  # complete now: reasoning, content, tool calls
        messages.append({"role": "assistant", "content": reply.content, "reasoning_content": reply.reasoning})
        print(f"\n[{len(turn.result.token_ids)} tokens, {turn.result.finish_reason}]")
