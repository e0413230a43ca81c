"""The decoder stack: embed, (attention, MLP or MoE) per layer, final norm, lm_head."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial

import torch

from kernels.cpu_layer import DecodeLayer
from kernels.dequant import StoredWeight, dequantize
from offload.config import ModelConfig
from offload.model.attention import MLA
from offload.model.cache import LatentCache
from offload.model.cancel import Cancelled, check
from offload.model.linear import Weight, linear
from offload.model.mlp import MLP, MoE
from offload.model.norm import rms_norm
from offload.model.rope import Rope

__all__ = ["Block", "Cancelled", "Transformer"]


@dataclass(frozen=True, slots=True)
class Block:
    """h += attn(norm(h)); h += mlp(norm(h))."""

    attn_norm: torch.Tensor  # [D]
    attn: MLA
    mlp_norm: torch.Tensor  # [D]
    mlp: MLP | MoE
    native: DecodeLayer | None = None  # a decode token's whole layer in two native calls (CPU, bf16), same bits


class Transformer:
    """A DeepSeek-V3 / Kimi K2 text model over a latent cache; weights are plain tensors in one dtype."""

    def __init__(
        self,
        cfg: ModelConfig,
        embed: StoredWeight,
        blocks: list[Block],
        norm: torch.Tensor,
        lm_head: Weight,
        rope: Rope,
        dtype: torch.dtype,
    ) -> None:
        self.cfg = cfg
        self.embed = embed  # [V, D] as stored, over the mapping: rows are dequantized (or cast) when looked up
        self.blocks = blocks
        self.norm = norm
        self.lm_head = lm_head  # [V, D]
        self.rope = rope
        self.dtype = dtype
        # decode tokens take the blocks' native layers where they have them (set False: the torch-and-kernels path)
        self.native_decode = dtype == torch.bfloat16 and any(b.native is not None for b in blocks)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> their embedding rows [T, D] in float32: only the distinct rows are read and dequantized."""
        uniq, where = torch.unique(ids.to(self.embed.device), return_inverse=True)
        return dequantize(self.embed.rows(uniq), torch.float32)[where]

    def new_cache(self, max_tokens: int) -> LatentCache:
        return LatentCache(self.cfg, max_tokens, self.dtype, self.norm.device)

    @torch.inference_mode()
    def forward(
        self,
        ids: torch.Tensor,
        start: int,
        cache: LatentCache,
        last_only: bool = False,
        stop: threading.Event | None = None,
    ) -> torch.Tensor:
        """ids [T] at positions start .. start + T - 1 -> float32 logits [T, V] (or [1, V] with last_only) on the CPU.
        `stop`, when set by another thread, ends the pass between layers (and a prefill between attention blocks)
        with Cancelled."""
        h = self._layers(ids, start, cache, stop)
        if last_only:
            h = h[-1:]
        return linear(rms_norm(h, self.norm, self.cfg.rms_norm_eps), self.lm_head).float().cpu()

    @torch.inference_mode()
    def prefill(
        self,
        ids: torch.Tensor,
        cache: LatentCache,
        chunk: int,
        stop: threading.Event | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """A prompt ids [P] whose first `start` positions the cache already holds: the rest from position `start`,
        `chunk` tokens per pass through the layers (activations and expert batches bounded by the chunk, not the
        prompt) -> float32 logits of its last token [1, V]."""
        if chunk < 1:
            raise ValueError(f"chunk = {chunk}; prefill at least one token per pass")
        P = ids.shape[0]
        if not 0 <= start < P or start > cache.filled:
            raise ValueError(f"start = {start}: the cache holds {cache.filled} positions of a {P}-token prompt")
        last = start + (P - 1 - start) // chunk * chunk
        for a in range(start, last, chunk):  # every chunk but the last only fills the cache
            self._layers(ids[a : a + chunk], a, cache, stop)
        return self.forward(ids[last:], last, cache, last_only=True, stop=stop)

    def _layers(self, ids: torch.Tensor, start: int, cache: LatentCache, stop: threading.Event | None) -> torch.Tensor:
        """ids [T] -> the last layer's hidden states [T, D], in the compute dtype on the model's device."""
        device = self.norm.device
        positions = torch.arange(start, start + ids.shape[0], device=device)
        cos, sin = self.rope.cos_sin(positions)  # [T, rope/2] each
        h = self.lookup(ids).to(device=device, dtype=self.dtype)  # [T, D]
        eps = self.cfg.rms_norm_eps
        native = ids.shape[0] == 1 and self.native_decode and cache.latent.is_cpu and cache.latent.dtype == h.dtype
        if native:
            h = h.contiguous()  # [1, D] bf16, updated in place by the native layers
            c0, s0 = cos[0].contiguous(), sin[0].contiguous()
            cache.room(start, 1)
        for block in self.blocks:
            check(stop, f"layer {block.attn.layer}")
            nb = block.native
            if native and nb is not None:
                layer = block.attn.layer
                ids_k, wts_k = nb.attend(h, *cache.rows(layer), start, c0, s0)
                if isinstance(block.mlp, MoE):
                    block.mlp.decode(h, ids_k, wts_k, partial(nb.finish, h))
                else:
                    nb.finish(h, (), ())
                continue
            h = h + block.attn(rms_norm(h, block.attn_norm, eps), start, cache, cos, sin, stop)
            x = rms_norm(h, block.mlp_norm, eps)
            h = h + (block.mlp(x, h) if isinstance(block.mlp, MoE) else block.mlp(x))
        cache.passed(start, ids.shape[0])
        return h
