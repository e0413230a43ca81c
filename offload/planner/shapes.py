"""Built-in model shapes: the published config.json of each model, so `plan` needs no weights on disk."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from offload.checkpoint.hub import is_repo_id
from offload.checkpoint.layout import layout_storage
from offload.config import ModelConfig
from offload.hf_config import HfConfig
from offload.planner.gguf_shapes import GGUF_SHAPES, recipe_storage
from offload.quant import ConfigError
from offload.storage import Storage

SHAPES = ("kimi-k2.5", "kimi-k2-thinking", "kimi-k2-instruct", "deepseek-v3")


def shape_config(name: str) -> HfConfig:
    """The published config.json of a built-in model (architecture, layout and quantization)."""
    if name not in SHAPES:
        raise ConfigError(f"unknown model {name!r}; built-in: {', '.join(SHAPES)}, or a checkpoint folder")
    text = resources.files("offload.planner").joinpath(f"shapes/{name}.json").read_text()
    return HfConfig.from_dict(json.loads(text))


def resolve_model(spec: str) -> tuple[str, ModelConfig, Storage]:
    """(display name, config, storage) for a built-in name (its published release's storage, or a GGUF recipe's)
    or a checkpoint (opened from its headers: the storage is what its index says)."""
    if spec in SHAPES:
        hf = shape_config(spec)
        return spec, hf.model, layout_storage(hf)
    if spec in GGUF_SHAPES:
        recipe = GGUF_SHAPES[spec]
        cfg = shape_config(recipe.base).model
        return spec, cfg, recipe_storage(cfg, recipe)
    path = Path(spec)
    if path.exists() or is_repo_id(spec):
        from offload.checkpoint import open_checkpoint

        with open_checkpoint(path) as ckpt:
            return str(path), ckpt.config, ckpt.storage
    raise ConfigError(
        f"--model {spec!r} is neither a built-in model ({', '.join((*SHAPES, *GGUF_SHAPES))}) nor a checkpoint "
        "(a folder, a .gguf file, or a Hugging Face repo id in the local cache)"
    )
