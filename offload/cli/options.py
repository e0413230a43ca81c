"""The options several commands share, declared once; their defaults come from the dataclasses that own them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from offload.planner.plan import RuntimeConfig

RUNTIME = RuntimeConfig()

ModelOpt = Annotated[Path | None, typer.Option(help="Checkpoint folder; default: the built-in demo model.")]
ProfileOpt = Annotated[str, typer.Option(help="Hardware profile for the plan: auto, a preset or a .toml file.")]
DtypeOpt = Annotated[str, typer.Option(help="Compute dtype: bfloat16, or float32 for exact comparisons.")]
ContextOpt = Annotated[
    int, typer.Option(help="Tokens of context to plan for (at most the model's max_position_embeddings).")
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when torch sees a GPU), cpu or cuda.")]
RamBudgetOpt = Annotated[
    float | None,
    typer.Option(
        help="GB (1e9 B) of routed experts kept in RAM; past it their pages are released. Default: the "
        "plan's (all the RAM the rest leaves)."
    ),
]
GpuSlotsOpt = Annotated[int | None, typer.Option(help="Routed experts kept on the GPU (default: the plan's).")]
PrefetchOpt = Annotated[
    bool, typer.Option("--prefetch/--no-prefetch", help="Read the next layer's predicted experts ahead of use.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def runtime_config(
    context: int, dtype: str, device: str, ram_budget: float | None, gpu_slots: int | None, prefetch: bool
) -> RuntimeConfig:
    """The run's RuntimeConfig from the shared options (it checks the strings itself, naming the choices)."""
    return RuntimeConfig(
        context=context,
        dtype=dtype,  # type: ignore[arg-type]
        device=device,  # type: ignore[arg-type]
        ram_budget_gb=ram_budget,
        gpu_slots=gpu_slots,
        prefetch=prefetch,
    )
