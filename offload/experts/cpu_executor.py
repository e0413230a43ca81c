"""Routed experts computed on the CPU where they sit: straight from the mapped checkpoint, nothing copied.

INT4 group-32 checkpoints (K2.5) go through the native CPU kernel on the packed layout in place; other formats, or
a machine where the kernel cannot be built, dequantize each expert and multiply.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import torch

from kernels.cpu_int4 import Int4Expert, int4_grouped_ffn_cpu, native_build
from kernels.ffn import grouped_ffn
from offload.checkpoint import Checkpoint
from offload.checkpoint.dequant import dense_weight
from offload.checkpoint.layout import expert_module

log = logging.getLogger(__name__)
PROJS = ("gate_proj", "up_proj", "down_proj")


def int4_experts(ckpt: Checkpoint) -> bool:
    """True when the routed experts are INT4 group 32 (the layout the native kernel and GPU slots take)."""
    cfg = ckpt.config
    module = expert_module(cfg.moe_layers[0] if len(cfg.moe_layers) else 0, 0, "up_proj")
    q = cfg.quant
    return q.format == "int4" and q.group_size == 32 and q.quantizes(module, cfg.tensor_prefix)


class CpuExecutor:
    """Computes any subset of a layer's routed experts on the CPU, reading their weights from the mapping."""

    def __init__(self, ckpt: Checkpoint, dtype: torch.dtype = torch.bfloat16, native: bool | None = None) -> None:
        """native: use the INT4 CPU kernel (None: when the checkpoint's experts are INT4 group 32 and it builds)."""
        self.ckpt = ckpt
        self.dtype = dtype
        self.int4 = int4_experts(ckpt)
        if native and not self.int4:
            raise ValueError(f"the native kernel reads INT4 group-32 experts; this checkpoint stores "
                             f"{ckpt.config.quant.format}")  # fmt: skip
        self.native = bool(self.int4 and native is not False and native_build() is not None)
        self._views: dict[tuple[int, int], Int4Expert] = {}
        log.info("CPU experts: %s", "native INT4 kernel" if self.native else "dequantize and multiply")

    def weights(self, layer: int, expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gate [I, D], up [I, D], down [D, I]) in the compute dtype."""
        w = (dense_weight(self.ckpt.linear(expert_module(layer, expert, p)), self.ckpt.config.quant, self.dtype)
             for p in PROJS)  # fmt: skip
        gate, up, down = w
        return gate, up, down

    def packed(self, layer: int, expert: int) -> Int4Expert:
        """((packed, scale) of gate, up, down): zero-copy views of the mapped shards, made once per expert (views
        hold no memory of their own; making six of them costs more than the kernel on a small expert)."""
        found = self._views.get((layer, expert))
        if found is None:
            stored = [self.ckpt.linear(expert_module(layer, expert, p)) for p in PROJS]
            gate, up, down = ((s["weight_packed"], s["weight_scale"]) for s in stored)
            found = self._views[(layer, expert)] = (gate, up, down)
        return found

    def compute(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                experts: Collection[int]) -> torch.Tensor:  # fmt: skip
        """sum over (t, k) with ids[t, k] in `experts` of weights[t, k] * expert(x[t]): [T, D] float32 on the CPU."""
        if self.native:
            packed = {e: self.packed(layer, e) for e in experts}
            return int4_grouped_ffn_cpu(x.float().contiguous(), ids.contiguous(), weights.float().contiguous(), packed)
        return grouped_ffn(x, ids, weights, lambda e: self.weights(layer, e), only=set(experts))
