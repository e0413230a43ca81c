"""`kimi-offload plan`: will it run, how, and how fast, from the model and the machine alone."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from offload.cli.console import console, fail
from offload.cli.options import RUNTIME, CpuWeightsOpt, GpuSlotsOpt, RamBudgetOpt
from offload.errors import OffloadError
from offload.planner.plan import RuntimeConfig


def plan_cmd(
    model: Annotated[
        str,
        typer.Option(
            help="Built-in model (kimi-k2.5, kimi-k2-thinking, kimi-k2-instruct, deepseek-v3) or a checkpoint folder."
        ),
    ] = "kimi-k2.5",
    profile: Annotated[
        str, typer.Option(help="A preset (see `profiles`), auto (measure this machine), or a .toml file.")
    ] = "auto",
    context: Annotated[int, typer.Option(help="Tokens of KV cache to reserve.")] = RUNTIME.context,
    gpu_weights: Annotated[
        str, typer.Option(help="Non-expert weights on the GPU: bf16 or int8.")
    ] = RUNTIME.gpu_weights,
    lm_head: Annotated[str, typer.Option(help="Where lm_head runs: gpu or cpu.")] = RUNTIME.lm_head,
    device: Annotated[
        str, typer.Option(help="auto (use the GPU when the profile has one), cpu, or cuda (the profile must have one).")
    ] = RUNTIME.device,
    expert_bpw: Annotated[
        float | None, typer.Option(help="What-if: bits per routed-expert weight (e.g. 2.5 for a Q2_K-class file).")
    ] = RUNTIME.expert_bpw,
    gpu_slots: GpuSlotsOpt = RUNTIME.gpu_slots,
    ram_budget: RamBudgetOpt = RUNTIME.ram_budget_gb,
    cpu_weights: CpuWeightsOpt = RUNTIME.cpu_weights,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Will it run, how, and how fast: placement, GPU and RAM budgets, disk reads and the decode ceiling."""
    from offload.planner.plan import make_plan
    from offload.planner.profile import load_profile
    from offload.planner.report import plan_sections
    from offload.planner.shapes import resolve_model

    try:
        name, cfg, storage = resolve_model(model)
        prof = load_profile(profile)
        # the strings are checked by RuntimeConfig itself, with a message naming the choices
        rt = RuntimeConfig(
            context,
            gpu_weights,  # type: ignore[arg-type]
            lm_head,  # type: ignore[arg-type]
            device,  # type: ignore[arg-type]
            expert_bpw=expert_bpw,
            gpu_slots=gpu_slots,
            ram_budget_gb=ram_budget,
            cpu_weights=cpu_weights,  # type: ignore[arg-type]
        )
    except OffloadError as e:
        raise fail(str(e)) from None
    plan = make_plan(name, cfg, storage, prof, rt)
    if as_json:
        console.print_json(json.dumps(plan.to_dict()))
    else:
        for title, rows in plan_sections(plan):
            t = Table(title=title, show_header=False, title_justify="left")
            t.add_column("what", style="bold")
            t.add_column("value")
            for k, v in rows:
                t.add_row(k.replace("_", " "), v)
            console.print(t)
    if not plan.fits:
        raise fail(plan.refusal())
