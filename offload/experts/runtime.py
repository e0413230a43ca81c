"""The one call the MoE layer makes to get its routed experts computed."""

from __future__ import annotations

from typing import Protocol

import torch


class ExpertRuntime(Protocol):
    """Runs a layer's routed experts for a batch of tokens; owns where expert weights live and how they move."""

    def run(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_k weights[t, k] * expert_{ids[t, k]}(x[t]) as a float32 [T, D] tensor.

        x: [T, D] in the compute dtype; ids: [T, k] int64; weights: [T, k] float32 (already normalised and scaled).
        """
        ...
