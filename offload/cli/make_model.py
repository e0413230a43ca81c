"""`kimi-offload make-model`: write a synthetic checkpoint in the exact published format."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from offload.cli.console import console, err, fail
from offload.quant import ConfigError
from offload.synth.generator import SynthOptions

SYNTH = SynthOptions()  # make-model's defaults come from the dataclass


def make_model(
    out: Annotated[Path, typer.Option(help="Folder to create (must not exist or be empty).")],
    preset: Annotated[
        str, typer.Option(help="tiny (a few MB), mini (~200 MB, 384 experts), bench (several GB).")
    ] = "tiny",
    layout: Annotated[str, typer.Option(help="k2.5 (nested, language_model. prefix), k2, or deepseek-v3.")] = "k2.5",
    experts: Annotated[
        str, typer.Option(help="int4 (like K2.5), fp8 (like K2-Instruct / DeepSeek-V3), bf16.")
    ] = "int4",
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same weights in every layout.")] = SYNTH.seed,
    skew: Annotated[
        float, typer.Option(help="Expert popularity skew through e_score_correction_bias (0 = none).")
    ] = SYNTH.skew,
) -> None:
    """Write a synthetic checkpoint in the exact published format (config, sharded safetensors, tokenizer)."""
    from offload.synth.generator import data_bytes, write_model
    from offload.synth.presets import PRESETS, preset_config

    try:
        cfg = preset_config(preset, layout, experts)
        options = SynthOptions(seed=seed, skew=skew, max_shard_bytes=PRESETS[preset].max_shard_bytes)
    except (ConfigError, ValueError) as e:  # SynthOptions checks seed and sizes with ValueError
        raise fail(str(e)) from None
    total = data_bytes(cfg)
    t0 = time.perf_counter()
    columns = (TextColumn("writing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("write", total=total)
        try:
            write_model(cfg, out, options, on_bytes=lambda n: progress.advance(task, n))
        except (FileExistsError, ValueError, OSError) as e:
            raise fail(str(e)) from None
    dt = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.iterdir())
    console.print(
        f"wrote {out}: preset {preset}, layout {layout}, experts {experts}, seed {seed}; "
        f"{size / 1e6:,.1f} MB in {dt:.1f} s"
    )
