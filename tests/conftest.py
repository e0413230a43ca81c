from __future__ import annotations

from pathlib import Path

import pytest

from offload.synth.generator import SynthOptions, write_model
from offload.synth.presets import PRESETS, preset_config

DATA = Path(__file__).parent / "data"


def make(root: Path, preset: str = "tiny", layout: str = "k2.5", experts: str = "int4", seed: int = 0,
         **opts: object) -> Path:  # fmt: skip
    """A synthetic checkpoint folder under `root` (helper for tests that need their own copy)."""
    cfg = preset_config(preset, layout, experts)
    options = SynthOptions(seed=seed, max_shard_bytes=PRESETS[preset].max_shard_bytes, **opts)  # type: ignore[arg-type]
    suffix = "".join(f"-{k}{v}" for k, v in sorted(opts.items()))
    return write_model(cfg, root / f"{preset}-{layout}-{experts}-{seed}{suffix}", options)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Read-only tiny checkpoints for every (layout, expert format) pair, made once per session."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        (layout, experts): make(root, "tiny", layout, experts)
        for layout in ("k2.5", "k2", "deepseek-v3")
        for experts in ("int4", "fp8", "bf16")
    }


@pytest.fixture(scope="session")
def tiny_k25(tiny_dirs: dict[tuple[str, str], Path]) -> Path:
    return tiny_dirs[("k2.5", "int4")]


@pytest.fixture(scope="session")
def mini_k25(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini preset (384 experts of ~110 KB: several pages each, so page release is real), made once."""
    return make(tmp_path_factory.mktemp("mini"), "mini")
