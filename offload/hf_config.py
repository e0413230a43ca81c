"""HfConfig: a Hugging Face release's config.json: the architecture (a ModelConfig) and how its safetensors store it:
the layout (DeepSeek-V3, Kimi K2, or K2.5's nested `text_config` with its `language_model.` tensor prefix), the float
dtype and the quantization (compressed-tensors INT4, FP8 blocks, or none)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from offload.config import ModelConfig, RopeScaling
from offload.quant import FLOAT_DTYPES, ConfigError, QuantConfig, parse_quantization

Layout = Literal["deepseek_v3", "kimi_k2", "kimi_k25"]
LAYOUTS: tuple[str, ...] = ("deepseek_v3", "kimi_k2", "kimi_k25")
K25_PREFIX = "language_model."


@dataclass(frozen=True, slots=True)
class HfConfig:
    """config.json: `model` is the architecture; the rest says how the release's safetensors hold it."""

    model: ModelConfig
    layout: Layout
    dtype: str = "bfloat16"  # the unquantized tensors' dtype (torch_dtype)
    quant: QuantConfig = field(default_factory=QuantConfig)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"model_type {self.layout!r} is not supported; supported: {', '.join(LAYOUTS)}")
        if self.dtype not in FLOAT_DTYPES:
            raise ConfigError(f"dtype = {self.dtype!r} is not supported; expected one of {', '.join(FLOAT_DTYPES)}")
        m, gs = self.model, self.quant.group_size
        if self.quant.format == "int4":
            for name, width in (("hidden_size", m.hidden_size), ("moe_intermediate_size", m.moe_intermediate_size)):
                if width % gs:
                    raise ConfigError(
                        f"{name} = {width} is not a multiple of the INT4 group_size {gs}: experts cannot be packed"
                    )

    @property
    def tensor_prefix(self) -> str:
        return K25_PREFIX if self.layout == "kimi_k25" else ""

    @property
    def safetensors_dtype(self) -> str:
        return FLOAT_DTYPES[self.dtype]

    @classmethod
    def from_dir(cls, path: str | Path) -> HfConfig:
        """Read `config.json` from a checkpoint folder."""
        folder = Path(path)
        if not folder.is_dir():
            what = "is a file, neither a folder nor a .gguf file" if folder.exists() else "does not exist"
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
    def from_dict(cls, raw: dict[str, Any]) -> HfConfig:
        return _parse(raw)

    def to_dict(self) -> dict[str, Any]:
        """config.json contents in this layout (the inverse of from_dict)."""
        return _serialize(self)


def _get(d: dict[str, Any], key: str, default: Any = ...) -> Any:
    if key in d:
        return d[key]
    if default is ...:
        raise ConfigError(f"config.json has no {key!r}; it is required")
    return default


def _parse(raw: dict[str, Any]) -> HfConfig:
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
    model = ModelConfig(
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
        num_nextn_predict_layers=int(d.get("num_nextn_predict_layers", 0) or 0),
    )
    dtype = d.get("torch_dtype") or d.get("dtype") or "bfloat16"
    return HfConfig(model, layout, dtype, parse_quantization(quant_raw))  # type: ignore[arg-type]


def _serialize(hf: HfConfig) -> dict[str, Any]:
    c = hf.model
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
        "model_type": "deepseek_v3" if hf.layout == "deepseek_v3" else "kimi_k2",
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
        "torch_dtype": hf.dtype,
        "num_nextn_predict_layers": c.num_nextn_predict_layers,
        "use_cache": True,
    }
    if not c.rope_interleave:
        text["rope_interleave"] = False
    q = hf.quant.to_dict()
    if q is not None:
        text["quantization_config"] = q
    if hf.layout != "kimi_k25":
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
        "torch_dtype": hf.dtype,
    }
