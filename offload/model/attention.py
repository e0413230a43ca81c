"""Multi-head Latent Attention: expanded keys for prefill, absorbed weights over the latent cache for decode.

Prefill attends in groups of heads (`head_group`) and, within a group, in blocks of query rows (`query_rows`): a
group's expanded keys and values are at most EXPAND_BYTES and a block's scores at most SCORES_BYTES whatever the
prompt's length (K2.5's keys and values for 32k tokens, all 64 heads at once, would be 1.9 GB), and a cancel is seen
between blocks, not only between layers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.cpu_ggml import ggml_linear_batched_cpu
from kernels.cpu_mla import MlaDecoder, MlaDecodeWeights
from kernels.dequant import StoredWeight
from kernels.ggml_encode import quantize_q8_0
from offload.config import ModelConfig
from offload.model.cache import LatentCache
from offload.model.cancel import check
from offload.model.linear import QuantLinear, Weight, linear
from offload.model.norm import LATENT_NORM_EPS, rms_norm
from offload.model.rope import Rope, softmax_scale

SCORES_BYTES = 256 << 20  # one query block's float32 scores [H, rows, S], should SDPA fall back to its math path
EXPAND_BYTES = 256 << 20  # one head group's expanded keys and values [S, G, nope + v] and [S, G, qk]
MAX_QUERY_ROWS = 256  # CPU SDPA is fastest at 256-512 rows a block (measured: 8k tokens, 0.9 s vs 2.7 s unblocked)


def query_rows(heads: int, keys: int) -> int:
    """Query rows per prefill attention block: as many as fit SCORES_BYTES of scores, 16 to MAX_QUERY_ROWS."""
    fit = SCORES_BYTES // (4 * heads * max(1, keys))
    return max(16, min(MAX_QUERY_ROWS, fit // 16 * 16))


def expanded_key_bytes(nope: int, rope: int, v: int, esz: int) -> int:
    """Bytes one key takes per head once expanded: kv_b's [nope + v] and the catted key's [nope + rope]."""
    return (2 * nope + v + rope) * esz


def head_group(heads: int, keys: int, per_head_key_bytes: int) -> int:
    """Heads whose expanded keys and values (per_head_key_bytes for each of `keys` keys) fit EXPAND_BYTES; >= 1."""
    return max(1, min(heads, EXPAND_BYTES // max(1, keys * per_head_key_bytes)))


@dataclass(frozen=True, slots=True)
class MLAWeights:
    """One layer's attention weights, [out, in], in the compute dtype (or, on the CPU, kept in a GGUF's ggml type:
    QuantLinear); kv_b is always dense (its halves are absorbed into the query and output)."""

    q_a: Weight | None  # [q_lora_rank, D]; None when the model has a plain q_proj
    q_a_norm: torch.Tensor | None  # [q_lora_rank]
    q_b: Weight  # [H * (nope + rope), q_lora_rank or D]  (q_proj when q_a is None)
    kv_a: Weight  # [kv_lora_rank + rope, D]
    kv_a_norm: torch.Tensor  # [kv_lora_rank]
    kv_b: torch.Tensor  # [H * (nope + v), kv_lora_rank]
    o: Weight  # [D, H * v]


class MLA:
    """Attention of one layer; caches only (normalised latent, roped k_pe) per token."""

    def __init__(self, cfg: ModelConfig, layer: int, w: MLAWeights, rope: Rope, absorb_int8: bool = False) -> None:
        """absorb_int8: decode's absorbed per-head matrices as Q8_0 through the native ggml kernel (CPU; int8
        activations), one batched call each instead of a bf16 einsum (~5x faster on the CPU). With those and every
        Linear a QuantLinear, a decode token's whole attention is one native call (`self.native`,
        kernels/cpu_mla.py) instead of ~60 torch ops; setting `native` to None keeps the torch path."""
        self.layer = layer
        self.w = w
        self.rope = rope
        self.heads = cfg.num_attention_heads
        self.nope, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.rank = cfg.kv_lora_rank
        self.scale = softmax_scale(cfg)
        kv_b = w.kv_b.view(self.heads, self.nope + self.v_dim, self.rank)  # [H, nope + v, rank]
        w_uk = kv_b[:, : self.nope].transpose(1, 2)  # [H, rank, nope]: absorbed into the query
        # On the CPU a bf16 GEMM whose reduced dimension is contiguous runs ~6x faster (measured 6.4 -> 1.1 ms per
        # K2.5 layer); the copy costs half of kv_b again (0.5 GB for K2.5), so only the CPU pays for it.
        self.w_uk_t = w_uk.contiguous() if kv_b.device.type == "cpu" else w_uk
        self.w_uv = kv_b[:, self.nope :]  # [H, v, rank]: absorbed into the output
        self.uk_q: StoredWeight | None = None  # Q8_0 [H * rank, nope], rows of w_uk_t
        self.uv_q: StoredWeight | None = None  # Q8_0 [H * v, rank], rows of w_uv
        if absorb_int8 and self.nope % 32 == 0 and self.rank % 32 == 0:
            uk = self.w_uk_t.reshape(-1, self.nope)
            uv = self.w_uv.reshape(-1, self.rank)
            self.uk_q = StoredWeight("q8_0", (uk.shape[0], self.nope), {"data": quantize_q8_0(uk)})
            self.uv_q = StoredWeight("q8_0", (uv.shape[0], self.rank), {"data": quantize_q8_0(uv)})
        weights = self._native_decode()
        self.native = MlaDecoder(weights) if weights is not None else None

    def _native_decode(self) -> MlaDecodeWeights | None:
        """The whole decode token in one native call (kernels/cpu_mla.py), where every Linear is a QuantLinear and
        the absorbed matrices are Q8_0; else None (the torch path)."""
        w = self.w
        linears = (w.q_b, w.kv_a, w.o) if w.q_a is None else (w.q_a, w.q_b, w.kv_a, w.o)
        if self.uk_q is None or self.uv_q is None or not all(isinstance(lin, QuantLinear) for lin in linears):
            return None
        if (self.heads * self.v_dim) % 32 or self.rope_dim % 2 or w.kv_a_norm.device.type != "cpu":
            return None
        q_a = w.q_a.weight if isinstance(w.q_a, QuantLinear) else None
        assert isinstance(w.q_b, QuantLinear) and isinstance(w.kv_a, QuantLinear) and isinstance(w.o, QuantLinear)
        return MlaDecodeWeights(
            q_a=q_a,
            q_a_norm=None if w.q_a_norm is None or q_a is None else w.q_a_norm.float().contiguous(),
            q_b=w.q_b.weight,
            kv_a=w.kv_a.weight,
            kv_a_norm=w.kv_a_norm.float().contiguous(),
            uk=self.uk_q,
            uv=self.uv_q,
            o=w.o.weight,
            heads=self.heads,
            nope=self.nope,
            rope=self.rope_dim,
            v=self.v_dim,
            rank=self.rank,
            interleaved=self.rope.interleaved,
            eps=LATENT_NORM_EPS,
            scale=self.scale,
        )

    def __call__(
        self,
        x: torch.Tensor,
        start: int,
        cache: LatentCache,
        cos: torch.Tensor,
        sin: torch.Tensor,
        stop: threading.Event | None = None,
    ) -> torch.Tensor:
        """x [T, D] at positions start .. start + T - 1 -> [T, D]; writes those positions to the cache.
        `stop` set by another thread ends a prefill between query blocks with Cancelled."""
        T = x.shape[0]
        if T == 1 and self.native is not None and cache.latent.is_cpu:
            cache.room(start, 1)
            y = self.native(
                x.float().contiguous(), cache.latent[self.layer], cache.k_pe[self.layer], start, cos[0], sin[0]
            )
            return y.to(x.dtype)  # [1, D]
        w = self.w
        if w.q_a is not None:
            assert w.q_a_norm is not None
            q = linear(rms_norm(linear(x, w.q_a), w.q_a_norm, LATENT_NORM_EPS), w.q_b)
        else:
            q = linear(x, w.q_b)
        q = q.view(T, self.heads, self.nope + self.rope_dim)  # [T, H, 192]
        q_nope, q_pe = q[..., : self.nope], self.rope.apply(q[..., self.nope :], cos, sin)

        kv = linear(x, w.kv_a)  # [T, rank + rope]
        latent = rms_norm(kv[:, : self.rank], w.kv_a_norm, LATENT_NORM_EPS)  # [T, 512]
        k_pe = self.rope.apply(kv[:, self.rank :], cos, sin)  # [T, 64], shared by all heads
        cache.write(self.layer, start, latent, k_pe)
        all_latent, all_k_pe = cache.read(self.layer, start + T)  # [S, 512], [S, 64]

        if T == 1:
            out = self._absorbed(q_nope, q_pe, all_latent, all_k_pe, start)
        else:
            out = self._expanded(q_nope, q_pe, all_latent, all_k_pe, start, stop)
        return linear(out.reshape(T, self.heads * self.v_dim), w.o)

    def _mask(self, T: int, S: int, start: int, device: torch.device) -> torch.Tensor:
        """[T, S] True where query t (at position start + t) may attend to key s."""
        return torch.arange(S, device=device)[None, :] <= (start + torch.arange(T, device=device))[:, None]

    def _expanded(
        self,
        q_nope: torch.Tensor,
        q_pe: torch.Tensor,
        latent: torch.Tensor,
        k_pe: torch.Tensor,
        start: int,
        stop: threading.Event | None = None,
    ) -> torch.Tensor:
        """Prefill: expand the latent to per-head keys and values, then causal attention in blocks of query rows,
        each over the keys up to its last row. -> [T, H, v]"""
        T, S = q_nope.shape[0], latent.shape[0]
        H, nope, v_dim = self.heads, self.nope, self.v_dim
        q = torch.cat((q_nope, q_pe), dim=-1).transpose(0, 1)  # [H, T, 192]
        out = q.new_empty(H, T, v_dim)  # [H, T, 128]
        rows = query_rows(H, S)
        group = head_group(H, S, expanded_key_bytes(nope, self.rope_dim, v_dim, latent.element_size()))
        kv_b = self.w.kv_b.view(H, nope + v_dim, self.rank)
        for h0 in range(0, H, group):
            h1 = min(H, h0 + group)
            kv = F.linear(latent, kv_b[h0:h1].reshape(-1, self.rank)).view(S, h1 - h0, nope + v_dim)  # [S, G, 256]
            k = torch.cat((kv[..., :nope], k_pe[:, None, :].expand(S, h1 - h0, self.rope_dim)), dim=-1)
            k, v = k.transpose(0, 1), kv[..., nope:].transpose(0, 1)  # [G, S, 192], [G, S, 128]
            for a in range(0, T, rows):
                check(stop, f"layer {self.layer}'s attention heads {h0}..{h1 - 1}, rows {a}..{T - 1}")
                b = min(T, a + rows)
                keys = start + b  # rows a .. b - 1 see keys 0 .. start + b - 1
                out[h0:h1, a:b] = F.scaled_dot_product_attention(
                    q[h0:h1, a:b],
                    k[:, :keys],
                    v[:, :keys],
                    attn_mask=self._mask(b - a, keys, start + a, q.device),
                    scale=self.scale,
                )
        return out.transpose(0, 1)  # [T, H, 128]

    def _absorbed(
        self, q_nope: torch.Tensor, q_pe: torch.Tensor, latent: torch.Tensor, k_pe: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Decode: attend in latent space; per-head keys and values are never formed. -> [T, H, v]"""
        T, S = q_nope.shape[0], latent.shape[0]
        if self.uk_q is not None:
            heads_first = q_nope.transpose(0, 1).float().contiguous()  # [H, T, nope]
            q_lat = ggml_linear_batched_cpu(heads_first, self.uk_q, self.heads).transpose(0, 1).to(latent.dtype)
        else:
            q_lat = torch.einsum("thd,hcd->thc", q_nope, self.w_uk_t)  # [T, H, 512]
        scores = torch.einsum("thc,sc->ths", q_lat, latent) + torch.einsum("thr,sr->ths", q_pe, k_pe)  # [T, H, S]
        scores = scores.float() * self.scale
        if T > 1:  # one new token sees every cached one
            scores.masked_fill_(~self._mask(T, S, start, scores.device)[:, None, :], float("-inf"))
        p = scores.softmax(dim=-1).to(latent.dtype)
        o_lat = torch.einsum("ths,sc->thc", p, latent)  # [T, H, 512]
        if self.uv_q is not None:
            heads_first = o_lat.transpose(0, 1).float().contiguous()  # [H, T, rank]
            return ggml_linear_batched_cpu(heads_first, self.uv_q, self.heads).transpose(0, 1).to(latent.dtype)
        return torch.einsum("thc,hvc->thv", o_lat, self.w_uv)  # [T, H, 128]
