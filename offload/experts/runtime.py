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

    def native_experts(self, layer: int) -> tuple[str, tuple[str, str, str], int] | None:
        """How a decode token's native layer (kernels/cpu_layer.py) takes this layer's experts through
        `run_decode`: (kind "ggml" or "int4", ggml types of gate, up, down, inter size); None: `run` only."""
        ...

    def run_decode(
        self,
        layer: int,
        ids: list[int],
        weights: list[float],
        finish: Callable[[list[int], list[float]], None],
        next_layer: NextLayer | None = None,
    ) -> None:
        """A decode token's routed experts `ids` with `weights`: makes them available and calls finish(pointers,
        weights), pointers sorted by expert id (3 an expert for ggml types, 6 for INT4), weights in that order."""
        ...
