"""Synthetic model sizes: Kimi K2.5's topology (MLA, sigmoid router, shared expert, dense first layer), scaled."""

from __future__ import annotations

from dataclasses import dataclass

from offload.config import ModelConfig, RopeScaling
from offload.hf_config import HfConfig
from offload.quant import KIMI_INT4_IGNORE, ConfigError, QuantConfig
from offload.synth.tokenizer import NUM_SPECIAL

LAYOUT_NAMES = {"k2.5": "kimi_k25", "k2": "kimi_k2", "deepseek-v3": "deepseek_v3"}
EXPERT_FORMATS = ("int4", "fp8", "bf16")


@dataclass(frozen=True, slots=True)
class Preset:
    """The sizes a preset fixes; vocab comes from the tokenizer trained for it."""

    name: str
    description: str
    base_tokens: int  # BPE tokens before the 256 specials
    hidden: int
    layers: int
    heads: int
    q_lora: int
    kv_lora: int
    nope: int
    rope: int
    v: int
    inter: int  # dense first layer
    moe_inter: int  # one routed expert
    experts: int
    top_k: int
    max_shard_bytes: int
    n_group: int = 1
    topk_group: int = 1


PRESETS = {
    p.name: p
    for p in (
        Preset(
            "tiny",
            "a few MB, for unit tests: 16 experts, top-4",
            512,
            64,
            3,
            4,
            32,
            32,
            16,
            8,
            16,
            128,
            32,
            16,
            4,
            256 << 10,
        ),
        Preset(
            "mini",
            "Kimi's topology scaled down: 384 experts, top-8, about 200 MB",
            1024,
            512,
            5,
            8,
            192,
            128,
            32,
            16,
            32,
            1024,
            128,
            384,
            8,
            64 << 20,
        ),
        Preset(
            "bench",
            "384 experts, top-8; one decode step reads ~140 MB of INT4 experts; several GB",
            1024,
            2048,
            11,
            16,
            512,
            256,
            64,
            32,
            64,
            4096,
            512,
            384,
            8,
            1 << 30,
        ),
    )
}


def preset_config(
    preset: str, layout: str = "k2.5", experts: str = "int4", num_base_tokens: int | None = None
) -> HfConfig:
    """The config.json of a preset in a layout ('k2.5', 'k2', 'deepseek-v3') and expert format."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    if layout not in LAYOUT_NAMES:
        raise ConfigError(f"unknown layout {layout!r}; known: {', '.join(LAYOUT_NAMES)}")
    if experts not in EXPERT_FORMATS:
        raise ConfigError(f"unknown expert format {experts!r}; known: {', '.join(EXPERT_FORMATS)}")
    p = PRESETS[preset]
    base = p.base_tokens if num_base_tokens is None else num_base_tokens
    quant = {
        "int4": QuantConfig(format="int4", group_size=32, ignore=KIMI_INT4_IGNORE),
        "fp8": QuantConfig(format="fp8", block=(128, 128), ignore=("lm_head",)),
        "bf16": QuantConfig(),
    }[experts]
    model = ModelConfig(
        vocab_size=base + NUM_SPECIAL,
        hidden_size=p.hidden,
        intermediate_size=p.inter,
        moe_intermediate_size=p.moe_inter,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        q_lora_rank=p.q_lora,
        kv_lora_rank=p.kv_lora,
        qk_nope_head_dim=p.nope,
        qk_rope_head_dim=p.rope,
        v_head_dim=p.v,
        n_routed_experts=p.experts,
        n_shared_experts=1,
        num_experts_per_tok=p.top_k,
        n_group=p.n_group,
        topk_group=p.topk_group,
        routed_scaling_factor=2.827,
        norm_topk_prob=True,
        first_k_dense_replace=1,
        rope_theta=50000.0,
        rope_scaling=RopeScaling(
            factor=64.0,
            original_max_position_embeddings=4096,
            beta_fast=32.0,
            beta_slow=1.0,
            mscale=1.0,
            mscale_all_dim=1.0,
        ),
        max_position_embeddings=262144,
        rms_norm_eps=1e-5,
        bos_token_id=base,
        eos_token_ids=(base + 1,),
        pad_token_id=base + 255,
    )
    return HfConfig(model, LAYOUT_NAMES[layout], "bfloat16", quant)  # type: ignore[arg-type]
