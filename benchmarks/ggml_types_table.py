"""A table of the ggml types: bits per weight, and the largest |ours - gguf| over random valid blocks, for the NumPy
reference and the torch path (float32). Not a test; a check to run by hand and read.

    python benchmarks/ggml_types_table.py [--rows 64] [--blocks 8] [--seed 0]
"""

from __future__ import annotations

import argparse

import gguf
import numpy as np
import torch
from gguf import quants

from kernels.formats import GGML_BLOCKS, ggml_bits_per_weight
from kernels.ggml import dequantize_ggml, dequantize_ggml_ref
from kernels.ggml_random import random_ggml_blocks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--blocks", type=int, default=8, help="blocks per row")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{'type':8} {'bits/w':>7} {'block':>5} {'bytes':>5} {'max|ref-gguf|':>14} {'max|torch-gguf|':>16}")
    for fmt, (block_size, type_size) in GGML_BLOCKS.items():
        in_features = block_size * args.blocks
        data = random_ggml_blocks(fmt, args.rows, in_features, rng)
        want = quants.dequantize(data, gguf.GGMLQuantizationType[fmt.upper()])
        ref = dequantize_ggml_ref(data, fmt, in_features)
        ours = dequantize_ggml(torch.from_numpy(data), fmt, in_features).numpy()
        print(
            f"{fmt:8} {ggml_bits_per_weight(fmt):7.4f} {block_size:5} {type_size:5} "
            f"{np.abs(ref - want).max():14.3g} {np.abs(ours - want).max():16.3g}"
        )


if __name__ == "__main__":
    main()
