"""Open a checkpoint, look up one routed expert's bytes, and run it on a hidden state.

    python examples/read_expert.py --model models/mini --layer 1 --expert 7

Works on any supported folder (a real Kimi K2.5 download too): nothing but the expert's pages is read.
"""

from __future__ import annotations

import argparse

import torch

from offload.checkpoint import Checkpoint, open_checkpoint
from kernels.dequant import dequantize
from offload.parts import expert_module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--expert", type=int, default=0)
    args = ap.parse_args()
    with open_checkpoint(args.model) as ck:
        c = ck.config
        for r in ck.expert_ranges(args.layer, args.expert):
            print(f"bytes {r.start:>12,} .. {r.end:>12,} of {r.path.name} ({r.length:,} B)")
        w = {  # float32 [out, in] from whichever format the checkpoint stores (INT4, FP8 or plain)
            proj: dequantize(ck.weight(expert_module(args.layer, args.expert, proj)), torch.float32)
            for proj in ("gate_proj", "up_proj", "down_proj")
        }
        x = torch.randn(1, c.hidden_size)  # [1, H]
        y = (torch.nn.functional.silu(x @ w["gate_proj"].T) * (x @ w["up_proj"].T)) @ w["down_proj"].T  # [1, H]
        print(
            f"expert ({args.layer}, {args.expert}) of a {ck.layout} checkpoint: |x| {x.norm():.3f} -> |y| {y.norm():.3f}"
        )


if __name__ == "__main__":
    main()
