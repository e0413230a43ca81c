"""The simplest expert runtime: dequantize each needed expert from the mapped checkpoint and multiply on the CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
        out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)  # [T, D]
        self.calls += 1
        # one host sync per layer: which experts this batch needs
        for expert in torch.unique(ids).tolist():
            tok, slot = torch.nonzero(ids == expert, as_tuple=True)  # tokens routed to `expert`, and which of k
            gate, up, down = self.weights(layer, expert)
            xe = x[tok]  # [n, D]
            y = F.linear(F.silu(F.linear(xe, gate)) * F.linear(xe, up), down)  # [n, D]
            out.index_add_(0, tok, y.float() * weights[tok, slot, None])
            self.expert_runs += 1
        return out
