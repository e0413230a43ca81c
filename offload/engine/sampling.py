"""Turning logits into the next token: greedy, or temperature with top-k, top-p and min-p filters, seeded."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from offload.errors import OffloadError

GREEDY_BELOW = 1e-5  # a temperature under this is greedy (vLLM's rule): dividing by it would overflow to NaN


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """temperature 0 (or below GREEDY_BELOW) means greedy; the filters apply in the order top-k, top-p, min-p, then
    one draw. The likeliest token always survives the filters, however small top_p or large min_p."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0  # 0: no limit
    min_p: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise OffloadError(f"temperature = {self.temperature}; use 0 (greedy) or a positive finite value")
        if not 0 < self.top_p <= 1:
            raise OffloadError(f"top_p = {self.top_p}; expected 0 < top_p <= 1")
        if self.top_k < 0:
            raise OffloadError(f"top_k = {self.top_k}; use 0 (off) or a positive count")
        if not 0 <= self.min_p < 1:
            raise OffloadError(f"min_p = {self.min_p}; expected 0 <= min_p < 1")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise OffloadError(f"seed = {self.seed}; expected 0 <= seed < 2**63")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


class Sampler:
    """Draws tokens with its own generator, so a seed reproduces a run whatever else uses torch's RNG."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [V] -> the filtered distribution [V] float32 that `__call__` draws from."""
        p = self.params
        logits = logits.float()
        scaled = (logits - logits.max()) / p.temperature  # shifted first: a tiny temperature cannot overflow
        if p.top_k and p.top_k < scaled.shape[-1]:
            kth = scaled.topk(p.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = scaled.softmax(dim=-1)
        if p.top_p < 1:
            sorted_p, order = probs.sort(descending=True)
            before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly ahead of each token
            drop = torch.zeros_like(probs, dtype=torch.bool)
            drop[order] = before >= p.top_p  # keep the smallest prefix reaching top_p
            drop[order[0]] = False  # and the best token, even when top_p rounds to 0 in float32 (5e-324)
            probs = probs.masked_fill(drop, 0.0)
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        return probs / probs.sum()

    def __call__(self, logits: torch.Tensor) -> int:
        """logits [V] -> token id."""
        if self.params.greedy:
            return int(logits.argmax())
        return int(torch.multinomial(self.probs(logits), 1, generator=self.generator))
