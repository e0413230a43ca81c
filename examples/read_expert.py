"""Open a checkpoint, look up one routed expert's bytes, and run it on a hidden state.

    python examples/read_expert.py --model models/mini --layer 1 --expert 7

Works on any supported folder (a real Kimi K2.5 download too): nothing but the expert's pages is read.
"""

from __future__ import annotations

import argparse

import torch

from kernels.fp8 import dequantize_fp8
from kernels.int4 import dequantize_int4
from offload.checkpoint import Checkpoint


def weight(tensors: dict[str, torch.Tensor], group: int, block: tuple[int, int]) -> torch.Tensor:
    """A Linear's float32 weight [out, in] from whichever format the checkpoint stores."""
    if "weight_packed" in tensors:
        return dequantize_int4(
            tensors["weight_packed"], tensors["weight_scale"], int(tensors["weight_shape"][1]), group
        )
    if "weight_scale_inv" in tensors:
        return dequantize_fp8(tensors["weight"], tensors["weight_scale_inv"], block)
    return tensors["weight"].float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--expert", type=int, default=0)
    args = ap.parse_args()
    with Checkpoint(args.model) as ck:
        c = ck.config
        for r in ck.expert_ranges(args.layer, args.expert):
            print(f"bytes {r.start:>12,} .. {r.end:>12,} of {r.path.name} ({r.length:,} B)")
        w = {
            proj: weight(
                ck.linear(f"model.layers.{args.layer}.mlp.experts.{args.expert}.{proj}"),
                c.quant.group_size,
                c.quant.block,
            )
            for proj in ("gate_proj", "up_proj", "down_proj")
        }
        x = torch.randn(1, c.hidden_size)  # [1, H]
        y = (torch.nn.functional.silu(x @ w["gate_proj"].T) * (x @ w["up_proj"].T)) @ w["down_proj"].T  # [1, H]
        print(
            f"expert ({args.layer}, {args.expert}) of a {c.layout} checkpoint: |x| {x.norm():.3f} -> |y| {y.norm():.3f}"
        )


if __name__ == "__main__":
    main()
