"""The same matrices through ggml's CPU matmul and through kimi-offload's ggml kernel, per type and token count (a
benchmark, not a CI test).

For each type: random valid blocks of an [out, in] matrix (kernels.ggml_random) are written to a file; ggml's own
`ggml_mul_mat` (benchmarks/ggml_matmul.c, compiled here against the libggml of a llama.cpp build, one thread pool, the
plain CPU path as llama-bench's `--repack 0`) and `kernels.cpu_ggml.ggml_linear_cpu` each multiply T random tokens by
copies of those bytes, cycling through a rotation of `--rotation-mib` (default 512 MiB, larger than the last-level
cache, so each call reads its weight from DRAM as a decode step does; 0 keeps one copy, cache-resident). Rounds
alternate ggml and ours; each figure is the median call over the rounds. Weight GB/s = stored bytes / second.

    python benchmarks/ggml_vs_ours.py --llama-src .../vendor/llama.cpp [--types q4_0,q4_k,...] [--shape 512x2048]
        [--tokens 1,4,32] [--threads 2] [--rotation-mib 512] [--rounds 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernels.bench import _time_calls, measure_read_bandwidth  # noqa: E402
from kernels.cpu_ggml import ggml_linear_cpu, native_build  # noqa: E402
from kernels.dequant import StoredWeight  # noqa: E402
from kernels.formats import GGML_EXPERT_TYPES, ggml_row_bytes  # noqa: E402
from kernels.ggml_random import random_ggml_blocks  # noqa: E402
from kernels.native import best_isa  # noqa: E402


def build_ggml_matmul(llama_src: Path, work: Path) -> Path:
    """Compile benchmarks/ggml_matmul.c against llama.cpp's ggml headers and the libggml of its build/bin."""
    lib = llama_src / "build" / "bin"
    if not (lib / "libggml.so").exists():
        raise SystemExit(f"{lib}/libggml.so not found: build llama.cpp first (../shared/reference/GGUF.md)")
    exe = work / "ggml_matmul"
    cc = os.environ.get("CC") or shutil.which("cc") or "gcc"
    cmd = [cc, "-O2", "-o", str(exe), str(ROOT / "benchmarks" / "ggml_matmul.c"), f"-I{llama_src / 'ggml' / 'include'}",
           f"-L{lib}", "-lggml", "-lggml-base", "-lggml-cpu", f"-Wl,-rpath,{lib}"]  # fmt: skip
    subprocess.run(cmd, check=True)
    return exe


def ggml_seconds(exe: Path, fmt: str, shape: tuple[int, int], t: int, threads: int, copies: int, calls: int,
                 weights: Path) -> list[float]:  # fmt: skip
    proc = subprocess.run(
        [str(exe), fmt, str(shape[0]), str(shape[1]), str(t), str(threads), str(copies), str(calls), str(weights)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"ggml_matmul {fmt} failed ({proc.returncode}): {proc.stderr.strip()}")
    out = proc.stdout
    return [float(s) for s in json.loads(out.strip().splitlines()[-1])["seconds"]]


def ours_seconds(mats: list[StoredWeight], t: int, calls: int, isa: str | None) -> list[float]:
    in_f = mats[0].shape[1]
    x = torch.rand(t, in_f) * 2 - 1
    y = torch.empty(t, mats[0].shape[0])

    def call(i: int) -> object:
        return ggml_linear_cpu(x, mats[i], y, isa)

    return _time_calls(call, len(mats), calls, max_seconds=1e9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-src", type=Path, required=True, help="llama.cpp source whose build/bin holds libggml.so")
    ap.add_argument("--types", default=",".join(GGML_EXPERT_TYPES))
    ap.add_argument("--shape", default="2048x7168", help="[out]x[in]; K2.5's gate/up is 2048x7168")
    ap.add_argument("--tokens", default="1,4,32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rotation-mib", type=int, default=512)
    ap.add_argument("--calls", type=int, default=40, help="calls per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--isa", default=None, help="our build: avx2 or avx512vnni (default: the best this CPU runs)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out_f, in_f = (int(v) for v in args.shape.split("x"))
    tokens = [int(t) for t in args.tokens.split(",")]
    isa = args.isa or best_isa()
    if native_build(isa) is None:
        raise SystemExit(f"our native ggml kernel ({isa}) did not build here")
    read = measure_read_bandwidth()
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        exe = build_ggml_matmul(args.llama_src, work)
        for fmt in args.types.split(","):
            nbytes = out_f * ggml_row_bytes(fmt, in_f)
            copies = max(1, math.ceil(args.rotation_mib * 2**20 / nbytes))
            data = random_ggml_blocks(fmt, out_f, in_f, rng)
            wfile = work / f"{fmt}.bin"
            wfile.write_bytes(data.tobytes())
            mats = [StoredWeight(fmt, (out_f, in_f), {"data": torch.from_numpy(data.copy())}) for _ in range(copies)]
            for t in tokens:
                g_med, o_med = [], []
                for _ in range(args.rounds):  # alternate
                    g_med.append(statistics.median(ggml_seconds(exe, fmt, (out_f, in_f), t, args.threads, copies,
                                                                args.calls, wfile)))  # fmt: skip
                    o_med.append(statistics.median(ours_seconds(mats, t, args.calls, isa)))
                g, o = statistics.median(g_med), statistics.median(o_med)
                row = {"type": fmt, "tokens": t, "weight_bytes": nbytes, "copies": copies,
                       "ggml_s": g, "ours_s": o, "ggml_GBps": nbytes / g / 1e9, "ours_GBps": nbytes / o / 1e9,
                       "ratio": g / o}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
            del mats
    print(f"\n{out_f}x{in_f}, {args.threads} threads, our build {isa}, rotation {args.rotation_mib} MiB, "
          f"read bandwidth {read:.1f} GB/s; weight GB/s ours / ggml (ratio = ggml time / ours)")  # fmt: skip
    print(f"{'type':<8}" + "".join(f" {f'T={t}':>22}" for t in tokens))
    by = {(r["type"], r["tokens"]): r for r in rows}
    for fmt in dict.fromkeys(r["type"] for r in rows):
        cells = [by[(fmt, t)] for t in tokens]
        print(
            f"{fmt:<8}"
            + "".join(f" {c['ours_GBps']:>6.2f} / {c['ggml_GBps']:>6.2f} {c['ratio']:>5.2f}x" for c in cells)
        )
    if args.json:
        args.json.write_text(
            json.dumps({"read_GBps": read, "threads": args.threads, "isa": isa, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
