"""The one call the MoE layer makes to get its routed experts computed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True, slots=True)
class NextLayer:
    """How to guess the next MoE layer's experts now: its router applied early to this layer's residual stream."""

    layer: int
    guess: Callable[[int, torch.Tensor | None], torch.Tensor]  # (top_n, prior [E] or None) -> ids [T, top_n]


class ExpertRuntime(Protocol):
    """Runs a layer's routed experts for a batch of tokens; owns where expert weights live and how they move."""

    def run(
        self,
        layer: int,
        x: torch.Tensor,
        ids: torch.Tensor,
        weights: torch.Tensor,
        shared: Callable[[], torch.Tensor] | None = None,
        next_layer: NextLayer | None = None,
    ) -> torch.Tensor:
        """sum_k weights[t, k] * expert_{ids[t, k]}(x[t]) (+ shared()) as a float32 [T, D] tensor.

        x: [T, D] in the compute dtype; ids: [T, k] int64; weights: [T, k] float32 (already normalised and scaled).
        `shared`: the shared expert, to compute while cold experts run elsewhere. `next_layer`: for prefetching.
        """
        ...
