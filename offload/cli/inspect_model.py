"""`kimi-offload inspect`: what a checkpoint is, from its config and headers alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from offload.checkpoint import open_checkpoint
from offload.cli.console import console, fail
from offload.errors import OffloadError


def inspect_cmd(
    model: Annotated[
        Path,
        typer.Option(
            help="Checkpoint: a safetensors folder, a .gguf file (any part of a split set) or a folder of one."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What a checkpoint is: layout, weight formats, layers, experts, bytes and types by part, files, tokenizer."""
    from offload.summary import describe

    try:
        with open_checkpoint(model) as ckpt:
            info = describe(ckpt)
    except OffloadError as e:
        raise fail(str(e)) from None
    if as_json:
        console.print_json(json.dumps(info))
        return
    t = Table(title=str(model), show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    skip = {"bytes_by_part", "bytes_by_dtype", "types_by_part", "tokenizer", "folder", "files"}
    for k, v in info.items():
        if k in skip:
            continue
        t.add_row(k.replace("_", " "), _gb(v) if "bytes" in k else str(v))
    types = info["types_by_part"]
    for part, n in sorted(info["bytes_by_part"].items(), key=lambda kv: -kv[1]):
        kinds = ", ".join(
            f"{k} x{u['tensors']} {u['bits_per_weight']:.2f} bpw" if u["bits_per_weight"] else f"{k} x{u['tensors']}"
            for k, u in types.get(part, {}).items()
        )
        t.add_row(f"  {part}", f"{_gb(n)}  [{kinds}]" if kinds else _gb(n))
    t.add_row("by dtype", ", ".join(f"{d} {_gb(n)}" for d, n in sorted(info["bytes_by_dtype"].items())))
    if len(info["files"]) > 1:
        t.add_row("files", ", ".join(info["files"]))
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
