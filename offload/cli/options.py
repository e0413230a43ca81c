"""The options several commands share, declared once; their defaults come from the dataclasses that own them."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from offload.cli.console import fail
from offload.errors import OffloadError
from offload.planner.plan import RuntimeConfig

F = TypeVar("F", bound=Callable[..., Any])

RUNTIME = RuntimeConfig()

ModelOpt = Annotated[
    Path | None,
    typer.Option(
        help="Checkpoint: a safetensors folder, a .gguf file (any part of a split set), a folder of one GGUF set, or a "
        "Hugging Face repo id in the local cache (owner/name, owner/name:QUANT); default: the built-in demo model."
    ),
]
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
PrefillChunkOpt = Annotated[
    int,
    typer.Option(
        help="Prompt tokens per pass through the layers (llama.cpp's batch): bounds a long prompt's activations; "
        "larger reads each expert fewer times."
    ),
]
CpuWeightsOpt = Annotated[
    str,
    typer.Option(
        help="Non-expert Linears on the CPU: bf16, or int8 (Q8_0 through the native kernel: half the bytes read "
        "per token, activations rounded to 8 bits). A GGUF's quantized ones stay as stored either way."
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        help="CPU threads for torch and the native kernels (one OpenMP pool). Default: torch's, the physical cores."
    ),
]
ExpertProfileOpt = Annotated[
    Path | None,
    typer.Option(
        help="A routing profile (`bench --save-expert-profile`): under a RAM budget its hottest experts, up to half "
        "the budget, are read at load time and never evicted."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def runtime_config(
    context: int,
    dtype: str,
    device: str,
    ram_budget: float | None,
    gpu_slots: int | None,
    prefetch: bool,
    prefill_chunk: int = RUNTIME.prefill_chunk,
    threads: int | None = RUNTIME.threads,
    cpu_weights: str = RUNTIME.cpu_weights,
    expert_profile: Path | None = None,
) -> RuntimeConfig:
    """The run's RuntimeConfig from the shared options (it checks the strings itself, naming the choices)."""
    return RuntimeConfig(
        context=context,
        dtype=dtype,  # type: ignore[arg-type]
        device=device,  # type: ignore[arg-type]
        ram_budget_gb=ram_budget,
        gpu_slots=gpu_slots,
        prefetch=prefetch,
        prefill_chunk=prefill_chunk,
        threads=threads,
        cpu_weights=cpu_weights,  # type: ignore[arg-type]
        expert_profile=None if expert_profile is None else str(expert_profile),
    )


# the run options: (parameter, option type, default); `ram_budget` is RuntimeConfig.ram_budget_gb
RUN_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("context", ContextOpt, RUNTIME.context),
    ("dtype", DtypeOpt, RUNTIME.dtype),
    ("device", DeviceOpt, RUNTIME.device),
    ("ram_budget", RamBudgetOpt, RUNTIME.ram_budget_gb),
    ("gpu_slots", GpuSlotsOpt, RUNTIME.gpu_slots),
    ("prefetch", PrefetchOpt, RUNTIME.prefetch),
    ("prefill_chunk", PrefillChunkOpt, RUNTIME.prefill_chunk),
    ("threads", ThreadsOpt, RUNTIME.threads),
    ("cpu_weights", CpuWeightsOpt, RUNTIME.cpu_weights),
    ("expert_profile", ExpertProfileOpt, None),
)


def run_options(context: bool = True) -> Callable[[F], F]:
    """Give a command the shared run options (--context unless `context=False`, --dtype, --device, --ram-budget,
    --gpu-slots, --prefetch, --prefill-chunk, --threads, --cpu-weights, --expert-profile) and call it with one checked
    `runtime: RuntimeConfig` instead. The options are listed after --profile (or last); a bad value is a one-line
    error, exit code 2."""
    names = [o for o in RUN_OPTIONS if context or o[0] != "context"]

    def wrap(command: F) -> F:
        sig = inspect.signature(command, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "runtime"]
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=t) for n, t, d in names]
        at = next((i + 1 for i, p in enumerate(own) if p.name == "profile"), len(own))
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        params[at:at] = added

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n, _, _ in names}
            values.setdefault("context", RUNTIME.context)
            try:
                runtime = runtime_config(**values)
            except OffloadError as e:
                raise fail(str(e)) from None
            return command(runtime=runtime, **kwargs)

        run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run  # type: ignore[return-value]

    return wrap
