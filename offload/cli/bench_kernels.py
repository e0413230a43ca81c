"""`kimi-offload bench-kernels`: the CPU expert kernels (INT4, every ggml type) against the read bandwidth measured
now."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kernels.formats import GGML_EXPERT_TYPES
from offload.cli.console import console, err, fail


def bench_kernels_cmd(
    tokens: Annotated[str, typer.Option(help="Tokens per expert to measure, comma-separated.")] = "1,4,32",
    shapes: Annotated[
        str, typer.Option(help="Matrices [out]x[in]: K2.5's gate (2048x7168) and the bench preset's.")
    ] = ("2048x7168,512x2048"),
    ffn: Annotated[bool, typer.Option(help="Also time whole experts (gate, up, down) on the K2.5 shape.")] = True,
    ggml_types: Annotated[
        str, typer.Option(help="ggml types to time on the first shape (GGUF experts), comma-separated; '' for none.")
    ] = ",".join(GGML_EXPERT_TYPES),
    int4: Annotated[bool, typer.Option(help="Time the INT4 candidates (safetensors experts).")] = True,
    seconds: Annotated[float, typer.Option(help="Most seconds per candidate and token count.")] = 3.0,
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write every figure to this JSON file.")] = None,
) -> None:
    """CPU expert kernels: weight GB/s of each INT4 candidate and of the ggml kernel per type, at each token count,
    against the read bandwidth measured in the same run."""
    from kernels.bench import bench_expert_ffn_cpu, bench_int4_cpu, format_table, measure_read_bandwidth
    from kernels.bench_ggml import bench_ggml_cpu, format_ggml_table
    from kernels.formats import GGML_BLOCKS

    try:
        toks = tuple(int(t) for t in tokens.split(","))
        dims = [tuple(int(v) for v in s.lower().split("x")) for s in shapes.split(",")]
        if any(len(d) != 2 or d[1] % 32 for d in dims) or any(t < 1 for t in toks):
            raise ValueError
    except ValueError:
        raise fail("--tokens is like 1,4,32 and --shapes like 2048x7168 (in a multiple of 32)") from None
    types = [t.strip().lower() for t in ggml_types.split(",") if t.strip()]
    if bad := [t for t in types if t not in GGML_BLOCKS]:
        raise fail(f"--ggml-types: {', '.join(bad)} unknown; known: {', '.join(GGML_BLOCKS)}")
    if types and dims[0][1] % 256:
        raise fail(f"--ggml-types times the first shape, whose in ({dims[0][1]}) must be a multiple of 256")
    read = measure_read_bandwidth()
    err.print(f"read bandwidth measured now: {read:.1f} GB/s")
    results = []
    for out_f, in_f in dims if int4 else []:
        err.print(f"timing {out_f}x{in_f} ...")
        results.append(bench_int4_cpu((out_f, in_f), toks, max_seconds=seconds, read_GBps=read))
    if ffn and int4:
        err.print("timing whole K2.5 experts ...")
        results.append(bench_expert_ffn_cpu((7168, 2048), toks, max_seconds=seconds, read_GBps=read))
    if results:
        for line in format_table(results):
            console.print(line, markup=False, highlight=False)
    ggml = None
    if types:
        err.print(f"timing ggml types on {dims[0][0]}x{dims[0][1]} ...")
        ggml = bench_ggml_cpu((dims[0][0], dims[0][1]), types, toks, max_seconds=seconds, read_GBps=read)
        for line in format_ggml_table(ggml):
            console.print(line, markup=False, highlight=False)
    if as_json is not None:
        as_json.write_text(json.dumps({"read_GBps": read, "results": results, "ggml": ggml}, indent=1, default=str))
