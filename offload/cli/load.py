"""Loading the engine for `generate`, `chat`, `serve` and `bench`: the model folder, the progress bar, the errors."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from offload.cli.console import err, fail
from offload.engine.engine import Engine
from offload.errors import OffloadError
from offload.planner.plan import RuntimeConfig
from offload.planner.profile import load_profile

DEMO_NOTE = (
    "[yellow]no --model given: using the built-in demo model, a small model (35 M parameters, 64 experts) trained "
    "by this project on Python's documentation, in Kimi K2.5's checkpoint format. It knows some Python docs and "
    "nothing else.[/] Point --model at a real checkpoint folder (config.json, *.safetensors, tiktoken.model) to "
    "run Kimi."
)


def model_dir(model: Path | None) -> Path:
    """The given folder, or the built-in demo model (shipped with the package)."""
    if model is not None:
        return model
    from offload.synth.demo import ensure_demo_model

    err.print(DEMO_NOTE)
    try:
        return ensure_demo_model()[0]
    except FileNotFoundError as e:
        raise fail(str(e)) from None


def load_engine(
    model: Path, runtime: RuntimeConfig, profile: str, label: str = "loading", progress: bool = True
) -> Engine:
    """The engine for `model`, planned for `profile`, with a progress bar of the weights prepared. Bad input (a
    folder, a flag, a plan that does not fit) stops the command with its message; anything else is a bug."""
    try:
        prof = load_profile(profile, probe=False)
        if not progress:
            return Engine(model, runtime, prof)
        columns = (TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("load", total=None)

            def advance(n: int, total: int) -> None:
                bar.update(task, total=total, advance=n)

            return Engine(model, runtime, prof, progress=advance)
    except OffloadError as e:
        raise fail(str(e)) from None
