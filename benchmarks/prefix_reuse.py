"""Time to first token with and without prefix reuse (a benchmark, not a CI test): a multi-turn chat, and an agent
loop that resends the same long system prompt and tools with a new short user message on every call.

    python benchmarks/prefix_reuse.py [--model DIR] [--turns 10] [--calls 10] [--system-tokens 2000] [--json OUT]

Both measurements run in one process on one engine, alternating per turn: the same prompt ids prefilled without the
prefix cache (its time to first token), then with it (generating the answer that the next turn's history holds).
Thinking is off, so the history renders as it was generated and a turn's match runs through the last answer.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from offload.engine.engine import Engine
from offload.engine.sampling import SamplingParams
from offload.planner.plan import RuntimeConfig

GREEDY = SamplingParams(temperature=0)
QUESTIONS = [
    "What does os.path.join do?",
    "And os.path.split?",
    "How do I list a directory?",
    "What about walking a tree of folders?",
    "How do I read a text file line by line?",
    "And write one?",
    "What is pathlib for?",
    "How do I get a file's size?",
    "How do I copy a file?",
    "And delete one?",
    "What is shutil.rmtree?",
    "Summarise what we covered.",
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name.replace('_', ' ')} on the user's workspace.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "a path in the workspace"}},
                "required": ["path"],
            },
        },
    }
    for name in ("read_file", "list_directory", "search_code", "run_tests")
]


def ttft(engine: Engine, ids: list[int], reuse: bool, max_tokens: int = 1) -> tuple[float, int, list[int]]:
    """(time to first token, prompt tokens computed, generated ids) of one generation."""
    keep = engine.prefix_cache
    if not reuse:
        engine.prefix_cache = None
    try:
        r = engine.generate(ids, GREEDY, max_tokens).run()
    finally:
        engine.prefix_cache = keep
    return r.prefill_s, r.prompt_tokens - r.cached_tokens, r.token_ids


def chat(engine: Engine, turns: int, answer_tokens: int) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    rows = []
    for k in range(turns):
        history.append({"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]})
        ids = engine.chat_format.encode(history, thinking=False)
        off, _, _ = ttft(engine, ids, reuse=False)
        on, new, answer = ttft(engine, ids, reuse=True, max_tokens=answer_tokens)
        same, _, _ = ttft(engine, ids[-new:], reuse=False)  # a fresh prompt of as many tokens as were prefilled
        text = engine.tokenizer.decode([t for t in answer if t not in engine.stop_ids])
        history.append({"role": "assistant", "content": text})
        rows.append(
            {
                "turn": k + 1,
                "prompt_tokens": len(ids),
                "new_tokens": new,
                "ttft_off_s": off,
                "ttft_on_s": on,
                "ttft_fresh_same_new_s": same,
            }
        )
    return rows


def agent(engine: Engine, calls: int, system_tokens: int) -> list[dict[str, Any]]:
    unit = "You are a coding agent working in the user's repository; follow the rules below exactly. "
    per = max(1, len(engine.tokenizer.encode(unit)))
    system = unit * max(1, system_tokens // per)
    rows = []
    for k in range(calls):
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]}]
        ids = engine.chat_format.encode(msgs, TOOLS, thinking=False)
        off, _, _ = ttft(engine, ids, reuse=False)
        on, new, _ = ttft(engine, ids, reuse=True, max_tokens=8)
        rows.append({"call": k + 1, "prompt_tokens": len(ids), "new_tokens": new, "ttft_off_s": off, "ttft_on_s": on})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the built-in demo model)")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--answer-tokens", type=int, default=48)
    ap.add_argument("--system-tokens", type=int, default=2000)
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--parts", default="chat,agent", help="chat, agent or both")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    model = args.model or str(Path(__file__).resolve().parents[1] / "offload" / "demo_model")
    with Engine(model, RuntimeConfig(context=args.context, device="cpu")) as engine:
        kv = engine.enable_prefix_cache()
        for _ in range(2):  # warm-up: kernels built, first touches done
            ttft(engine, list(range(10, 138)), reuse=False, max_tokens=2)
        turns = chat(engine, args.turns, args.answer_tokens) if "chat" in parts else []
        kv.clear()
        calls = agent(engine, args.calls, args.system_tokens) if "agent" in parts else []
        stats = kv.stats().to_dict()
    print(f"model {model}; chat: {args.answer_tokens}-token answers, thinking off\n")
    if turns:
        print(
            "| turn | prompt tokens | prefilled with reuse | TTFT without reuse | TTFT with reuse | "
            "TTFT of a fresh prompt of as many tokens | with reuse / that |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in turns:
            print(
                f"| {r['turn']} | {r['prompt_tokens']:,} | {r['new_tokens']:,} | {r['ttft_off_s']:.3f} s | "
                f"{r['ttft_on_s']:.3f} s | {r['ttft_fresh_same_new_s']:.3f} s | "
                f"{r['ttft_on_s'] / r['ttft_fresh_same_new_s']:.2f} |"
            )
        worst = max(r["ttft_on_s"] / r["ttft_fresh_same_new_s"] for r in turns)
        print(f"\nwith reuse, a turn's TTFT is at most {worst:.2f}x a fresh prompt of as many new tokens")
    if calls:
        off = statistics.median(r["ttft_off_s"] for r in calls[1:])
        on = statistics.median(r["ttft_on_s"] for r in calls[1:])
        print(
            f"\nagent loop: {calls[0]['prompt_tokens']:,}-token prompts (system + {len(TOOLS)} tools + a short "
            f"message), {len(calls)} calls; calls 2..{len(calls)}: median TTFT {off:.3f} s without reuse, {on:.3f} s "
            f"with ({off / on:.1f}x), {statistics.median(r['new_tokens'] for r in calls[1:]):.0f} tokens prefilled; "
            f"call 1 (nothing cached yet): {calls[0]['ttft_on_s']:.3f} s"
        )
    print(f"prefix cache at the end: {stats}")
    if args.json:
        args.json.write_text(json.dumps({"model": model, "chat": turns, "agent": calls, "cache": stats}, indent=2))


if __name__ == "__main__":
    main()
