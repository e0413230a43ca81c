"""`kimi-offload chat`: the command; the conversation itself is in chat_session.py."""

from __future__ import annotations

from typing import Annotated

import typer

from offload.cli.load import model_dir
from offload.cli.options import (
    ModelOpt,
    ProfileOpt,
    run_options,
)
from offload.engine.sampling import SamplingParams
from offload.planner.plan import RuntimeConfig

SAMPLING = SamplingParams()


@run_options()
def chat_cmd(
    model: ModelOpt = None,
    profile: ProfileOpt = "auto",
    system: Annotated[str | None, typer.Option(help="System prompt (default: the model's own).")] = None,
    think: Annotated[bool, typer.Option("--think/--no-think", help="Let the model reason before answering.")] = True,
    temperature: Annotated[
        float | None, typer.Option(help="Default: 1.0 with thinking, 0.6 without (Kimi's advice).")
    ] = None,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = SAMPLING.top_p,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 1024,
    seed: Annotated[int | None, typer.Option(help="Sampling seed; answer k of a session uses seed + k.")] = None,
    *,
    runtime: RuntimeConfig,
) -> None:
    """Chat in the terminal: streaming answers, thinking shown apart, /help for commands."""
    from offload.cli.chat_session import run_chat

    run_chat(
        model_dir=model_dir(model),
        profile=profile,
        system=system,
        think=think,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        runtime=runtime,
    )
