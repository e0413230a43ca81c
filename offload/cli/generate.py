"""`kimi-offload generate`: one prompt, prefill then decode, the text streamed."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from offload.cli.console import console, err, fail
from offload.cli.load import load_engine, model_dir
from offload.cli.options import (
    ModelOpt,
    ProfileOpt,
    run_options,
)
from offload.engine.generate import StopConditions
from offload.engine.sampling import SamplingParams
from offload.errors import OffloadError
from offload.planner.plan import RuntimeConfig

SAMPLING = SamplingParams()  # generate's defaults come from these
STOP = StopConditions()
STATS_HELP = "Print where experts came from, disk traffic, prediction recall and expert time."


def parse_ids(prompt: str | None, prompt_ids: str | None, chat: bool) -> list[int] | None:
    """--prompt-ids as a list (None when --prompt is used); checked before the model loads."""
    if (prompt is None) == (prompt_ids is None):
        raise fail("give exactly one of --prompt TEXT or --prompt-ids 1,2,3")
    if prompt_ids is None:
        return None
    if chat:
        raise fail("--chat needs --prompt TEXT (token ids are used as they are)")
    try:
        ids = [int(x) for x in prompt_ids.replace(" ", "").split(",") if x]
    except ValueError:
        raise fail(f"--prompt-ids {prompt_ids!r}: expected comma-separated integers, e.g. 1,2,3") from None
    if not ids:
        raise fail("--prompt-ids is empty; give at least one token id")
    return ids


@run_options()
def generate_cmd(
    model: ModelOpt = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt text (encoded as plain text).")] = None,
    prompt_ids: Annotated[str | None, typer.Option(help="Prompt as token ids, e.g. 1,2,3.")] = None,
    chat: Annotated[bool, typer.Option(help="Wrap --prompt as one user turn in the chat format.")] = False,
    thinking: Annotated[bool, typer.Option(help="With --chat: let the model reason first (<think>).")] = True,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = STOP.max_tokens,
    temperature: Annotated[float, typer.Option(help="0 decodes greedily.")] = SAMPLING.temperature,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = SAMPLING.top_p,
    top_k: Annotated[int, typer.Option(help="Keep the k likeliest tokens (0 = all).")] = SAMPLING.top_k,
    min_p: Annotated[float, typer.Option(help="Drop tokens below min_p x the likeliest one's probability.")] = (
        SAMPLING.min_p
    ),
    seed: Annotated[int | None, typer.Option(help="Sampling seed (reproducible runs).")] = SAMPLING.seed,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    profile: ProfileOpt = "auto",
    stats: Annotated[bool, typer.Option("--stats", help=STATS_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming text.")] = False,
    *,
    runtime: RuntimeConfig,
) -> None:
    """Generate from a prompt: prefill, then decode token by token, streaming the text."""

    from offload.engine.reasoning import parse_output
    from offload.planner.report import summary_lines

    ids = parse_ids(prompt, prompt_ids, chat)
    folder = model_dir(model)
    try:
        sampling = SamplingParams(temperature, top_p, top_k, min_p, seed)
    except OffloadError as e:
        raise fail(str(e)) from None
    engine = load_engine(folder, runtime, profile, progress=False)
    if not as_json:
        err.print("\n".join(summary_lines(engine.plan)), style="dim", markup=False, highlight=False)
    with engine:
        if ids is None:
            assert prompt is not None
            messages = [{"role": "user", "content": prompt}]
            try:
                if chat:
                    ids = engine.chat_format.encode(messages, thinking=thinking)
                else:
                    ids = engine.tokenizer.encode_prompt(prompt)
            except OffloadError as e:  # ChatFormatError: the checkpoint's template refused the conversation
                raise fail(str(e)) from None
        try:
            gen = engine.generate(ids, sampling, max_tokens, stop or ())
        except OffloadError as e:
            raise fail(str(e)) from None
        before = engine.stats()
        if as_json:
            r = gen.run()
        else:
            for piece in gen:  # the model's text exactly: no markup, emoji codes or wrapping
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            r = gen.result
        used = engine.stats() - before
    out = {
        "model": str(folder),
        "dtype": runtime.dtype,
        "prompt_tokens": r.prompt_tokens,
        "token_ids": r.token_ids,
        "text": r.text,
        "finish_reason": r.finish_reason,
        "generated_tokens": len(r.token_ids),
        "prefill_s": round(r.prefill_s, 4),
        "decode_s": round(r.decode_s, 4),
        "prefill_tok_s": round(r.prefill_tok_s, 2),
        "decode_tok_s": round(r.decode_tok_s, 2),
    }
    if chat:
        parsed = parse_output(r.text, engine.chat_format.prompt_ends_in_thinking(ids))
        out["reasoning"], out["content"] = parsed.reasoning, parsed.content
        out["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.raw_arguments} for c in parsed.tool_calls]
    wall = {"prefill": r.prefill_s, "decode": r.decode_s}
    if stats:
        out["experts"] = used.to_dict(wall)
    if as_json:
        console.print_json(json.dumps(out, ensure_ascii=False))
        return
    if stats:
        err.print("\n".join(used.lines(wall)), style="dim", markup=False, highlight=False)
    err.print(
        f"[dim]{r.prompt_tokens} prompt tokens, {len(r.token_ids)} generated ({r.finish_reason}); "
        f"prefill {r.prefill_tok_s:,.1f} tok/s, decode {r.decode_tok_s:,.1f} tok/s[/]"
    )
