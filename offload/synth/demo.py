"""The built-in demo model: the `mini` preset, written once into the user's cache directory and reused."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from offload.synth.generator import SynthOptions, data_bytes, write_model
from offload.synth.presets import PRESETS, preset_config

DEMO_PRESET = "mini"
DEMO_VERSION = 1  # bump when the generator's output for the demo changes, so stale copies are not reused


def cache_root() -> Path:
    """$KIMI_OFFLOAD_CACHE, else $XDG_CACHE_HOME/kimi-offload, else ~/.cache/kimi-offload."""
    if os.environ.get("KIMI_OFFLOAD_CACHE"):
        return Path(os.environ["KIMI_OFFLOAD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kimi-offload"


def demo_dir() -> Path:
    return cache_root() / f"demo-{DEMO_PRESET}-v{DEMO_VERSION}"


def demo_bytes() -> int:
    return data_bytes(preset_config(DEMO_PRESET))


def ensure_demo_model(on_bytes: Callable[[int], None] | None = None) -> tuple[Path, bool]:
    """(folder, whether it was made now). The generator writes to a temporary name and renames, so an existing
    folder is complete."""
    folder = demo_dir()
    if folder.is_dir():
        return folder, False
    folder.parent.mkdir(parents=True, exist_ok=True)
    options = SynthOptions(max_shard_bytes=PRESETS[DEMO_PRESET].max_shard_bytes)
    write_model(preset_config(DEMO_PRESET), folder, options, on_bytes)
    return folder, True
