"""The simplest expert runtime: every needed expert is computed on the CPU from the mapped checkpoint, each call.

INT4 checkpoints (K2.5) go through the native CPU kernel on the packed layout in place; other formats, or a
machine where the kernel cannot be built, dequantize each expert and multiply.
"""

from __future__ import annotations

import logging

import torch

from kernels.cpu_int4 import Int4Expert, int4_grouped_ffn_cpu, native_build
from kernels.ffn import grouped_ffn
from offload.checkpoint import Checkpoint
from offload.checkpoint.dequant import dense_weight
from offload.checkpoint.layout import expert_module

log = logging.getLogger(__name__)
PROJS = ("gate_proj", "up_proj", "down_proj")


class DequantizedExperts:
    """Reads every needed expert from the checkpoint on each call; keeps nothing (the page cache is the cache)."""

    def __init__(self, ckpt: Checkpoint, dtype: torch.dtype = torch.bfloat16, native: bool | None = None) -> None:
        """native: use the INT4 CPU kernel (None: when the checkpoint's experts are INT4 group 32 and it builds)."""
        self.ckpt = ckpt
        self.dtype = dtype
        self.calls = 0
        self.expert_runs = 0
        cfg = ckpt.config
        q = cfg.quant
        module = expert_module(cfg.first_k_dense_replace, 0, "up_proj")
        int4 = q.format == "int4" and q.group_size == 32 and q.quantizes(module, cfg.tensor_prefix)
        if native and not int4:
            raise ValueError(f"the native kernel reads INT4 group-32 experts; this checkpoint stores {q.format}")
        self.native = bool(int4 and native is not False and native_build() is not None)
        log.info("routed experts: %s", "native INT4 CPU kernel" if self.native else "dequantize and multiply")

    def weights(self, layer: int, expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gate [I, D], up [I, D], down [D, I]) in the compute dtype."""
        w = (dense_weight(self.ckpt.linear(expert_module(layer, expert, p)), self.ckpt.config.quant, self.dtype)
             for p in PROJS)  # fmt: skip
        gate, up, down = w
        return gate, up, down

    def packed(self, layer: int, expert: int) -> Int4Expert:
        """((packed, scale) of gate, up, down): zero-copy views of the mapped shards."""
        stored = [self.ckpt.linear(expert_module(layer, expert, p)) for p in PROJS]
        gate, up, down = ((s["weight_packed"], s["weight_scale"]) for s in stored)
        return gate, up, down

    def run(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.native:
            needed = torch.unique(ids).tolist()  # one host sync per layer: which experts this batch needs
            self.expert_runs += len(needed)
            experts = {e: self.packed(layer, e) for e in needed}
            return int4_grouped_ffn_cpu(x.float().contiguous(), ids.contiguous(), weights.float().contiguous(), experts)

        def fetch(expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            self.expert_runs += 1
            return self.weights(layer, expert)

        return grouped_ffn(x, ids, weights, fetch)  # [T, D] float32
