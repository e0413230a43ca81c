"""ggml-type kernel benchmarks for `kimi-offload bench-kernels`: weight GB/s of the native ggml CPU kernel per type
and token count, against the read bandwidth measured in the same run, rotating over more matrices than the L3
holds (so the bytes come from DRAM, as a decode's experts do). Plain dicts, never printed here; nothing asserts
speed."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kernels.bench import ROTATION_BYTES, _time_calls, measure_read_bandwidth
from kernels.cpu_ggml import ggml_linear_cpu, native_build
from kernels.dequant import StoredWeight
from kernels.formats import GGML_EXPERT_TYPES, ggml_row_bytes
from kernels.ggml_random import random_ggml_blocks
from kernels.native import best_isa

TYPES = GGML_EXPERT_TYPES


def bench_ggml_cpu(
    shape: tuple[int, int] = (2048, 7168),
    types: Sequence[str] = TYPES,
    tokens: Sequence[int] = (1, 4, 32),
    isas: Sequence[str] | None = None,
    repeat: int = 200,
    max_seconds: float = 2.0,
    read_GBps: float | None = None,
) -> dict[str, Any]:
    """One [out, in] matrix of each type times T tokens through `ggml_linear_cpu`, per build (`isas`, default the
    best this CPU runs, and avx2 beside it when that is AVX-512): seconds per call (median), weight GB/s (the
    stored bytes read) and the fraction of the read bandwidth."""
    out_f, in_f = shape
    best = best_isa()
    chosen = list(isas) if isas is not None else ([best, "avx2"] if best == "avx512vnni" else [best] if best else [])
    chosen = [i for i in chosen if i is not None and native_build(i) is not None]
    read = read_GBps or measure_read_bandwidth()
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {
        "shape": [out_f, in_f],
        "read_GBps": read,
        "threads": torch.get_num_threads(),
        "isas": chosen,
        "rows": [],
    }
    for fmt in types:
        nbytes = out_f * ggml_row_bytes(fmt, in_f)
        n = max(4, math.ceil(ROTATION_BYTES / nbytes))
        mats = [
            StoredWeight(fmt, (out_f, in_f), {"data": torch.from_numpy(random_ggml_blocks(fmt, out_f, in_f, rng))})
            for _ in range(n)
        ]
        for isa in chosen:
            for t in tokens:
                x = torch.randn(t, in_f)
                y = torch.empty(t, out_f)

                def call(i: int, x: torch.Tensor = x, y: torch.Tensor = y, isa: str = isa) -> object:
                    return ggml_linear_cpu(x, mats[i], y, isa)  # noqa: B023 (mats is this type's, used at once)

                times = _time_calls(call, n, repeat, max_seconds)
                s = statistics.median(times)
                result["rows"].append(
                    {
                        "type": fmt,
                        "isa": isa,
                        "tokens": t,
                        "matrices": n,
                        "weight_bytes": nbytes,
                        "seconds_per_call_s": s,
                        "best_s": min(times),
                        "weight_GBps": nbytes / s / 1e9,
                        "fraction_of_read": nbytes / s / 1e9 / read,
                    }
                )
    return result


def format_ggml_table(res: dict[str, Any]) -> list[str]:
    """Fixed-width lines: one per type and build, GB/s at each token count (median call; best call in brackets)."""
    toks = sorted({r["tokens"] for r in res["rows"]})
    head = f"{'type':<8} {'build':<11}" + "".join(f" {f'T={t} GB/s':>15}" for t in toks) + f" {'T=1 of bw':>10}"
    lines = [head]
    by = {(r["type"], r["isa"], r["tokens"]): r for r in res["rows"]}
    for fmt in dict.fromkeys(r["type"] for r in res["rows"]):
        for isa in res["isas"]:
            cells = []
            for t in toks:
                r = by[(fmt, isa, t)]
                cells.append(f" {r['weight_GBps']:>6.2f} ({r['weight_bytes'] / r['best_s'] / 1e9:>5.2f})")
            first = by[(fmt, isa, toks[0])]
            lines.append(f"{fmt:<8} {isa:<11}" + "".join(cells) + f" {first['fraction_of_read']:>10.1%}")
    lines.append(
        f"{'x'.join(map(str, res['shape']))}: read bandwidth {res['read_GBps']:.1f} GB/s, "
        f"{res['threads']} threads; GB/s = stored weight bytes per second"
    )
    return lines
