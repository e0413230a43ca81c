"""The simplest expert runtime: dequantize each needed expert from the mapped checkpoint and multiply on the CPU."""

from __future__ import annotations

import torch

from kernels.ffn import grouped_ffn
from offload.checkpoint import Checkpoint
from offload.checkpoint.dequant import dense_weight
from offload.checkpoint.layout import expert_module


class DequantizedExperts:
    """Reads every needed expert from the checkpoint on each call; keeps nothing (the page cache is the cache)."""

    def __init__(self, ckpt: Checkpoint, dtype: torch.dtype = torch.bfloat16) -> None:
        self.ckpt = ckpt
        self.dtype = dtype
        self.calls = 0
        self.expert_runs = 0

    def weights(self, layer: int, expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gate [I, D], up [I, D], down [D, I]) in the compute dtype."""
        w = (
            dense_weight(self.ckpt.linear(expert_module(layer, expert, proj)), self.ckpt.config.quant, self.dtype)
            for proj in ("gate_proj", "up_proj", "down_proj")
        )
        gate, up, down = w
        return gate, up, down

    def run(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        self.calls += 1

        def fetch(expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            self.expert_runs += 1
            return self.weights(layer, expert)

        return grouped_ffn(x, ids, weights, fetch)  # [T, D] float32
