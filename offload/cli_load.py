"""Loading the engine for `generate`, `chat` and `serve`: one place for the steps, the progress bar and the errors."""

from __future__ import annotations

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
LOAD_ERRORS = (ValueError, ConfigError, CheckpointError, TokenizerError, ProfileError, PlanError)


def load_engine(model_dir: Path, dtype: str, context: int, profile: str, err: Console | None = None,
                label: str = "loading") -> Engine:  # fmt: skip
    """The engine for `model_dir`, planned for `profile`; with `err`, a progress bar of the weights prepared."""
    torch_dtype = compute_dtype(dtype)
    prof = load_profile(profile, probe=False)
    if err is None:
        return Engine(model_dir, torch_dtype, context, prof)
    total = ModelConfig.from_dir(model_dir).nonexpert_bytes
    columns = (TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("load", total=total)
        return Engine(model_dir, torch_dtype, context, prof, on_bytes=lambda n: progress.advance(task, n))
