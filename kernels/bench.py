"""Kernel benchmarks for `kimi-offload bench-kernels`: what fraction of the machine's read bandwidth each CPU INT4
path reaches on an expert's matrices, weights cold-ish (rotating over more matrices than the L3 holds).

Functions return plain dicts (units in the key names: `_s` seconds, `_GBps` 10^9 bytes per second) and never
print; `format_table` turns results into lines for the CLI. Benchmarks are not tests: nothing here asserts speed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from kernels.cpu_int4 import (
    GROUP,
    int4_expert_ffn_cpu,
    int4_linear_int4pack,
    int4_linear_native,
    int4_linear_numpy,
    int4_linear_torch,
    native_build,
    to_int4pack,
)
from kernels.int4 import dequantize_int4

# enough distinct matrices that each comes back after the others have flushed a 32 MiB L3 several times over
ROTATION_BYTES = 128 * 2**20
CANDIDATES = ("numpy", "torch", "torch_int4pack", "native")


def measure_read_bandwidth(seconds: float = 1.0, nbytes: int = 1 << 30) -> float:
    """DRAM read bandwidth in GB/s: the median of timed torch float32 sums over an `nbytes` buffer (far larger than
    L3), with torch's threads."""
    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    buf.sum()  # first touch: fault the pages in outside the timing
    rates: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(rates) < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        buf.sum()
        rates.append(buf.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def _random_linear(out_f: int, in_f: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    packed = torch.randint(-(2**31), 2**31 - 1, (out_f, in_f // 8), dtype=torch.int32, generator=g)
    scale = (torch.rand(out_f, in_f // GROUP, generator=g) * 0.02 + 0.001).to(torch.bfloat16)
    return packed, scale


def _time_calls(call: Callable[[int], object], n_items: int, repeat: int, max_seconds: float) -> list[float]:
    """Seconds of each call(i) for i = 0, 1, ... over the rotation, `repeat` calls or until `max_seconds` (at
    least 3); one untimed warm-up call."""
    call(n_items - 1)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    for i in range(repeat):
        t0 = time.perf_counter()
        call(i % n_items)
        times.append(time.perf_counter() - t0)
        if len(times) >= 3 and time.perf_counter() > deadline:
            break
    return times


def _row(name: str, t: int, times: list[float], weight_bytes: int, packed_bytes: int, read: float) -> dict[str, Any]:
    s = statistics.median(times)
    return {
        "candidate": name,
        "tokens": t,
        "calls": len(times),
        "seconds_per_call_s": s,
        "best_s": min(times),
        "int4_GBps": packed_bytes / s / 1e9,
        "weight_GBps": weight_bytes / s / 1e9,
        "fraction_of_read": weight_bytes / s / 1e9 / read,
    }


def bench_int4_cpu(
    shape: tuple[int, int] = (2048, 7168),
    tokens: Sequence[int] = (1, 4, 32),
    experts: int | None = None,
    repeat: int = 200,
    max_seconds: float = 3.0,
    candidates: Sequence[str] = CANDIDATES,
    read_GBps: float | None = None,
) -> dict[str, Any]:
    """One INT4 matrix [out, in] times T tokens, per candidate: seconds per call (median), weight GB/s (packed
    int4 + bf16 scales, the bytes read), int4 GB/s (packed bytes only) and the fraction of the read bandwidth
    (measured here unless given). Rotates over `experts` distinct matrices (default: 64, or more to fill 128 MiB).
    torch_int4pack first repacks every matrix into torch's layout, a one-time cost reported apart."""
    out_f, in_f = shape
    packed_bytes = out_f * in_f // 2
    weight_bytes = packed_bytes + out_f * (in_f // GROUP) * 2
    n = experts or max(64, math.ceil(ROTATION_BYTES / weight_bytes))
    unknown = set(candidates) - set(CANDIDATES)
    if unknown:
        raise ValueError(f"unknown candidates {sorted(unknown)}; expected some of {CANDIDATES}")
    build = native_build()
    if build is None:
        candidates = [c for c in candidates if c != "native"]
    read = read_GBps or measure_read_bandwidth()
    g = torch.Generator().manual_seed(0)
    mats = [_random_linear(out_f, in_f, g) for _ in range(n)]
    result: dict[str, Any] = {
        "shape": [out_f, in_f],
        "experts": n,
        "weight_bytes": weight_bytes,
        "packed_bytes": packed_bytes,
        "read_GBps": read,
        "threads": torch.get_num_threads(),
        "native_compile_s": None if build is None else build.compile_s,
        "rows": [],
    }
    calls: dict[str, Callable[[torch.Tensor, int], object]] = {
        "numpy": lambda x, i: int4_linear_numpy(x, *mats[i]),
        "torch": lambda x, i: int4_linear_torch(x, *mats[i]),
        "native": lambda x, i: int4_linear_native(x, *mats[i]),
    }
    if "torch_int4pack" in candidates:
        t0 = time.perf_counter()
        packs = [to_int4pack(*m) for m in mats]
        result["int4pack_convert_s_per_matrix"] = (time.perf_counter() - t0) / n
        calls["torch_int4pack"] = lambda x, i: int4_linear_int4pack(x, *packs[i])
    for t in tokens:
        x = torch.randn(t, in_f, generator=g)
        for name in candidates:
            times = _time_calls(lambda i, f=calls[name], x=x: f(x, i), n, repeat, max_seconds)  # type: ignore[misc]
            result["rows"].append(_row(name, t, times, weight_bytes, packed_bytes, read))
    return result


def bench_expert_ffn_cpu(
    dims: tuple[int, int] = (7168, 2048),
    tokens: Sequence[int] = (1, 4, 32),
    experts: int | None = None,
    repeat: int = 100,
    max_seconds: float = 3.0,
    read_GBps: float | None = None,
) -> dict[str, Any]:
    """A whole expert, down(silu(gate x) * up x) with (hidden D, inter I) = `dims`, through `int4_expert_ffn_cpu`
    (the native kernel, or the torch path when it is unavailable) and through dense torch after dequantizing."""
    d, i = dims
    packed_bytes = 3 * d * i // 2
    weight_bytes = packed_bytes + 2 * i * (d // GROUP) * 2 + d * (i // GROUP) * 2  # + bf16 scales of the three
    n = experts or max(16, math.ceil(ROTATION_BYTES / weight_bytes))
    read = read_GBps or measure_read_bandwidth()
    g = torch.Generator().manual_seed(1)
    bank = [(_random_linear(i, d, g), _random_linear(i, d, g), _random_linear(d, i, g)) for _ in range(n)]

    def dense(x: torch.Tensor, e: int) -> torch.Tensor:
        gw, uw, dw = (dequantize_int4(p, s, p.shape[1] * 8, GROUP) for p, s in bank[e])
        return torch.nn.functional.linear(torch.nn.functional.silu(x @ gw.t()) * (x @ uw.t()), dw)

    build = native_build()
    result: dict[str, Any] = {
        "dims": [d, i],
        "experts": n,
        "weight_bytes": weight_bytes,
        "packed_bytes": packed_bytes,
        "read_GBps": read,
        "threads": torch.get_num_threads(),
        "native": build is not None,
        "rows": [],
    }
    for t in tokens:
        x = torch.randn(t, d, generator=g) * 0.1
        for name, f in (("int4_expert_ffn_cpu", lambda x, e: int4_expert_ffn_cpu(x, *bank[e])), ("torch", dense)):
            times = _time_calls(lambda e, f=f, x=x: f(x, e), n, repeat, max_seconds)  # type: ignore[misc]
            result["rows"].append(_row(name, t, times, weight_bytes, packed_bytes, read))
    return result


def format_table(results: dict[str, Any] | Sequence[dict[str, Any]]) -> list[str]:
    """Lines of a fixed-width table for one or more results of `bench_int4_cpu` / `bench_expert_ffn_cpu`: GB/s from
    the median call, and from the fastest one (what a quiet machine gives when the median is hurt by other load)."""
    lines = [
        f"{'matrix':<16} {'path':<20} {'T':>3} {'ms/call':>9} {'int4 GB/s':>10} {'read GB/s':>10} {'of bw':>6} "
        f"{'best int4 GB/s':>14}"
    ]
    for res in [results] if isinstance(results, dict) else results:
        label = "x".join(map(str, res.get("shape") or res["dims"])) + ("" if "shape" in res else " ffn")
        for r in res["rows"]:
            lines.append(
                f"{label:<16} {r['candidate']:<20} {r['tokens']:>3} {r['seconds_per_call_s'] * 1e3:>9.3f} "
                f"{r['int4_GBps']:>10.2f} {r['weight_GBps']:>10.2f} {r['fraction_of_read']:>6.1%} "
                f"{r['int4_GBps'] * r['seconds_per_call_s'] / r['best_s']:>14.2f}"
            )
        what = "matrices" if "shape" in res else "experts"
        notes = [f"read bandwidth {res['read_GBps']:.1f} GB/s, {res['threads']} threads, {res['experts']} {what}"]
        if res.get("int4pack_convert_s_per_matrix") is not None:
            notes.append(f"torch int4pack repack {res['int4pack_convert_s_per_matrix'] * 1e3:.0f} ms per matrix")
        if res.get("native_compile_s"):
            notes.append(f"native kernel compiled in {res['native_compile_s']:.1f} s")
        lines.append(f"{label:<16} " + "; ".join(notes))
    return lines
