"""The safetensors release layout: each model module's tensors (names with the layout's prefix, shapes, dtypes) as
config.json's quantization implies them, and the Storage that follows from them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from offload.config import PARTS, ModelConfig
from offload.parts import Module, expert_modules, model_modules
from offload.quant import DTYPE_BYTES
from offload.storage import Storage

FLOAT_TAGS = {"BF16": "bf16", "F16": "f16", "F32": "f32"}  # safetensors dtype -> kernels.formats tag


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

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtypes[0]]


def module_tensors(cfg: ModelConfig, m: Module) -> Iterator[TensorSpec]:
    """The stored tensors of one module."""
    full = cfg.tensor_prefix + m.name
    dt = cfg.safetensors_dtype
    if m.kind == "linear":
        out_f, in_f = m.shape
        quantized = cfg.quant.quantizes(m.name, cfg.tensor_prefix)
        for suffix, (shape, dtype) in cfg.quant.linear_tensors(out_f, in_f, dt, quantized).items():
            yield TensorSpec(
                f"{full}.{suffix}", shape, (dtype,), m.part, m.name, suffix, in_f, out_f, m.layer, m.expert
            )
    elif m.kind == "router":
        yield TensorSpec(f"{full}.weight", m.shape, (dt,), m.part, m.name, "weight", m.shape[1], m.shape[0], m.layer)
    elif m.kind == "router_bias":  # transformers keeps the bias in float32 whatever the weights' dtype; accept both
        yield TensorSpec(f"{full}.e_score_correction_bias", m.shape, ("F32", dt), m.part, m.name, "bias", 0, 0, m.layer)
    elif m.kind == "embed":
        yield TensorSpec(f"{full}.weight", m.shape, (dt,), m.part, m.name, "embed")
    else:
        yield TensorSpec(f"{full}.weight", m.shape, (dt,), m.part, m.name, "norm", 0, 0, m.layer)


def expert_tensors(cfg: ModelConfig, layer: int, expert: int) -> Iterator[TensorSpec]:
    """The tensors of one routed expert: gate, up, down (packed weights and scales when quantized)."""
    for m in expert_modules(cfg, layer, expert):
        yield from module_tensors(cfg, m)


def model_tensors(cfg: ModelConfig, routed: bool = True) -> Iterator[TensorSpec]:
    """Every tensor of the text model, in forward order: embeddings, layers, final norm, lm_head."""
    for m in model_modules(cfg, routed):
        yield from module_tensors(cfg, m)


def expert_format(cfg: ModelConfig) -> tuple[str, tuple[int, ...]]:
    """(kernels.formats tag, its parameters) of the routed experts as config.json declares them."""
    layer = cfg.moe_layers[0] if len(cfg.moe_layers) else 0
    q = cfg.quant
    if q.format != "bf16" and q.quantizes(f"model.layers.{layer}.mlp.experts.0.up_proj", cfg.tensor_prefix):
        return ("int4", (q.group_size,)) if q.format == "int4" else ("fp8", q.block)
    return FLOAT_TAGS[cfg.safetensors_dtype], ()


def layout_storage(cfg: ModelConfig, nbytes: Callable[[TensorSpec], int] = lambda s: s.nbytes) -> Storage:
    """The Storage of this layout, with each tensor's size from `nbytes` (default: the size its spec implies)."""
    parts = dict.fromkeys((p for p in PARTS if p != "routed_experts"), 0)
    for spec in model_tensors(cfg, routed=False):
        parts[spec.part] += nbytes(spec)
    layer = cfg.moe_layers[0] if len(cfg.moe_layers) else 0
    expert = list(expert_tensors(cfg, layer, 0))
    fmt, params = expert_format(cfg)
    return Storage(
        expert_format=fmt,
        expert_params=params,
        expert_bytes=sum(nbytes(s) for s in expert),
        expert_weight_bytes=sum(nbytes(s) for s in expert if s.role != "weight_shape"),
        part_bytes=parts,
        float_format=FLOAT_TAGS[cfg.safetensors_dtype],
    )
