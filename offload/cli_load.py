"""Loading the engine for `generate`, `chat` and `serve`: one place for the steps, the progress bar and the errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from offload.checkpoint import CheckpointError
from offload.config import ModelConfig
from offload.engine.engine import Engine, PlanError
from offload.engine.tokenizer import TokenizerError
from offload.model.loader import compute_dtype
from offload.planner.profile import ProfileError, load_profile
from offload.quant import ConfigError

# what a bad folder, dtype, profile or plan raises while loading: each message says what to change
LOAD_ERRORS = (ValueError, ConfigError, CheckpointError, TokenizerError, ProfileError, PlanError)  # BudgetError too


@dataclass(frozen=True, slots=True)
class OffloadFlags:
    """--device, --ram-budget, --gpu-slots, --no-prefetch, shared by generate, chat, serve and bench."""

    device: str = "auto"
    ram_budget_gb: float | None = None  # None: the plan's
    gpu_slots: int | None = None  # None: the plan's
    prefetch: bool = True


def load_engine(model_dir: Path, dtype: str, context: int, profile: str, err: Console | None = None,
                label: str = "loading", flags: OffloadFlags = OffloadFlags()) -> Engine:  # fmt: skip
    """The engine for `model_dir`, planned for `profile`; with `err`, a progress bar of the weights prepared."""
    torch_dtype = compute_dtype(dtype)
    prof = load_profile(profile, probe=False)
    kw = dict(device=flags.device, ram_budget_gb=flags.ram_budget_gb, gpu_slots=flags.gpu_slots,
              prefetch=flags.prefetch)  # fmt: skip
    if err is None:
        return Engine(model_dir, torch_dtype, context, prof, **kw)  # type: ignore[arg-type]
    total = ModelConfig.from_dir(model_dir).nonexpert_bytes
    columns = (TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("load", total=total)
        return Engine(model_dir, torch_dtype, context, prof, on_bytes=lambda n: progress.advance(task, n), **kw)  # type: ignore[arg-type]
