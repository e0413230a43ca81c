"""Built-in model shapes: the published config.json of each model, so `plan` needs no weights on disk."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from offload.config import ConfigError, ModelConfig

SHAPES = ("kimi-k2.5", "kimi-k2-thinking", "kimi-k2-instruct", "deepseek-v3")


def shape_config(name: str) -> ModelConfig:
    """ModelConfig of a built-in model (its real config.json values and quantization)."""
    if name not in SHAPES:
        raise ConfigError(f"unknown model {name!r}; built-in: {', '.join(SHAPES)}, or a checkpoint folder")
    text = resources.files("offload.planner").joinpath(f"shapes/{name}.json").read_text()
    return ModelConfig.from_dict(json.loads(text))


def resolve_model(spec: str) -> tuple[str, ModelConfig]:
    """(display name, config) for a built-in name or a checkpoint folder (only its config.json is read)."""
    if spec in SHAPES:
        return spec, shape_config(spec)
    path = Path(spec)
    if path.exists():
        return str(path), ModelConfig.from_dir(path)
    raise ConfigError(f"--model {spec!r} is neither a built-in model ({', '.join(SHAPES)}) nor a folder")
