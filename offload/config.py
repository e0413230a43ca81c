"""ModelConfig: the architecture of a DeepSeek-V3 / Kimi K2 / K2.5 text model, whatever file it came from (a Hugging
Face config.json: offload/hf_config.py; GGUF metadata). How the weights are stored is the checkpoint's Storage."""

from __future__ import annotations

from dataclasses import dataclass

from offload.quant import ConfigError

# the model parts sizes are reported by (routed_experts apart, the rest in nonexpert_bytes_by_part)
PARTS = ("embed", "attention", "norms", "dense_mlp", "router", "shared_experts", "routed_experts", "lm_head")


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """YaRN parameters (the only scaling Kimi and DeepSeek-V3 use)."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0  # 0 when config.json omits it (transformers then ignores mscale_all_dim for cos/sin)
    mscale_all_dim: float = 0.0  # 0: no softmax rescale (transformers' default)
    attention_factor: float | None = None  # cos/sin multiplier; None: derived from factor and the mscales
    truncate: bool = True  # round the correction range to whole dimensions (YaRN as published)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The text model of a DeepSeek-V3 / Kimi K2 / K2.5 checkpoint, with paper names and derived shapes."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int  # dense layers' MLP
    moe_intermediate_size: int  # one routed expert (the shared expert is n_shared_experts times this)
    num_hidden_layers: int
    num_attention_heads: int
    q_lora_rank: int | None  # None: a plain q_proj instead of q_a/q_b
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    norm_topk_prob: bool
    first_k_dense_replace: int
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int
    rms_norm_eps: float
    tie_word_embeddings: bool = False
    rope_interleave: bool = True
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    num_nextn_predict_layers: int = 0

    def __post_init__(self) -> None:
        _validate(self)

    # ---- shape -------------------------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_k_dense_replace

    @property
    def moe_layers(self) -> range:
        return range(self.first_k_dense_replace, self.num_hidden_layers)

    @property
    def kv_values_per_token_layer(self) -> int:
        """MLA caches the normed latent and the roped shared key: kv_lora_rank + qk_rope_head_dim values."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """Latent KV cache bytes per token over all layers (bf16 by default)."""
        return self.kv_values_per_token_layer * self.num_hidden_layers * bytes_per_value

    def attention_linears(self) -> dict[str, tuple[int, int]]:
        """Attention projection name -> [out, in]."""
        h, n = self.hidden_size, self.num_attention_heads
        lin: dict[str, tuple[int, int]] = {}
        if self.q_lora_rank is None:
            lin["q_proj"] = (n * self.qk_head_dim, h)
        else:
            lin["q_a_proj"] = (self.q_lora_rank, h)
            lin["q_b_proj"] = (n * self.qk_head_dim, self.q_lora_rank)
        lin["kv_a_proj_with_mqa"] = (self.kv_lora_rank + self.qk_rope_head_dim, h)
        lin["kv_b_proj"] = (n * (self.qk_nope_head_dim + self.v_head_dim), self.kv_lora_rank)
        lin["o_proj"] = (h, n * self.v_head_dim)
        return lin

    def mlp_linears(self, inter: int) -> dict[str, tuple[int, int]]:
        """SwiGLU MLP projection name -> [out, in] for an intermediate width."""
        h = self.hidden_size
        return {"gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}


def _validate(c: ModelConfig) -> None:
    positive = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "moe_intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "kv_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
        "n_routed_experts",
        "num_experts_per_tok",
        "n_group",
        "topk_group",
        "max_position_embeddings",
    )
    for name in positive:
        v = getattr(c, name)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{name} = {v!r}; expected a positive integer")
    if c.q_lora_rank is not None and c.q_lora_rank <= 0:
        raise ConfigError(f"q_lora_rank = {c.q_lora_rank!r}; expected a positive integer or null")
    if c.n_shared_experts < 0:
        raise ConfigError(f"n_shared_experts = {c.n_shared_experts!r}; expected 0 or more")
    if c.qk_rope_head_dim % 2:
        raise ConfigError(f"qk_rope_head_dim = {c.qk_rope_head_dim}; RoPE rotates pairs, so it must be even")
    if not 0 <= c.first_k_dense_replace <= c.num_hidden_layers:
        raise ConfigError(
            f"first_k_dense_replace = {c.first_k_dense_replace}; expected 0..num_hidden_layers ({c.num_hidden_layers})"
        )
    if c.n_routed_experts % c.n_group:
        raise ConfigError(f"n_routed_experts = {c.n_routed_experts} is not divisible by n_group = {c.n_group}")
    if c.topk_group > c.n_group:
        raise ConfigError(f"topk_group = {c.topk_group} exceeds n_group = {c.n_group}")
    per_group = c.n_routed_experts // c.n_group
    if c.n_group > 1 and per_group < 2:
        raise ConfigError(f"n_group = {c.n_group} leaves {per_group} expert per group; group scoring needs 2 or more")
    if c.num_experts_per_tok > c.topk_group * per_group:
        raise ConfigError(
            f"num_experts_per_tok = {c.num_experts_per_tok} exceeds the {c.topk_group * per_group} experts "
            f"in topk_group = {c.topk_group} groups of {per_group}"
        )
    if not c.rms_norm_eps > 0:
        raise ConfigError(f"rms_norm_eps = {c.rms_norm_eps!r}; expected a positive number")
    rs = c.rope_scaling
    if rs is not None and (
        rs.factor <= 0 or rs.original_max_position_embeddings <= 0 or rs.beta_slow <= 0 or rs.beta_fast < rs.beta_slow
    ):
        # K2-Instruct ships beta_fast == beta_slow == 1, so equality is allowed
        raise ConfigError(
            f"rope_scaling = {rs}: need factor > 0, original_max_position_embeddings > 0, beta_fast >= beta_slow > 0"
        )
