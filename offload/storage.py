"""Storage: how a checkpoint stores the model (bytes per part, the routed experts' format), apart from what the model
is (ModelConfig). A checkpoint reader measures it from its index; a built-in model computes it from its published
quantization."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kernels.formats import FORMATS, fused_expert_format, label
from offload.config import PARTS


@dataclass(frozen=True, slots=True)
class Storage:
    """Stored bytes and formats of one checkpoint's text model."""

    expert_format: str  # a kernels.formats tag
    expert_params: tuple[int, ...]  # the format's parameters: int4 (group,), fp8 (rows, cols) per scale
    expert_bytes: int  # one routed expert as the store maps it: every byte of its tensors
    expert_weight_bytes: int  # one routed expert's weights and scales: what a kernel reads and memory must hold
    part_bytes: Mapping[str, int]  # every part but routed_experts, as stored (0 for an absent part)
    float_format: str  # the embedding's: bf16, f16 or f32 (GGUF: maybe a ggml type, dequantized at load)
    expert_formats: tuple[str, ...] = ()  # GGUF: every type the routed experts use, most bytes first (they mix)
    ggml_parts: frozenset[str] = frozenset()  # GGUF: non-expert parts whose Linears are in ggml types (kept so)

    def __post_init__(self) -> None:
        if self.expert_format not in FORMATS:
            raise ValueError(f"expert format {self.expert_format!r} is unknown; known: {', '.join(FORMATS)}")
        missing = set(PARTS) - {"routed_experts"} - set(self.part_bytes)
        if missing:
            raise ValueError(f"part_bytes lacks {sorted(missing)}")

    @property
    def fused_experts(self) -> bool:
        """The routed experts can run in the fused kernels (native CPU, GPU slots) as stored."""
        return fused_expert_format(self.expert_format, self.expert_params)

    @property
    def expert_label(self) -> str:
        if len(self.expert_formats) > 1:
            return "mixed " + "/".join(self.expert_formats)
        return label(self.expert_format, self.expert_params)

    @property
    def nonexpert_bytes(self) -> int:
        return sum(self.part_bytes.values())
