"""`kimi-offload chat`: the command; the conversation itself is in chat_session.py."""

from __future__ import annotations

from typing import Annotated

import typer

from offload.cli.load import model_dir
from offload.cli.options import (
    RUNTIME,
    ContextOpt,
    DeviceOpt,
    DtypeOpt,
    GpuSlotsOpt,
    ModelOpt,
    PrefetchOpt,
    ProfileOpt,
    RamBudgetOpt,
    runtime_config,
)
from offload.engine.sampling import SamplingParams

SAMPLING = SamplingParams()


def chat_cmd(
    model: ModelOpt = None,
    profile: ProfileOpt = "auto",
    context: ContextOpt = RUNTIME.context,
    dtype: DtypeOpt = RUNTIME.dtype,
    device: DeviceOpt = RUNTIME.device,
    ram_budget: RamBudgetOpt = RUNTIME.ram_budget_gb,
    gpu_slots: GpuSlotsOpt = RUNTIME.gpu_slots,
    prefetch: PrefetchOpt = RUNTIME.prefetch,
    system: Annotated[str | None, typer.Option(help="System prompt (default: the model's own).")] = None,
    think: Annotated[bool, typer.Option("--think/--no-think", help="Let the model reason before answering.")] = True,
    temperature: Annotated[
        float | None, typer.Option(help="Default: 1.0 with thinking, 0.6 without (Kimi's advice).")
    ] = None,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = SAMPLING.top_p,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 1024,
    seed: Annotated[int | None, typer.Option(help="Sampling seed; answer k of a session uses seed + k.")] = None,
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
        runtime=runtime_config(context, dtype, device, ram_budget, gpu_slots, prefetch),
    )
