"""The tensors a ModelConfig implies: names (with the layout's prefix), shapes, dtypes, and the part each belongs to."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from offload.config import ModelConfig


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor the checkpoint must hold."""

    name: str  # full name as stored, prefix included
    shape: tuple[int, ...]
    dtypes: tuple[str, ...]  # accepted safetensors dtypes; the first is what the generator writes
    part: str  # one of offload.config.PARTS
    module: str  # owning module without the prefix, e.g. "model.layers.1.mlp.experts.7.up_proj"
    # "weight" | "weight_packed" | "weight_scale" | "weight_shape" | "weight_scale_inv" | "norm" | "bias" | "embed"
    role: str
    fan_in: int = 0  # [out, in] of the owning Linear (0 for vectors)
    fan_out: int = 0
    layer: int | None = None
    expert: int | None = None


def expert_module(layer: int, expert: int, proj: str) -> str:
    return f"model.layers.{layer}.mlp.experts.{expert}.{proj}"


def _linear(cfg: ModelConfig, module: str, out_f: int, in_f: int, part: str, layer: int | None = None,
            expert: int | None = None) -> Iterator[TensorSpec]:  # fmt: skip
    quantized = cfg.quant.quantizes(module, cfg.tensor_prefix)
    for suffix, (shape, dtype) in cfg.quant.linear_tensors(out_f, in_f, cfg.safetensors_dtype, quantized).items():
        yield TensorSpec(
            cfg.tensor_prefix + f"{module}.{suffix}", shape, (dtype,), part, module, suffix, in_f, out_f, layer, expert
        )


def _vector(cfg: ModelConfig, module: str, suffix: str, n: int, part: str, role: str, layer: int | None,
            dtypes: tuple[str, ...] | None = None) -> TensorSpec:  # fmt: skip
    return TensorSpec(cfg.tensor_prefix + f"{module}.{suffix}", (n,), dtypes or (cfg.safetensors_dtype,), part,
                      module, role, 0, 0, layer)  # fmt: skip


def layer_tensors(cfg: ModelConfig, layer: int) -> Iterator[TensorSpec]:
    """Layer `layer`'s tensors in forward order; routed experts last, expert by expert."""
    p = f"model.layers.{layer}"
    yield _vector(cfg, f"{p}.input_layernorm", "weight", cfg.hidden_size, "norms", "norm", layer)
    for name, (out_f, in_f) in cfg.attention_linears().items():
        yield from _linear(cfg, f"{p}.self_attn.{name}", out_f, in_f, "attention", layer)
        if name == "q_a_proj":
            yield _vector(cfg, f"{p}.self_attn.q_a_layernorm", "weight", cfg.q_lora_rank or 0, "norms", "norm", layer)
        if name == "kv_a_proj_with_mqa":
            yield _vector(cfg, f"{p}.self_attn.kv_a_layernorm", "weight", cfg.kv_lora_rank, "norms", "norm", layer)
    yield _vector(cfg, f"{p}.post_attention_layernorm", "weight", cfg.hidden_size, "norms", "norm", layer)
    if not cfg.is_moe_layer(layer):
        for name, (out_f, in_f) in cfg.mlp_linears(cfg.intermediate_size).items():
            yield from _linear(cfg, f"{p}.mlp.{name}", out_f, in_f, "dense_mlp", layer)
        return
    yield TensorSpec(cfg.tensor_prefix + f"{p}.mlp.gate.weight", (cfg.n_routed_experts, cfg.hidden_size),
                     (cfg.safetensors_dtype,), "router", f"{p}.mlp.gate", "weight", cfg.hidden_size,
                     cfg.n_routed_experts, layer)  # fmt: skip
    # transformers keeps the bias in float32 whatever the weights' dtype; accept both
    yield _vector(cfg, f"{p}.mlp.gate", "e_score_correction_bias", cfg.n_routed_experts, "router", "bias", layer,
                  ("F32", cfg.safetensors_dtype))  # fmt: skip
    if cfg.n_shared_experts:
        inter = cfg.moe_intermediate_size * cfg.n_shared_experts
        for name, (out_f, in_f) in cfg.mlp_linears(inter).items():
            yield from _linear(cfg, f"{p}.mlp.shared_experts.{name}", out_f, in_f, "shared_experts", layer)
    for e in range(cfg.n_routed_experts):
        yield from expert_tensors(cfg, layer, e)


def expert_tensors(cfg: ModelConfig, layer: int, expert: int) -> Iterator[TensorSpec]:
    """The tensors of one routed expert: gate, up, down (packed weights and scales when quantized)."""
    for proj, (out_f, in_f) in cfg.mlp_linears(cfg.moe_intermediate_size).items():
        yield from _linear(cfg, expert_module(layer, expert, proj), out_f, in_f, "routed_experts", layer, expert)


def model_tensors(cfg: ModelConfig) -> Iterator[TensorSpec]:
    """Every tensor of the text model, in forward order: embeddings, layers, final norm, lm_head."""
    yield TensorSpec(cfg.tensor_prefix + "model.embed_tokens.weight", (cfg.vocab_size, cfg.hidden_size),
                     (cfg.safetensors_dtype,), "embed", "model.embed_tokens", "embed")  # fmt: skip
    for layer in range(cfg.num_hidden_layers):
        yield from layer_tensors(cfg, layer)
    yield _vector(cfg, "model.norm", "weight", cfg.hidden_size, "norms", "norm", None)
    if not cfg.tie_word_embeddings:
        yield from _linear(cfg, "lm_head", cfg.vocab_size, cfg.hidden_size, "lm_head")
