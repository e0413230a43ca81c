"""SwiGLU MLP (dense layers, shared expert) and the MoE layer that asks an expert runtime for its routed part."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.cpu_layer import NativeMlp
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
    native: NativeMlp | None = None  # all three QuantLinears (CPU): one native call (`MLP.of` makes it)

    @classmethod
    def of(cls, gate: Weight, up: Weight, down: Weight) -> MLP:
        """The MLP, with its native call where all three are QuantLinears."""
        if isinstance(gate, QuantLinear) and isinstance(up, QuantLinear) and isinstance(down, QuantLinear):
            return cls(gate, up, down, NativeMlp(gate.weight, up.weight, down.weight))
        return cls(gate, up, down)

    def __call__(self, x: torch.Tensor, float_out: bool = False) -> torch.Tensor:
        """x [T, D] -> [T, D] in x's dtype, or float32 with `float_out` (the shared expert, summed in float32).
        With the native call the activations stay float32 from one conversion in to the output (the decode
        layers of kernels/cpu_layer.py run the same call)."""
        if self.native is not None and x.is_cpu:
            y = self.native(x.reshape(-1, x.shape[-1]).float().contiguous()).view(x.shape)  # [.., D] float32
            return y if float_out else y.to(x.dtype)
        y = linear(F.silu(linear(x, self.gate)) * linear(x, self.up), self.down)
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

    def decode(
        self, h: torch.Tensor, ids: list[int], weights: list[float], finish: Callable[[list[int], list[float]], None]
    ) -> None:
        """A decode token whose attention, norm and routing ran natively (kernels/cpu_layer.py): its routed experts
        through the runtime, which calls `finish` (the native second half, adding them and the shared expert to
        h [1, D] in place) with their pointers; the next layer's guess from h as it is now."""
        nxt = self.lookahead.bind(h) if self.lookahead is not None else None
        self.experts.run_decode(self.layer, ids, weights, finish, nxt)
