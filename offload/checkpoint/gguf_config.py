"""ModelConfig from GGUF metadata of arch `deepseek2` (Kimi K2 / K2-Thinking / K2.5 / K2.6, DeepSeek-V3 / R1).

Keys are `deepseek2.*` (see ../shared/reference/GGUF.md, section 2). MLA is read in llama.cpp's MQA form
(`key_length_mla` / `value_length_mla`, head_count_kv 1), and in the older and ik_llama.cpp forms where
`key_length` / `value_length` are the per-head MLA sizes themselves. Every unsupported value is a ConfigError naming
the key and the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from offload.config import ModelConfig, RopeScaling
from offload.quant import ConfigError

ARCH = "deepseek2"
GATING_SOFTMAX, GATING_SIGMOID = 1, 2


class _Keys:
    def __init__(self, meta: Mapping[str, Any], source: str) -> None:
        self.meta, self.source = meta, source

    def get(self, key: str, default: Any = ...) -> Any:
        full = f"{ARCH}.{key}" if not key.startswith(("general.", "tokenizer.")) else key
        if full in self.meta:
            return self.meta[full]
        if default is ...:
            raise ConfigError(f"{self.source}: metadata has no {full!r}; it is required")
        return default

    def positive(self, key: str, default: Any = ...) -> int:
        v = self.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{self.source}: {ARCH}.{key} = {v!r}; expected a positive integer")
        return v


def config_from_gguf(meta: Mapping[str, Any], source: str = "GGUF") -> ModelConfig:
    """The architecture from a GGUF header's metadata; `source` names the file in errors."""
    arch = meta.get("general.architecture")
    if arch != ARCH:
        raise ConfigError(
            f"{source}: general.architecture = {arch!r} is not supported; expected {ARCH!r} (Kimi K2 / K2.5, "
            "DeepSeek-V3 / R1)"
        )
    k = _Keys(meta, source)
    heads = k.positive("attention.head_count")
    rope_dim = k.positive("rope.dimension_count")
    kv_lora = k.positive("attention.kv_lora_rank")
    q_lora = k.get("attention.q_lora_rank", None) or None
    if "deepseek2.attention.key_length_mla" in meta:  # llama.cpp's MQA form: key/value_length are the latent's
        qk_head = k.positive("attention.key_length_mla")
        v_head = k.positive("attention.value_length_mla")
    else:  # older files and ik_llama.cpp: per-head sizes
        qk_head = k.positive("attention.key_length")
        v_head = k.positive("attention.value_length")
        if qk_head == kv_lora + rope_dim:
            raise ConfigError(
                f"{source}: {ARCH}.attention.key_length = {qk_head} is the MQA latent size, but key_length_mla "
                "is missing; the per-head sizes cannot be recovered"
            )
    if qk_head <= rope_dim:
        raise ConfigError(
            f"{source}: key length {qk_head} must exceed {ARCH}.rope.dimension_count = {rope_dim} (nope + rope)"
        )
    gating = k.get("expert_gating_func", GATING_SOFTMAX)
    if gating != GATING_SIGMOID:
        raise ConfigError(
            f"{source}: {ARCH}.expert_gating_func = {gating!r} (1 = softmax, the default when absent) is not "
            "supported; Kimi K2 / K2.5 and DeepSeek-V3 use 2 (sigmoid)"
        )
    n_experts = k.positive("expert_count")
    vocab = k.get("vocab_size", None)
    tokens = meta.get("tokenizer.ggml.tokens")
    if vocab is None:
        if not isinstance(tokens, list):
            raise ConfigError(f"{source}: neither {ARCH}.vocab_size nor tokenizer.ggml.tokens says the vocabulary size")
        vocab = len(tokens)
    eos = meta.get("tokenizer.ggml.eos_token_id")
    # multi-token-prediction layers, when a converter kept them, are counted in block_count and come last
    nextn = k.get("nextn_predict_layers", 0)
    blocks = k.positive("block_count")
    if not isinstance(nextn, int) or not 0 <= nextn < blocks:
        raise ConfigError(f"{source}: {ARCH}.nextn_predict_layers = {nextn!r}; expected 0 .. block_count - 1")
    return ModelConfig(
        vocab_size=vocab,
        hidden_size=k.positive("embedding_length"),
        intermediate_size=k.positive("feed_forward_length"),
        moe_intermediate_size=k.positive("expert_feed_forward_length"),
        num_hidden_layers=blocks - nextn,
        num_attention_heads=heads,
        q_lora_rank=q_lora,
        kv_lora_rank=kv_lora,
        qk_nope_head_dim=qk_head - rope_dim,
        qk_rope_head_dim=rope_dim,
        v_head_dim=v_head,
        n_routed_experts=n_experts,
        n_shared_experts=k.get("expert_shared_count", 0),
        num_experts_per_tok=k.positive("expert_used_count"),
        n_group=k.get("expert_group_count", 1) or 1,
        topk_group=k.get("expert_group_used_count", 1) or 1,
        routed_scaling_factor=float(k.get("expert_weights_scale", 1.0)),
        norm_topk_prob=bool(k.get("expert_weights_norm", False)),  # written only when true
        first_k_dense_replace=k.get("leading_dense_block_count", 0),
        rope_theta=float(k.get("rope.freq_base", 10000.0)),
        rope_scaling=_yarn(k),
        max_position_embeddings=k.positive("context_length"),
        rms_norm_eps=float(k.get("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings=False,  # decided by the reader: no output.weight means tied
        rope_interleave=True,  # llama.cpp keeps HF's weight order and ropes adjacent pairs (GPT-J style)
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        num_nextn_predict_layers=nextn,
    )


def _yarn(k: _Keys) -> RopeScaling | None:
    kind = k.get("rope.scaling.type", "none")
    if kind in ("none", None):
        return None
    if kind != "yarn":
        raise ConfigError(f"{k.source}: {ARCH}.rope.scaling.type = {kind!r} is not supported; expected 'yarn' or none")
    factor = float(k.get("rope.scaling.factor"))
    # llama.cpp stores 0.1 x mscale_all_dim; the softmax scale gets mscale(factor, mscale_all_dim)^2 and cos/sin
    # are left unscaled (its rope's own mscale is divided back out), hence attention_factor 1
    log_mul = float(k.get("rope.scaling.yarn_log_multiplier", 0.0))
    if not math.isfinite(log_mul) or log_mul < 0:
        raise ConfigError(f"{k.source}: {ARCH}.rope.scaling.yarn_log_multiplier = {log_mul!r}; expected 0 or more")
    return RopeScaling(
        factor=factor,
        original_max_position_embeddings=k.positive("rope.scaling.original_context_length"),
        beta_fast=float(k.get("rope.scaling.yarn_beta_fast", 32.0)),
        beta_slow=float(k.get("rope.scaling.yarn_beta_slow", 1.0)),
        mscale=log_mul / 0.1,
        mscale_all_dim=log_mul / 0.1,
        attention_factor=1.0,
    )
