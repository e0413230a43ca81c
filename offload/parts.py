"""The model's parts, enumerated once: every module of the text model with its kind, shape and part, in forward order.

Checkpoint readers map these to their own tensor names and formats; the planner counts parameters from them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from offload.config import ModelConfig

Kind = Literal["linear", "norm", "router", "router_bias", "embed"]


@dataclass(frozen=True, slots=True)
class Module:
    """One weight of the text model, named as transformers' DeepseekV3 names its module (no layout prefix)."""

    name: str  # e.g. "model.layers.3.self_attn.q_a_proj", "model.layers.3.input_layernorm"
    kind: Kind
    shape: tuple[int, ...]  # linear, router, embed: [out, in] / [E, H] / [V, H]; norm, router_bias: [n]
    part: str  # one of offload.config.PARTS
    layer: int | None = None
    expert: int | None = None

    @property
    def params(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def expert_module(layer: int, expert: int, proj: str) -> str:
    return f"model.layers.{layer}.mlp.experts.{expert}.{proj}"


def expert_modules(cfg: ModelConfig, layer: int, expert: int) -> Iterator[Module]:
    """One routed expert: gate, up, down."""
    for proj, shape in cfg.mlp_linears(cfg.moe_intermediate_size).items():
        yield Module(expert_module(layer, expert, proj), "linear", shape, "routed_experts", layer, expert)


def layer_modules(cfg: ModelConfig, layer: int, routed: bool = True) -> Iterator[Module]:
    """Layer `layer` in forward order; routed experts last, expert by expert (left out with routed=False)."""
    p = f"model.layers.{layer}"
    h = cfg.hidden_size
    yield Module(f"{p}.input_layernorm", "norm", (h,), "norms", layer)
    for name, shape in cfg.attention_linears().items():
        yield Module(f"{p}.self_attn.{name}", "linear", shape, "attention", layer)
        if name == "q_a_proj":
            yield Module(f"{p}.self_attn.q_a_layernorm", "norm", (cfg.q_lora_rank or 0,), "norms", layer)
        if name == "kv_a_proj_with_mqa":
            yield Module(f"{p}.self_attn.kv_a_layernorm", "norm", (cfg.kv_lora_rank,), "norms", layer)
    yield Module(f"{p}.post_attention_layernorm", "norm", (h,), "norms", layer)
    if not cfg.is_moe_layer(layer):
        for name, shape in cfg.mlp_linears(cfg.intermediate_size).items():
            yield Module(f"{p}.mlp.{name}", "linear", shape, "dense_mlp", layer)
        return
    yield Module(f"{p}.mlp.gate", "router", (cfg.n_routed_experts, h), "router", layer)
    yield Module(f"{p}.mlp.gate", "router_bias", (cfg.n_routed_experts,), "router", layer)
    if cfg.n_shared_experts:
        for name, shape in cfg.mlp_linears(cfg.moe_intermediate_size * cfg.n_shared_experts).items():
            yield Module(f"{p}.mlp.shared_experts.{name}", "linear", shape, "shared_experts", layer)
    for e in range(cfg.n_routed_experts if routed else 0):
        yield from expert_modules(cfg, layer, e)


def model_modules(cfg: ModelConfig, routed: bool = True) -> Iterator[Module]:
    """The whole text model in forward order: embedding, layers, final norm, lm_head (absent when tied); without the
    routed experts when routed=False (their 3 x experts x layers entries are not even made)."""
    yield Module("model.embed_tokens", "embed", (cfg.vocab_size, cfg.hidden_size), "embed")
    for layer in range(cfg.num_hidden_layers):
        yield from layer_modules(cfg, layer, routed)
    yield Module("model.norm", "norm", (cfg.hidden_size,), "norms")
    if not cfg.tie_word_embeddings:
        yield Module("lm_head", "linear", (cfg.vocab_size, cfg.hidden_size), "lm_head")
