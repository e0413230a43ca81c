"""The simplest expert runtime: every needed expert computed on the CPU from the mapped checkpoint, every call.

No budget, no prediction, no GPU: the reference the offloading runtime must match token for token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from offload.checkpoint import Checkpoint
from offload.experts.cpu_executor import CpuExecutor
from offload.experts.runtime import NextLayer


class DequantizedExperts(CpuExecutor):
    """Reads every needed expert from the checkpoint on each call; keeps nothing (the page cache is the cache)."""

    def __init__(self, ckpt: Checkpoint, dtype: torch.dtype = torch.bfloat16, native: bool | None = None) -> None:
        super().__init__(ckpt, dtype, native)
        self.calls = 0
        self.expert_runs = 0

    def run(
        self,
        layer: int,
        x: torch.Tensor,
        ids: torch.Tensor,
        weights: torch.Tensor,
        shared: Callable[[], torch.Tensor] | None = None,
        next_layer: NextLayer | None = None,
    ) -> torch.Tensor:
        self.calls += 1
        needed = torch.unique(ids).tolist()  # one host sync per layer: which experts this batch needs
        self.expert_runs += len(needed)
        out = self.compute(layer, x, ids, weights, needed)  # [T, D] float32
        return out if shared is None else out + shared().float()

    def native_experts(self, layer: int) -> None:
        """Never: this reference runtime keeps every decode token on `run` (the model's torch-and-kernels path),
        which the offloading runtime's native decode layers must match bit for bit."""
        return None

    def run_decode(
        self,
        layer: int,
        ids: list[int],
        weights: list[float],
        finish: Callable[[list[int], list[float]], None],
        next_layer: NextLayer | None = None,
    ) -> None:
        raise NotImplementedError("DequantizedExperts has no native decode layers (native_experts is None)")
