"""The safetensors release layout: each model module's tensors (names with the layout's prefix, shapes, dtypes) as
config.json (an HfConfig: layout, dtype, quantization) implies them, and the Storage that follows from them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from offload.config import PARTS
from offload.hf_config import HfConfig
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


def module_tensors(hf: HfConfig, m: Module) -> Iterator[TensorSpec]:
    """The stored tensors of one module."""
    full = hf.tensor_prefix + m.name
    dt = hf.safetensors_dtype
    if m.kind == "linear":
        out_f, in_f = m.shape
        quantized = hf.quant.quantizes(m.name, hf.tensor_prefix)
        for suffix, (shape, dtype) in hf.quant.linear_tensors(out_f, in_f, dt, quantized).items():
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


def expert_tensors(hf: HfConfig, layer: int, expert: int) -> Iterator[TensorSpec]:
    """The tensors of one routed expert: gate, up, down (packed weights and scales when quantized)."""
    for m in expert_modules(hf.model, layer, expert):
        yield from module_tensors(hf, m)


def model_tensors(hf: HfConfig, routed: bool = True) -> Iterator[TensorSpec]:
    """Every tensor of the text model, in forward order: embeddings, layers, final norm, lm_head."""
    for m in model_modules(hf.model, routed):
        yield from module_tensors(hf, m)


def expert_format(hf: HfConfig) -> tuple[str, tuple[int, ...]]:
    """(kernels.formats tag, its parameters) of the routed experts as config.json declares them."""
    moe = hf.model.moe_layers
    layer = moe[0] if len(moe) else 0
    q = hf.quant
    if q.format != "bf16" and q.quantizes(f"model.layers.{layer}.mlp.experts.0.up_proj", hf.tensor_prefix):
        return ("int4", (q.group_size,)) if q.format == "int4" else ("fp8", q.block)
    return FLOAT_TAGS[hf.safetensors_dtype], ()


def layout_storage(hf: HfConfig, nbytes: Callable[[TensorSpec], int] = lambda s: s.nbytes) -> Storage:
    """The Storage of this layout, with each tensor's size from `nbytes` (default: the size its spec implies)."""
    parts = dict.fromkeys((p for p in PARTS if p != "routed_experts"), 0)
    for spec in model_tensors(hf, routed=False):
        parts[spec.part] += nbytes(spec)
    moe = hf.model.moe_layers
    layer = moe[0] if len(moe) else 0
    expert = list(expert_tensors(hf, layer, 0))
    fmt, params = expert_format(hf)
    return Storage(
        expert_format=fmt,
        expert_params=params,
        expert_bytes=sum(nbytes(s) for s in expert),
        expert_weight_bytes=sum(nbytes(s) for s in expert if s.role != "weight_shape"),
        part_bytes=parts,
        float_format=FLOAT_TAGS[hf.safetensors_dtype],
    )
