"""OffloadConfig: what the expert runtime may use (RAM budget, GPU slots, prefetch, where the slots live)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OffloadConfig:
    """What the expert runtime may use: the plan makes it (`Plan.offload`); tests make their own."""

    ram_budget: int | None = None  # bytes of routed experts kept resident; None: unbounded
    gpu_slots: int = 0
    prefetch: bool = True
    prefetch_mode: str = "advise"  # advise: kernel readahead, no copy, no wait; read: read on the worker thread
    device: str = "cpu"  # where the model's dense parts and the slots live
    predict_extra: int = 0  # guess top_k + extra experts per token for the next layer
    freq_weight: float = 0.0  # blend of past routing frequency into the guess (0: router only)
    predict: bool | None = None  # guess the next layer's experts; None: when a guess can be acted on (prefetch on
    # and a RAM budget or GPU slots), since each guess costs a router matmul (3 MB of float32 reads per K2.5 layer
    # on the bench preset, 11 MB on K2.5)
    hot: tuple[tuple[int, int], ...] = ()  # (layer, expert) a routing profile ranks hottest, most picked first:
    # under a RAM budget they are read at load time and never evicted (ExpertStore.hold)
    hold_share: float = 0.5  # at most this share of the budget is held for them

    def __post_init__(self) -> None:
        if self.ram_budget is not None and self.ram_budget <= 0:
            raise ValueError(f"ram_budget = {self.ram_budget}; give a positive number of bytes or None")
        if self.gpu_slots < 0:
            raise ValueError(f"gpu_slots = {self.gpu_slots}; give 0 or more")
        if not 0.0 <= self.hold_share < 1.0:
            raise ValueError(f"hold_share = {self.hold_share}; expected a fraction in [0, 1)")
        if self.prefetch_mode not in ("advise", "read"):
            raise ValueError(f"prefetch_mode = {self.prefetch_mode!r}; choose advise or read")
