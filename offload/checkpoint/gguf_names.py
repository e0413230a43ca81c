"""The model's module names (offload/parts.py, transformers' DeepseekV3 names) -> GGUF tensor names, as llama.cpp's
converter writes arch `deepseek2` (../shared/reference/GGUF.md, section 3)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

from offload.config import ModelConfig
from offload.parts import Module, model_modules

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

F32_KINDS = ("norm", "router", "router_bias")  # module kinds llama.cpp keeps in F32
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


def module_gguf_name(m: Module) -> str:
    """The GGUF tensor holding a module's weight (not a routed expert: those are stacked)."""
    if m.kind == "linear":
        name = m.name
    else:
        name = f"{m.name}.e_score_correction_bias" if m.kind == "router_bias" else f"{m.name}.weight"
    g = gguf_name(name)
    if g is None:
        raise KeyError(f"{m.name} has no GGUF tensor name")
    return g


class GgufSpec(NamedTuple):
    name: str
    shape: tuple[int, ...]  # NumPy order (slowest axis first)
    part: str  # one of offload.config.PARTS
    role: str  # the part (Linears, the embedding); "f32" (norms, router, bias); "kv_b"; "gate_up_exps"; "down_exps"


def gguf_tensors(cfg: ModelConfig, split_kv_b: bool = True, fused_gate_up: bool = False) -> Iterator[GgufSpec]:
    """Every tensor of `cfg` as llama.cpp lays out deepseek2: kv_b_proj split per head into attn_k_b (transposed)
    and attn_v_b, or one attn_kv_b; routed experts stacked per layer, gate and up fused or not."""
    n, nope, v, lora = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    for m in model_modules(cfg, routed=False):  # lm_head is left out when tied
        if m.name.endswith("self_attn.kv_b_proj") and split_kv_b:
            yield GgufSpec(f"blk.{m.layer}.{K_B}", (n, lora, nope), m.part, "kv_b")
            yield GgufSpec(f"blk.{m.layer}.{V_B}", (n, v, lora), m.part, "kv_b")
        else:
            role = "f32" if m.kind in F32_KINDS else m.part
            yield GgufSpec(module_gguf_name(m), m.shape, m.part, role)
    e, inter, h = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
    for layer in cfg.moe_layers:
        if fused_gate_up:
            yield GgufSpec(f"blk.{layer}.{FUSED_GATE_UP}", (e, 2 * inter, h), "routed_experts", "gate_up_exps")
        else:
            yield GgufSpec(f"blk.{layer}.{STACKED['gate_proj']}", (e, inter, h), "routed_experts", "gate_up_exps")
            yield GgufSpec(f"blk.{layer}.{STACKED['up_proj']}", (e, inter, h), "routed_experts", "gate_up_exps")
        yield GgufSpec(f"blk.{layer}.{STACKED['down_proj']}", (e, h, inter), "routed_experts", "down_exps")
