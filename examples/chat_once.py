"""One chat turn through the Python API: render the conversation, stream the reply, split reasoning from answer.

    python examples/chat_once.py --model models/mini "What is MLA?"

Without --model it uses the built-in demo model (small, trained on Python's documentation; not Kimi).
"""

from __future__ import annotations

import argparse
import sys

import torch

from offload.engine.engine import Engine
from offload.engine.reasoning import parse_output
from offload.engine.sampling import SamplingParams
from offload.synth.demo import ensure_demo_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("question")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--no-thinking", action="store_true")
    args = ap.parse_args()
    folder = args.model or ensure_demo_model()[0]
    with Engine(folder) as engine:
        messages = [{"role": "user", "content": args.question}]
        ids = engine.chat_format.encode(messages, thinking=not args.no_thinking)
        gen = engine.generate(ids, SamplingParams(temperature=1.0, top_p=0.95, seed=0), max_tokens=args.max_tokens)
        for piece in gen:
            sys.stdout.write(piece)
            sys.stdout.flush()
        out = parse_output(gen.result.text, engine.chat_format.prompt_ends_in_thinking(ids))
        r = gen.result
        print(
            f"\n\nreasoning: {len(out.reasoning)} chars, answer: {len(out.content)} chars, "
            f"tool calls: {len(out.tool_calls)}; {r.finish_reason} after {len(r.token_ids)} tokens, "
            f"decode {r.decode_tok_s:.1f} tok/s"
        )


if __name__ == "__main__":
    main()
