"""The model's module names (offload/parts.py, transformers' DeepseekV3 names) -> GGUF tensor names, as llama.cpp's
converter writes arch `deepseek2` (../shared/reference/GGUF.md, section 3)."""

from __future__ import annotations

import re

# per-layer: the part of the HF name after "model.layers.N." -> the GGUF name after "blk.N."
LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj": "attn_q.weight",
    "self_attn.q_a_proj": "attn_q_a.weight",
    "self_attn.q_a_layernorm.weight": "attn_q_a_norm.weight",
    "self_attn.q_b_proj": "attn_q_b.weight",
    "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa.weight",
    "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm.weight",
    "self_attn.kv_b_proj": "attn_kv_b.weight",
    "self_attn.o_proj": "attn_output.weight",
    "mlp.gate_proj": "ffn_gate.weight",
    "mlp.up_proj": "ffn_up.weight",
    "mlp.down_proj": "ffn_down.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
    "mlp.shared_experts.gate_proj": "ffn_gate_shexp.weight",
    "mlp.shared_experts.up_proj": "ffn_up_shexp.weight",
    "mlp.shared_experts.down_proj": "ffn_down_shexp.weight",
}
GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head": "output.weight",
}
STACKED = {"gate_proj": "ffn_gate_exps.weight", "up_proj": "ffn_up_exps.weight", "down_proj": "ffn_down_exps.weight"}
FUSED_GATE_UP = "ffn_gate_up_exps.weight"  # gate rows, then up rows
K_B, V_B = "attn_k_b.weight", "attn_v_b.weight"  # kv_b_proj split per head and transposed (llama.cpp since 2025)

_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_EXPERT_RE = re.compile(r"mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)")


def gguf_name(name: str) -> str | None:
    """The GGUF tensor holding module or tensor `name` (None for a routed expert: those are stacked, see
    expert_of)."""
    if name in GLOBAL:
        return GLOBAL[name]
    m = _LAYER_RE.fullmatch(name)
    if m is None:
        return None
    rest = LAYER.get(m.group(2))
    return None if rest is None else f"blk.{m.group(1)}.{rest}"


def expert_of(name: str) -> tuple[int, int, str] | None:
    """(layer, expert, proj) when `name` is a routed expert's Linear."""
    m = _LAYER_RE.fullmatch(name)
    if m is None:
        return None
    e = _EXPERT_RE.fullmatch(m.group(2))
    return None if e is None else (int(m.group(1)), int(e.group(1)), e.group(2))
