"""The built-in demo model: small, trained by the project on Python's own documentation (scripts/train_demo.py),
stored in Kimi K2.5's checkpoint format (nested layout, routed experts INT4 pack-quantized) inside the package."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

DEMO_NAME = "kimi-demo"


def demo_dir() -> Path:
    """The packaged demo checkpoint folder."""
    return Path(str(resources.files("offload").joinpath("demo_model")))


def ensure_demo_model(on_bytes: Callable[[int], None] | None = None) -> tuple[Path, bool]:
    """(folder, False): the demo ships with the package, nothing is made. A missing folder (a broken install) is
    an error that says how to get it back."""
    folder = demo_dir()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the built-in demo model is missing from {folder}: reinstall kimi-offload, or retrain it with "
            f"`python scripts/train_demo.py --out {folder}`"
        )
    return folder, False
