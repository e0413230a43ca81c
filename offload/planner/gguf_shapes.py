"""Built-in GGUF shapes: Kimi K2.5's architecture stored as Unsloth's UD quants, so `plan` can answer for the files
people download without them on disk.

The per-tensor types below are a stated recipe, not read from the files (nothing can be downloaded here): the pattern
../shared/reference/GGUF.md describes for Unsloth's "UD" files (routed experts in the lowest type, `ffn_down_exps` one
step higher; attention, shared experts, the dense layer and the embedding in 4-bit K-quants; `attn_k_b`/`attn_v_b`
in Q8_0, their rows being 128 and 512 wide; output Q6_K; norms, router and its bias F32), with the expert types
chosen so the total lands within 5% of the published sizes (UD-TQ1_0 ~240 GB, UD-Q2_K_XL ~375 GB). A real file's
own types always win: `plan --model FILE.gguf` reads them from its header.
"""

from __future__ import annotations

from dataclasses import dataclass

from kernels.formats import ggml_row_bytes
from offload.config import PARTS, ModelConfig
from offload.parts import model_modules
from offload.storage import Storage


@dataclass(frozen=True, slots=True)
class Recipe:
    """ggml types by role; `published_gb`: the size the publisher states (decimal GB)."""

    base: str  # built-in shape whose architecture this stores
    gate_up_exps: str
    down_exps: str
    attention: str
    kv_b: str  # attn_k_b / attn_v_b
    shared: str
    dense: str
    embed: str
    output: str
    published_gb: float
    source: str


GGUF_SHAPES: dict[str, Recipe] = {
    "kimi-k2.5-ud-tq1_0": Recipe(
        "kimi-k2.5",
        "iq1_m",
        "iq2_xxs",
        "q4_k",
        "q8_0",
        "q4_k",
        "q4_k",
        "q4_k",
        "q6_k",
        240.0,
        "unsloth/Kimi-K2.5-GGUF UD-TQ1_0 (5 parts)",
    ),
    "kimi-k2.5-ud-q2_k_xl": Recipe(
        "kimi-k2.5",
        "q2_k",
        "q3_k",
        "q4_k",
        "q8_0",
        "q4_k",
        "q4_k",
        "q4_k",
        "q6_k",
        375.0,
        "unsloth/Kimi-K2.5-GGUF UD-Q2_K_XL (8 parts)",
    ),
}


def recipe_storage(cfg: ModelConfig, r: Recipe) -> Storage:
    """The Storage of `cfg` stored by recipe `r`: every tensor's bytes from its type's block size."""
    parts = dict.fromkeys((p for p in PARTS if p != "routed_experts"), 0)
    for m in model_modules(cfg, routed=False):
        if m.kind in ("norm", "router", "router_bias"):
            parts[m.part] += 4 * m.params
            continue
        if m.name.endswith("kv_b_proj"):  # split per head: attn_k_b rows are qk_nope wide, attn_v_b rows kv_lora
            n = cfg.num_attention_heads
            parts[m.part] += n * cfg.kv_lora_rank * ggml_row_bytes(r.kv_b, cfg.qk_nope_head_dim)
            parts[m.part] += n * cfg.v_head_dim * ggml_row_bytes(r.kv_b, cfg.kv_lora_rank)
            continue
        fmt = {
            "embed": r.embed,
            "lm_head": r.output,
            "attention": r.attention,
            "shared_experts": r.shared,
            "dense_mlp": r.dense,
        }[m.part]
        parts[m.part] += m.shape[0] * ggml_row_bytes(fmt, m.shape[1])
    h, inter = cfg.hidden_size, cfg.moe_intermediate_size
    expert = 2 * inter * ggml_row_bytes(r.gate_up_exps, h) + h * ggml_row_bytes(r.down_exps, inter)
    formats = (r.gate_up_exps,) if r.gate_up_exps == r.down_exps else (r.gate_up_exps, r.down_exps)
    return Storage(
        expert_format=r.gate_up_exps,
        expert_params=(),
        expert_bytes=expert,
        expert_weight_bytes=expert,
        part_bytes=parts,
        float_format=r.embed,
        expert_formats=formats,
    )
