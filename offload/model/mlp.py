"""SwiGLU MLP (dense layers, shared expert) and the MoE layer that asks an expert runtime for its routed part."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from offload.experts.runtime import ExpertRuntime, NextLayer
from offload.model.linear import QuantLinear, Weight, linear
from offload.model.norm import rms_norm
from offload.model.router import Router


@dataclass(frozen=True, slots=True)
class MLP:
    """down(silu(gate(x)) * up(x))."""

    gate: Weight  # [I, D]
    up: Weight  # [I, D]
    down: Weight  # [D, I]

    def __call__(self, x: torch.Tensor, float_out: bool = False) -> torch.Tensor:
        """x [T, D] -> [T, D] in x's dtype, or float32 with `float_out` (the shared expert, summed in float32).
        When all three are QuantLinears (CPU) the activations stay float32 between them: one conversion in, none
        between the kernels."""
        gate, up, down = self.gate, self.up, self.down
        if isinstance(gate, QuantLinear) and isinstance(up, QuantLinear) and isinstance(down, QuantLinear):
            xf = x.reshape(-1, x.shape[-1]).float().contiguous()  # [N, D]
            h = F.silu(gate.matmul(xf)).mul_(up.matmul(xf))  # [N, I] float32
            y = down.matmul(h).view(*x.shape[:-1], down.out_features)
            return y if float_out else y.to(x.dtype)
        y = linear(F.silu(linear(x, gate)) * linear(x, up), down)
        return y.float() if float_out else y


@dataclass(frozen=True, slots=True)
class Lookahead:
    """A later MoE layer's norm and router, to apply early to an earlier layer's residual stream (prediction)."""

    layer: int
    norm: torch.Tensor  # [D], that layer's post-attention norm
    eps: float
    router: Router

    def bind(self, h: torch.Tensor) -> NextLayer:
        """h [T, D]: the residual stream now -> the guess the expert runtime may ask for."""

        def guess(top_n: int, prior: torch.Tensor | None) -> torch.Tensor:
            return self.router.select(rms_norm(h, self.norm, self.eps), top_n, prior)[0]  # [T, top_n]

        return NextLayer(self.layer, guess)


class MoE:
    """Routed experts (through the runtime, never held here) plus the shared expert."""

    def __init__(
        self,
        layer: int,
        router: Router,
        shared: MLP | None,
        experts: ExpertRuntime,
        lookahead: Lookahead | None = None,
    ) -> None:
        self.layer = layer
        self.router = router
        self.shared = shared
        self.experts = experts
        self.lookahead = lookahead

    def __call__(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, D] (normed) -> [T, D]; routed outputs summed in float32. h: the residual stream x came from, for
        guessing the next layer's experts."""
        ids, weights = self.router(x)
        shared = self.shared
        nxt = self.lookahead.bind(h) if self.lookahead is not None and h is not None else None
        out = self.experts.run(
            self.layer,
            x,
            ids,
            weights,
            shared=(lambda: shared(x, float_out=True)) if shared is not None else None,
            next_layer=nxt,
        )  # [T, D] float32, shared expert included
        return out.to(x.dtype)
