"""One decode token's native attention call (kernels/cpu_mla.py) at K2.5's shape, one layer, Q8_0 weights (random),
bf16 cache, at several cached lengths (a benchmark, not a CI test).

    python benchmarks/mla_decode_shape.py [--positions 64,1024,4096] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernels.cpu_mla import MlaDecoder  # noqa: E402
from tests.test_cpu_mla import _weights  # noqa: E402  (random Q8_0 attention weights of any shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--positions", default="64,1024,4096")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # K2.5: hidden 7168, 64 heads, nope 128, rope 64, v 128, kv_lora_rank 512, q_lora_rank 1536
    call = MlaDecoder(_weights(np.random.default_rng(0), 7168, 64, 128, 64, 128, 512, 1536, True))
    for s in (int(p) for p in args.positions.split(",")):
        latent, k_pe = torch.randn(s + 1, 512).bfloat16(), torch.randn(s + 1, 64).bfloat16()
        cos, sin, x = torch.rand(32), torch.rand(32), torch.randn(1, 7168)
        call(x, latent, k_pe, s, cos, sin)
        n = 20 if s < 4096 else 5
        t0 = time.perf_counter()
        for _ in range(n):
            call(x, latent, k_pe, s, cos, sin)
        print(f"K2.5 attention, one layer, {s} cached positions: {(time.perf_counter() - t0) / n * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
