"""Kimi's own example through the openai client, against `kimi-offload serve`: thinking on, then off.

    kimi-offload serve --model models/kimi-k2.5          # in one terminal
    python examples/openai_client.py                     # in another

The server sends the reasoning as `reasoning_content`, a field the openai client does not declare: it is read from
the message's extra fields. Thinking is turned off with `extra_body={"chat_template_kwargs": {"thinking": False}}`.
"""

from __future__ import annotations

import argparse

from openai import OpenAI


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key", default="EMPTY", help="the server's --api-key, if it has one")
    ap.add_argument("--model", default="kimi-k2.5")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    client = OpenAI(api_key=args.api_key, base_url=args.base_url)
    messages = [
        {"role": "system", "content": "You are Kimi, an AI assistant created by Moonshot AI."},
        {"role": "user", "content": "Which one is bigger, 9.11 or 9.9? Think carefully."},
    ]
    # Kimi's advice for K2.5: temperature 1.0 with thinking, 0.6 without; top_p 0.95
    for thinking, temperature in ((True, 1.0), (False, 0.6)):
        response = client.chat.completions.create(
            model=args.model,
            messages=messages,
            max_tokens=args.max_tokens,
            temperature=temperature,
            top_p=0.95,
            extra_body={"chat_template_kwargs": {"thinking": thinking}},
        )
        message = response.choices[0].message
        print(f"== thinking {'on' if thinking else 'off'} ({response.choices[0].finish_reason}, {response.usage})")
        print("reasoning_content:", (message.model_extra or {}).get("reasoning_content"))
        print("content:", message.content)


if __name__ == "__main__":
    main()
