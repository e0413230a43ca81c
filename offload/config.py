"""ModelConfig: what a checkpoint is, built once from config.json (DeepSeek-V3, Kimi K2, or K2.5's nested layout)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from offload.quant import FLOAT_DTYPES, ConfigError, QuantConfig, parse_quantization

Layout = Literal["deepseek_v3", "kimi_k2", "kimi_k25"]
LAYOUTS: tuple[str, ...] = ("deepseek_v3", "kimi_k2", "kimi_k25")
K25_PREFIX = "language_model."
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
    """The text model of a DeepSeek-V3 / Kimi K2 / K2.5 checkpoint, with paper names and derived sizes."""

    layout: Layout
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
    dtype: str = "bfloat16"
    num_nextn_predict_layers: int = 0
    quant: QuantConfig = field(default_factory=QuantConfig)

    def __post_init__(self) -> None:
        _validate(self)

    # ---- names -------------------------------------------------------------------------------------------
    @property
    def tensor_prefix(self) -> str:
        return K25_PREFIX if self.layout == "kimi_k25" else ""

    @property
    def safetensors_dtype(self) -> str:
        return FLOAT_DTYPES[self.dtype]

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

    # ---- config.json ---------------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        """Read `config.json` from a checkpoint folder."""
        folder = Path(path)
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise ConfigError(f"checkpoint folder {folder} {what} (pass --model with a folder that has config.json)")
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise ConfigError(f"{cfg_path} is missing: a checkpoint folder needs its config.json")
        try:
            raw = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cfg_path} is not valid JSON: {e}") from e
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        return _parse(raw)

    def to_dict(self) -> dict[str, Any]:
        """config.json contents in this config's layout (the inverse of from_dict)."""
        return _serialize(self)


def _validate(c: ModelConfig) -> None:
    if c.layout not in LAYOUTS:
        raise ConfigError(f"model_type {c.layout!r} is not supported; supported: {', '.join(LAYOUTS)}")
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
    if c.dtype not in FLOAT_DTYPES:
        raise ConfigError(f"dtype = {c.dtype!r} is not supported; expected one of {', '.join(FLOAT_DTYPES)}")
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
    if c.quant.format == "int4":
        gs = c.quant.group_size
        for name, width in (("hidden_size", c.hidden_size), ("moe_intermediate_size", c.moe_intermediate_size)):
            if width % gs:
                raise ConfigError(
                    f"{name} = {width} is not a multiple of the INT4 group_size {gs}: routed experts cannot be packed"
                )


def _get(d: dict[str, Any], key: str, default: Any = ...) -> Any:
    if key in d:
        return d[key]
    if default is ...:
        raise ConfigError(f"config.json has no {key!r}; it is required")
    return default


def _parse(raw: dict[str, Any]) -> ModelConfig:
    if not isinstance(raw, dict):
        raise ConfigError("config.json must hold a JSON object")
    model_type = raw.get("model_type")
    quant_raw = raw.get("quantization_config")
    if model_type == "kimi_k25":
        text = raw.get("text_config")
        if not isinstance(text, dict):
            raise ConfigError("model_type 'kimi_k25' needs a 'text_config' object holding the language model")
        inner = text.get("model_type")
        if inner not in ("kimi_k2", "deepseek_v3"):
            raise ConfigError(f"text_config.model_type = {inner!r}; expected 'kimi_k2' or 'deepseek_v3'")
        if "quantization_config" in text:
            if quant_raw is not None and quant_raw != text["quantization_config"]:
                raise ConfigError(
                    "quantization_config appears both at the top level and in text_config, with different values"
                )
            quant_raw = text["quantization_config"]
        d, layout = text, "kimi_k25"
    elif model_type in ("kimi_k2", "deepseek_v3"):
        d, layout = raw, model_type
    else:
        raise ConfigError(f"model_type = {model_type!r} is not supported; supported: deepseek_v3, kimi_k2, kimi_k25")

    for key, want in (("scoring_func", "sigmoid"), ("topk_method", "noaux_tc"), ("hidden_act", "silu")):
        if key in d and d[key] != want:
            raise ConfigError(f"{key} = {d[key]!r} is not supported; Kimi / DeepSeek-V3 use {want!r}")
    if d.get("moe_layer_freq", 1) != 1:
        raise ConfigError(
            f"moe_layer_freq = {d['moe_layer_freq']!r}; only 1 (every layer after the dense ones) is supported"
        )
    if d.get("attention_bias", False):
        raise ConfigError("attention_bias = true is not supported; Kimi / DeepSeek-V3 attention has no biases")

    # rope: legacy rope_theta + rope_scaling, or transformers 5's rope_parameters
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = d.get("rope_theta", rope.get("rope_theta"))
    if theta is None:
        raise ConfigError("config.json has no rope_theta (nor rope_parameters.rope_theta); it is required")
    scaling = None
    if rope_type == "yarn":
        if "factor" not in rope or "original_max_position_embeddings" not in rope:
            raise ConfigError("rope_scaling of type 'yarn' needs 'factor' and 'original_max_position_embeddings'")
        scaling = RopeScaling(
            factor=float(rope["factor"]),
            original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            beta_fast=float(rope.get("beta_fast") or 32),
            beta_slow=float(rope.get("beta_slow") or 1),
            # absent mscale reads as 0: transformers then scales cos/sin by mscale(factor) alone, as we do
            mscale=float(rope.get("mscale") or 0),
            mscale_all_dim=float(rope.get("mscale_all_dim") or 0),
            attention_factor=None if rope.get("attention_factor") is None else float(rope["attention_factor"]),
            truncate=bool(rope.get("truncate", True)),
        )
    elif rope_type != "default":
        raise ConfigError(f"rope_scaling type {rope_type!r} is not supported; expected 'yarn' or none")

    eos = d.get("eos_token_id", raw.get("eos_token_id"))
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    return ModelConfig(
        layout=layout,  # type: ignore[arg-type]
        vocab_size=_get(d, "vocab_size"),
        hidden_size=_get(d, "hidden_size"),
        intermediate_size=_get(d, "intermediate_size"),
        moe_intermediate_size=_get(d, "moe_intermediate_size"),
        num_hidden_layers=_get(d, "num_hidden_layers"),
        num_attention_heads=_get(d, "num_attention_heads"),
        q_lora_rank=_get(d, "q_lora_rank", None),
        kv_lora_rank=_get(d, "kv_lora_rank"),
        qk_nope_head_dim=_get(d, "qk_nope_head_dim"),
        qk_rope_head_dim=_get(d, "qk_rope_head_dim"),
        v_head_dim=_get(d, "v_head_dim"),
        n_routed_experts=_get(d, "n_routed_experts"),
        n_shared_experts=_get(d, "n_shared_experts", 1),
        num_experts_per_tok=_get(d, "num_experts_per_tok"),
        n_group=_get(d, "n_group", 1) or 1,
        topk_group=_get(d, "topk_group", 1) or 1,
        routed_scaling_factor=float(_get(d, "routed_scaling_factor", 1.0)),
        norm_topk_prob=bool(_get(d, "norm_topk_prob", True)),
        first_k_dense_replace=_get(d, "first_k_dense_replace", 0),
        rope_theta=float(theta),
        rope_scaling=scaling,
        max_position_embeddings=_get(d, "max_position_embeddings"),
        rms_norm_eps=float(_get(d, "rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", raw.get("tie_word_embeddings", False))),
        rope_interleave=bool(d.get("rope_interleave", True)),
        bos_token_id=d.get("bos_token_id", raw.get("bos_token_id")),
        eos_token_ids=eos_ids,
        pad_token_id=d.get("pad_token_id", raw.get("pad_token_id")),
        dtype=d.get("torch_dtype") or d.get("dtype") or "bfloat16",
        num_nextn_predict_layers=int(d.get("num_nextn_predict_layers", 0) or 0),
        quant=parse_quantization(quant_raw),
    )


def _serialize(c: ModelConfig) -> dict[str, Any]:
    rope: dict[str, Any] | None = None
    if c.rope_scaling is not None:
        rs = c.rope_scaling
        rope = {
            "type": "yarn",
            "factor": rs.factor,
            "original_max_position_embeddings": rs.original_max_position_embeddings,
            "beta_fast": rs.beta_fast,
            "beta_slow": rs.beta_slow,
            "mscale": rs.mscale,
            "mscale_all_dim": rs.mscale_all_dim,
        }
        if rs.attention_factor is not None:
            rope["attention_factor"] = rs.attention_factor
        if not rs.truncate:
            rope["truncate"] = False
    text: dict[str, Any] = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3" if c.layout == "deepseek_v3" else "kimi_k2",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "moe_intermediate_size": c.moe_intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_attention_heads,
        "q_lora_rank": c.q_lora_rank,
        "kv_lora_rank": c.kv_lora_rank,
        "qk_nope_head_dim": c.qk_nope_head_dim,
        "qk_rope_head_dim": c.qk_rope_head_dim,
        "v_head_dim": c.v_head_dim,
        "n_routed_experts": c.n_routed_experts,
        "n_shared_experts": c.n_shared_experts,
        "num_experts_per_tok": c.num_experts_per_tok,
        "n_group": c.n_group,
        "topk_group": c.topk_group,
        "routed_scaling_factor": c.routed_scaling_factor,
        "norm_topk_prob": c.norm_topk_prob,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "moe_layer_freq": 1,
        "first_k_dense_replace": c.first_k_dense_replace,
        "hidden_act": "silu",
        "attention_bias": False,
        "rope_theta": c.rope_theta,
        "rope_scaling": rope,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_ids[0] if len(c.eos_token_ids) == 1 else list(c.eos_token_ids) or None,
        "pad_token_id": c.pad_token_id,
        "torch_dtype": c.dtype,
        "num_nextn_predict_layers": c.num_nextn_predict_layers,
        "use_cache": True,
    }
    if not c.rope_interleave:
        text["rope_interleave"] = False
    q = c.quant.to_dict()
    if q is not None:
        text["quantization_config"] = q
    if c.layout != "kimi_k25":
        return text
    return {
        "architectures": ["KimiK25ForConditionalGeneration"],
        "model_type": "kimi_k25",
        "text_config": text,
        "vision_config": {"model_type": "moonvit", "num_hidden_layers": 27, "hidden_size": 1152, "patch_size": 14},
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": text["eos_token_id"],
        "pad_token_id": c.pad_token_id,
        "torch_dtype": c.dtype,
    }
