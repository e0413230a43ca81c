"""`kimi-offload profiles`: the hardware presets `plan --profile` knows."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from offload.cli.console import console


def profiles_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False) -> None:
    """The hardware presets `plan --profile` knows (files in profiles/)."""
    from dataclasses import asdict

    from offload.planner.profile import list_profiles

    presets = list_profiles()
    if as_json:
        console.print_json(json.dumps([asdict(p) for p in presets]))
        return
    t = Table(title="hardware profiles (peak spec values)")
    t.add_column("name", no_wrap=True, style="bold")
    for col in ("GPU", "GPU GB/s", "PCIe GB/s", "RAM", "DRAM GB/s", "NVMe GB/s", "cores", "description"):
        t.add_column(col)
    for p in presets:
        gpu = f"{p.gpu_memory_gib:g} GiB" if p.has_gpu else "-"
        gpu_bw, pcie = (f"{p.gpu_bandwidth_gbs:g}", f"{p.pcie_gbs:g}") if p.has_gpu else ("-", "-")
        t.add_row(
            p.name,
            gpu,
            gpu_bw,
            pcie,
            f"{p.ram_gib:g} GiB",
            f"{p.dram_gbs:g}",
            f"{p.nvme_gbs:g}",
            str(p.cpu_cores),
            p.description,
        )
    console.print(t)
