"""Guessing the next MoE layer's experts from this layer's hidden state, and scoring the guesses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from offload.experts.runtime import NextLayer


@dataclass(slots=True)
class Guesses:
    """Predicted, chosen and both, summed over steps: precision = hit / predicted, recall = hit / chosen."""

    steps: int = 0
    predicted: int = 0
    chosen: int = 0
    hit: int = 0

    @property
    def precision(self) -> float:
        return self.hit / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.hit / self.chosen if self.chosen else 0.0

    def add(self, other: Guesses) -> None:
        self.steps += other.steps
        self.predicted += other.predicted
        self.chosen += other.chosen
        self.hit += other.hit


@dataclass(slots=True)
class Predictor:
    """Layer l+1's router applied to layer l's residual stream picks `top_k + extra` experts per token; with
    `freq_weight` > 0 each expert's share of past choices (scaled to [0, freq_weight]) is added to the choice
    scores first. Per layer and phase ("prefill" or "decode"), guesses are scored against the router's choice."""

    n_layers: int
    n_experts: int
    top_k: int
    extra: int = 0
    freq_weight: float = 0.0
    counts: torch.Tensor = field(init=False)  # [L, E] float32: how often the router chose each expert
    scores: dict[tuple[str, int], Guesses] = field(init=False, default_factory=dict)
    _pending: dict[int, set[int]] = field(init=False, default_factory=dict)
    _counts_np: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.extra < 0 or self.top_k + self.extra > self.n_experts or self.freq_weight < 0:
            raise ValueError(
                f"predict top_k {self.top_k} + extra {self.extra} of {self.n_experts} experts with freq_weight "
                f"{self.freq_weight}: extra and freq_weight must be >= 0 and the total at most the expert count"
            )
        self.counts = torch.zeros(self.n_layers, self.n_experts)
        self._counts_np = self.counts.numpy()  # the same memory: a decode token's update without a torch op

    def guess(self, nxt: NextLayer) -> list[int]:
        """The experts layer `nxt.layer` will likely need, most likely first (by how many tokens want them; for one
        token, by score).
        Remembered, to be scored when that layer's router has chosen."""
        prior = None
        if self.freq_weight > 0:
            row = self.counts[nxt.layer]
            top = float(row.max())
            if top > 0:
                prior = row * (self.freq_weight / top)
        ids = nxt.guess(self.top_k + self.extra, prior)  # [T, n], each row best first
        if ids.shape[0] == 1:
            ranked = ids[0].tolist()  # decode: the router's own order
        else:
            experts, votes = torch.unique(ids, return_counts=True)
            ranked = experts[torch.argsort(votes, descending=True, stable=True)].tolist()
        self._pending[nxt.layer] = set(ranked)
        return ranked

    def observe(self, layer: int, chosen: list[int], counts: torch.Tensor | None, phase: str) -> None:
        """The router of `layer` chose the set `chosen`, `counts` [E] times each (None: once each, a decode
        token's): update frequencies, score the guess made for this layer, if any."""
        if counts is None:
            self._counts_np[layer, chosen] += 1  # distinct ids: one increment each (~2 us; torch's index_put ~50)
        else:
            self.counts[layer] += counts.to(self.counts.dtype)
        guessed = self._pending.pop(layer, None)
        if guessed is None:
            return
        s = self.scores.setdefault((phase, layer), Guesses())
        s.steps += 1
        s.predicted += len(guessed)
        s.chosen += len(chosen)
        s.hit += len(guessed.intersection(chosen))

    def total(self, phase: str) -> Guesses:
        out = Guesses()
        for (p, _), s in self.scores.items():
            if p == phase:
                out.add(s)
        return out

    def forget_pending(self) -> None:
        """Drop guesses not yet scored (a forward pass that stopped early)."""
        self._pending.clear()
