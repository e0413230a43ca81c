"""SwiGLU MLP (dense layers, shared expert) and the MoE layer that asks an expert runtime for its routed part."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from offload.experts.runtime import ExpertRuntime
from offload.model.router import Router


@dataclass(frozen=True, slots=True)
class MLP:
    """down(silu(gate(x)) * up(x))."""

    gate: torch.Tensor  # [I, D]
    up: torch.Tensor  # [I, D]
    down: torch.Tensor  # [D, I]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(F.linear(x, self.gate)) * F.linear(x, self.up), self.down)


class MoE:
    """Routed experts (through the runtime, never held here) plus the shared expert."""

    def __init__(self, layer: int, router: Router, shared: MLP | None, experts: ExpertRuntime) -> None:
        self.layer = layer
        self.router = router
        self.shared = shared
        self.experts = experts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, D] -> [T, D]; routed outputs summed in float32."""
        ids, weights = self.router(x)
        out = self.experts.run(self.layer, x, ids, weights)  # [T, D] float32
        if self.shared is not None:
            out = out + self.shared(x).float()
        return out.to(x.dtype)
