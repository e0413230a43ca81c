"""Stored weight formats: the tag each stored Linear carries, and what each format can do. No torch here: the
planner asks these questions too."""

from __future__ import annotations

# tag -> what it is
FORMATS = {
    "bf16": "bfloat16",
    "f16": "float16",
    "f32": "float32",
    "int4": "INT4 pack-quantized (compressed-tensors): int32 words of 8 nibbles, a bf16 scale per group",
    "fp8": "FP8 e4m3 with a float32 scale_inv per block",
}
FLOAT_FORMATS = ("bf16", "f16", "f32")


def label(fmt: str, params: tuple[int, ...]) -> str:
    """Short name as `plan` and `inspect` print it: 'int4 g32', 'fp8 128x128', 'bf16'."""
    if fmt == "int4":
        return f"int4 g{params[0]}"
    if fmt == "fp8":
        return f"fp8 {params[0]}x{params[1]}"
    return fmt


def fused_expert_format(fmt: str, params: tuple[int, ...]) -> bool:
    """Whether the fused expert kernels read this format in place: the native CPU kernel, and the GPU slot pool with
    its Triton kernel. INT4 group 32 only (K2.5); other formats are dequantized per expert on the CPU."""
    return fmt == "int4" and params == (32,)
