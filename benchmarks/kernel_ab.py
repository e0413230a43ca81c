"""The ggml CPU library of a git revision against the working tree's, in one process: a bench MoE layer (8 experts
of 512 x 2048, one token each) per type through `ggml_grouped_ffn_cpu`, copies rotated over ~560 MB so they come
from DRAM, rounds alternating in random order, medians (a benchmark, not a CI test).

    python benchmarks/kernel_ab.py --rev HEAD~1 --types q4_0,iq2_xxs [--rounds 16] [--isa avx512vnni]

The type `int4` is the safetensors release's INT4 group-32 layout (random packed words and bf16 scales) through
`int4_grouped_ffn_q8_cpu`, the decode path with int8 activations in the same library.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernels import cpu_ggml  # noqa: E402
from kernels.cpu_int4 import int4_grouped_ffn_q8_cpu  # noqa: E402
from kernels.dequant import StoredWeight  # noqa: E402
from kernels.ggml_random import random_ggml_blocks  # noqa: E402
from kernels.native import best_isa, build  # noqa: E402


def library_at(rev: str, isa: str, where: Path) -> cpu_ggml._Native:
    """kernels/csrc as of `rev` (the .cpp and the headers it includes), written to `where`, built and loaded."""
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, "kernels/csrc/"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in names:
        blob = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, capture_output=True, check=True).stdout
        (where / Path(name).name).write_bytes(blob)
    nb = build(where / "ggml_cpu.cpp", f"kimi_ggml_ab_{isa}", cpu_ggml.FLAGS[isa], isa)
    real = ctypes.CDLL

    class Older(ctypes.CDLL):  # an older library lacks later entry points; the grouped call needs none of them
        def __getattr__(self, name: str) -> object:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return types.SimpleNamespace(argtypes=None, restype=None)

    ctypes.CDLL = Older  # type: ignore[misc]
    try:
        return cpu_ggml._Native(nb)
    finally:
        ctypes.CDLL = real  # type: ignore[misc]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", required=True)
    ap.add_argument("--types", default="q4_0,q8_0")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", default=None)
    args = ap.parse_args()
    isa = args.isa or best_isa()
    if isa is None:
        raise SystemExit("the native kernels need an x86-64 CPU with AVX2")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        old = library_at(args.rev, isa, Path(tmp))
    tree = cpu_ggml._Native(build(cpu_ggml.SOURCE, f"kimi_ggml_cpu_{isa}", cpu_ggml.FLAGS[isa], isa))
    libs = {args.rev: old, "tree": tree}
    rng = np.random.default_rng(0)

    def weight(fmt: str, rows: int, cols: int) -> StoredWeight:
        return StoredWeight(fmt, (rows, cols), {"data": torch.from_numpy(random_ggml_blocks(fmt, rows, cols, rng))})

    orig = cpu_ggml._native

    def int4(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:  # packed int32 [rows, cols / 8], bf16 scales
        packed = torch.from_numpy(
            rng.integers(-(2**31), 2**31, size=(rows, cols // 8), dtype=np.int64).astype(np.int32)
        )
        return packed, (torch.rand(rows, cols // 32) * 0.02 + 0.001).bfloat16()

    for fmt in args.types.split(","):
        if fmt == "int4":
            sets: list[dict] = [
                {e: (int4(512, 2048), int4(512, 2048), int4(2048, 512)) for e in range(8)} for _ in range(40)
            ]
            run = int4_grouped_ffn_q8_cpu
        else:
            shapes = ((512, 2048), (512, 2048), (2048, 512))
            sets = [
                {e: cpu_ggml.check_expert(tuple(weight(fmt, *sh) for sh in shapes), 2048) for e in range(8)}  # type: ignore[arg-type]
                for _ in range(40)
            ]
            run = cpu_ggml.ggml_grouped_ffn_cpu
        x, ids, wts = torch.randn(1, 2048) * 0.1, torch.arange(8)[None], torch.rand(1, 8)
        times: dict[str, list[float]] = {n: [] for n in libs}
        for _ in range(args.rounds):
            order = list(libs)
            random.shuffle(order)
            for n in order:
                cpu_ggml._native = lambda isa=None, lib=libs[n]: lib  # type: ignore[assignment]
                t0 = time.perf_counter()
                for s in sets:
                    run(x, ids, wts, s)
                times[n].append((time.perf_counter() - t0) / len(sets) * 1e6)
        cpu_ggml._native = orig
        print(fmt, "  ".join(f"{n}: {statistics.median(v):.0f} us" for n, v in times.items()), flush=True)


if __name__ == "__main__":
    main()
