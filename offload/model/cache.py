"""The compressed MLA cache: per token and layer, the normalised latent (kv_lora_rank) and the roped k_pe."""

from __future__ import annotations

import torch

from offload.config import ModelConfig


class CacheFullError(RuntimeError):
    """More tokens than the cache was sized for."""


class LatentCache:
    """kv_lora_rank + qk_rope_head_dim values per token per layer (576 for Kimi), allocated once."""

    def __init__(self, cfg: ModelConfig, max_tokens: int, dtype: torch.dtype, device: torch.device | str = "cpu"):
        if max_tokens < 1:
            raise ValueError(f"max_tokens = {max_tokens}; the cache needs room for at least one token")
        self.max_tokens = max_tokens
        n = cfg.num_hidden_layers
        # empty, not zeros: positions are written before they are read, and untouched pages cost no RAM
        self.latent = torch.empty(n, max_tokens, cfg.kv_lora_rank, dtype=dtype, device=device)  # [L, S, 512]
        self.k_pe = torch.empty(n, max_tokens, cfg.qk_rope_head_dim, dtype=dtype, device=device)  # [L, S, 64]
        self.filled = 0  # leading positions written in every layer (a pass that ran through all of them)
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def nbytes(self) -> int:
        return self.latent.nbytes + self.k_pe.nbytes

    def write(self, layer: int, start: int, latent: torch.Tensor, k_pe: torch.Tensor) -> None:
        """Store tokens start .. start + T - 1 of one layer."""
        end = self.room(start, latent.shape[0])
        self.latent[layer, start:end] = latent
        self.k_pe[layer, start:end] = k_pe

    def room(self, start: int, tokens: int) -> int:
        """start + tokens, after checking that positions start .. start + tokens - 1 fit (else CacheFullError)."""
        end = start + tokens
        if end > self.max_tokens:
            raise CacheFullError(
                f"position {end - 1} does not fit a cache of {self.max_tokens} tokens; "
                "start a new conversation or raise the context length"
            )
        return end

    def passed(self, start: int, tokens: int) -> None:
        """A pass through every layer wrote positions start .. start + tokens - 1."""
        if start <= self.filled:
            self.filled = max(self.filled, start + tokens)

    def load(self, latent: torch.Tensor, k_pe: torch.Tensor) -> None:
        """Positions 0 .. n - 1 of every layer from a saved prefix: latent [L, n, 512], k_pe [L, n, 64]."""
        n = latent.shape[1]
        if n > self.max_tokens:
            raise CacheFullError(f"a saved prefix of {n} tokens does not fit a cache of {self.max_tokens}")
        self.latent[:, :n] = latent
        self.k_pe[:, :n] = k_pe
        self.filled = n

    def prefix(self, n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of positions 0 .. n - 1 of every layer (n <= filled): latent [L, n, 512], k_pe [L, n, 64]."""
        if n > self.filled:
            raise ValueError(f"only {self.filled} positions are complete; asked for {n}")
        return self.latent[:, :n].to(device, copy=True), self.k_pe[:, :n].to(device, copy=True)

    def rows(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's whole cache: latent [max_tokens, 512], k_pe [max_tokens, 64] (views, made once per layer)."""
        views = self._rows.get(layer)
        if views is None:
            views = self._rows[layer] = (self.latent[layer], self.k_pe[layer])
        return views

    def read(self, layer: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens 0 .. length - 1 of one layer: latent [S, 512], k_pe [S, 64] (views)."""
        return self.latent[layer, :length], self.k_pe[layer, :length]
