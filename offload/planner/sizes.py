"""Parameter counts of the non-expert parts, and their bytes in a GPU weight format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from offload.config import PARTS, ModelConfig
from offload.parts import model_modules

GpuWeights = Literal["bf16", "int8"]
WeightFormat = Literal["bf16", "int8", "f32", "q8_0"]


@dataclass(frozen=True, slots=True)
class PartParams:
    """One part's parameters: Linear weights (with their output rows, for per-row scales) and the rest."""

    linear: int = 0
    rows: int = 0
    other: int = 0  # norms, router weight (2-byte) ...
    f32: int = 0  # ... and values kept in float32 (the router bias)
    dense_linear: int = 0  # of `linear`, the weights kept dense in the compute dtype whatever the format (kv_b)

    def nbytes(self, fmt: WeightFormat) -> int:
        """bf16: 2 bytes a weight; int8 weight-only: 1 byte a Linear weight plus a bf16 scale per output row (the
        rest stays bf16); q8_0 (the CPU's int8, `--cpu-weights int8`): 34 bytes per 32 Linear weights but the dense
        ones (bf16); f32: 4 bytes everywhere."""
        if fmt == "f32":
            return 4 * self.params
        if fmt == "q8_0":
            q8 = self.linear - self.dense_linear
            return q8 // 32 * 34 + 2 * self.dense_linear + 2 * self.other + 4 * self.f32
        weights = 2 * self.linear if fmt == "bf16" else self.linear + 2 * self.rows
        return weights + 2 * self.other + 4 * self.f32

    @property
    def params(self) -> int:
        return self.linear + self.other + self.f32


def part_params(cfg: ModelConfig) -> dict[str, PartParams]:
    """Non-expert parts by name (as `offload.config.PARTS` names them), counted from the model's modules. lm_head is
    counted even when tied (it is the embedding, reused: what it reads per token is the same)."""
    acc = {p: [0, 0, 0, 0, 0] for p in PARTS if p != "routed_experts"}  # linear, rows, other, f32, dense_linear
    for m in model_modules(cfg, routed=False):
        a = acc[m.part]
        if m.kind == "linear":
            a[0] += m.params
            a[1] += m.shape[0]
            if m.name.endswith("kv_b_proj"):  # absorbed into the query and output: always dense
                a[4] += m.params
        elif m.kind == "router_bias":  # kept in float32
            a[3] += m.params
        else:  # norms, the router weight, the embedding
            a[2] += m.params
    if cfg.tie_word_embeddings:
        acc["lm_head"] = [cfg.vocab_size * cfg.hidden_size, cfg.vocab_size, 0, 0, 0]
    return {p: PartParams(*v) for p, v in acc.items()}


def attention_flops_per_token(cfg: ModelConfig, context: int) -> int:
    """Decode attention of one token over `context` cached tokens, absorbed: scores over the latent and k_pe,
    then the weighted latent sum, per head and layer (the projections are counted with the weights)."""
    per_key = cfg.kv_lora_rank + cfg.qk_rope_head_dim + cfg.kv_lora_rank
    return 2 * cfg.num_hidden_layers * cfg.num_attention_heads * per_key * context


def prefill_attention_flops(cfg: ModelConfig, tokens: int) -> int:
    """Causal attention of a first chunk of `tokens` tokens, keys expanded: q.k over qk_head_dim, p.v over v."""
    per_pair = cfg.qk_head_dim + cfg.v_head_dim
    return 2 * cfg.num_hidden_layers * cfg.num_attention_heads * per_pair * tokens * tokens // 2


def expert_params(cfg: ModelConfig) -> int:
    """Weights of one routed expert (gate, up, down)."""
    return 3 * cfg.hidden_size * cfg.moe_intermediate_size


def routed_scratch(cfg: ModelConfig, tokens: int, pairs: int) -> int:
    """Scratch of one MoE layer's routed experts on one device for `tokens` tokens of which `pairs` (token, expert)
    pairs run there: the float32 input and sum [T, D], its int8 blocks with their scales (~2 bytes a value), the
    pairs' gate and up [P, 2, I] and down outputs [P, D] in float32 (what the native grouped kernel allocates)."""
    d, inter = cfg.hidden_size, cfg.moe_intermediate_size
    return tokens * d * (4 + 2 + 4) + pairs * (2 * inter + d) * 4 if pairs else 0


def workspace(cfg: ModelConfig, tokens: int, keys: int, esz: int, pairs: int) -> dict[str, int]:
    """Peak scratch, by phase, of one pass of `tokens` tokens over `keys` keys with `esz`-byte activations, `pairs`
    of its routed (token, expert) pairs computed on this device. The phases follow each other: the peak is
    `stream` plus the largest other one (`workspace_peak`). Bounds from the model's own blocking: a head group's
    expanded keys (offload.model.attention.head_group) and a query block's scores (query_rows)."""
    from offload.model.attention import expanded_key_bytes, head_group, query_rows  # the model's own bounds

    T, S, e = tokens, keys, esz
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    nope, rope, v, rank = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    per_head_key = expanded_key_bytes(nope, rope, v, e)
    rows = min(T, query_rows(heads, S))
    attention = (
        2 * T * (cfg.q_lora_rank or 0) * e  # q_a and its norm
        + T * heads * (2 * (nope + rope) + rope) * e  # q, its roped half, the catted query
        + T * (2 * rank + 2 * rope) * e  # kv_a, the normed latent, roped k_pe
        + head_group(heads, S, per_head_key) * S * per_head_key  # one head group's keys and values
        + heads * rows * S * 4
        + rows * S  # one query block's float32 scores and its mask
        + 2 * T * heads * v * e  # the heads' outputs and their [T, H * v] copy for o
    )
    shared = cfg.n_shared_experts * cfg.moe_intermediate_size
    moe = (
        2 * T * cfg.n_routed_experts * 4  # router logits and scores
        + 3 * T * shared * e  # the shared expert's gate, up and their product
        + T * d * e  # the float32 sum back in the compute dtype
        + routed_scratch(cfg, T, pairs)
    )
    return {
        "stream": 3 * T * d * e,  # the residual stream, its norm, a sublayer's output [T, D]
        "attention": attention,
        "mlp": 3 * T * cfg.intermediate_size * e if cfg.first_k_dense_replace else 0,  # dense layers' gate, up, product
        "moe": moe,
        "logits": cfg.vocab_size * (4 + e),  # the last token's logits, in the compute dtype and float32
    }


def workspace_peak(phases: dict[str, int]) -> int:
    """The stream plus the largest phase (they follow each other; the stream lives through all of them)."""
    return phases["stream"] + max(v for key, v in phases.items() if key != "stream")
