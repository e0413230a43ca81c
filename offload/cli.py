"""The `kimi-offload` command line. The only module that talks to the terminal."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from offload.checkpoint import Checkpoint, CheckpointError
from offload.quant import ConfigError
from offload.synth.generator import SynthOptions

SYNTH = SynthOptions()  # make-model's defaults come from the dataclass

app = typer.Typer(help="Run Kimi K2.5-class MoE checkpoints with experts offloaded to RAM and disk.",
                  no_args_is_help=True, add_completion=False)  # fmt: skip
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # messages hold paths: never wrap them


def _fail(msg: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {msg}")
    return typer.Exit(code)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command("make-model")
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
    except ConfigError as e:
        raise _fail(str(e)) from None
    options = SynthOptions(seed=seed, skew=skew, max_shard_bytes=PRESETS[preset].max_shard_bytes)
    total = data_bytes(cfg)
    t0 = time.perf_counter()
    columns = (TextColumn("writing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("write", total=total)
        try:
            write_model(cfg, out, options, on_bytes=lambda n: progress.advance(task, n))
        except (FileExistsError, ValueError, OSError) as e:
            raise _fail(str(e)) from None
    dt = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.iterdir())
    console.print(f"wrote {out}: preset {preset}, layout {layout}, experts {experts}, seed {seed}; "
                  f"{size / 1e6:,.1f} MB in {dt:.1f} s")  # fmt: skip


@app.command("inspect")
def inspect_cmd(
    model: Annotated[Path, typer.Option(help="Checkpoint folder (config.json + safetensors).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What a checkpoint folder is: layout, weight formats, layers, experts, bytes by part, shards, tokenizer."""
    from offload.summary import describe

    try:
        with Checkpoint(model) as ckpt:
            info = describe(ckpt)
    except (ConfigError, CheckpointError) as e:
        raise _fail(str(e)) from None
    if as_json:
        console.print_json(json.dumps(info))
        return
    t = Table(title=str(model), show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    skip = {"bytes_by_part", "bytes_by_dtype", "tokenizer", "folder"}
    for k, v in info.items():
        if k in skip:
            continue
        t.add_row(k.replace("_", " "), _gb(v) if "bytes" in k else str(v))
    for part, n in sorted(info["bytes_by_part"].items(), key=lambda kv: -kv[1]):
        t.add_row(f"  {part}", _gb(n))
    t.add_row("by dtype", ", ".join(f"{d} {_gb(n)}" for d, n in sorted(info["bytes_by_dtype"].items())))
    t.add_row("tokenizer", ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in info["tokenizer"].items()))
    console.print(t)


def _gb(n: object) -> str:
    if not isinstance(n, int):
        return str(n)
    if n >= 1 << 30:
        return f"{n / (1 << 30):,.2f} GiB ({n:,} B)"
    if n >= 1 << 20:
        return f"{n / (1 << 20):,.2f} MiB ({n:,} B)"
    return f"{n:,} B"


if __name__ == "__main__":
    app()
