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
    # ggml types (GGUF files): one uint8 row of blocks per output row, blocks along the input dimension
    "q4_0": "ggml Q4_0: 32 4-bit weights, an f16 scale",
    "q4_1": "ggml Q4_1: 32 4-bit weights, an f16 scale and minimum",
    "q5_0": "ggml Q5_0: 32 5-bit weights, an f16 scale",
    "q5_1": "ggml Q5_1: 32 5-bit weights, an f16 scale and minimum",
    "q8_0": "ggml Q8_0: 32 8-bit weights, an f16 scale",
    "q2_k": "ggml Q2_K: 256 2-bit weights, 4-bit scales and minimums per 16, f16 super-scales",
    "q3_k": "ggml Q3_K: 256 3-bit weights, 6-bit scales per 16, an f16 super-scale",
    "q4_k": "ggml Q4_K: 256 4-bit weights, 6-bit scales and minimums per 32, f16 super-scales",
    "q5_k": "ggml Q5_K: 256 5-bit weights, 6-bit scales and minimums per 32, f16 super-scales",
    "q6_k": "ggml Q6_K: 256 6-bit weights, int8 scales per 16, an f16 super-scale",
    "iq1_s": "ggml IQ1_S: 256 weights as 11-bit indices into a ternary 8-grid, 3-bit scales per 32",
    "iq1_m": "ggml IQ1_M: 256 weights as 11-bit indices into a ternary 8-grid, 3-bit scales per 16",
    "iq2_xxs": "ggml IQ2_XXS: 256 weights as 8-bit grid indices and 7-bit signs per 8, 4-bit scales per 32",
    "iq2_xs": "ggml IQ2_XS: 256 weights as 9-bit grid indices and 7-bit signs per 8, 4-bit scales per 16",
    "iq2_s": "ggml IQ2_S: 256 weights as 10-bit grid indices and 8 sign bits per 8, 4-bit scales per 16",
    "iq3_xxs": "ggml IQ3_XXS: 256 weights as 8-bit indices into a 4-grid, 7-bit signs per 8, 4-bit scales per 32",
    "iq3_s": "ggml IQ3_S: 256 weights as 9-bit indices into a 4-grid, a sign bit each, 4-bit scales per 32",
    "iq4_nl": "ggml IQ4_NL: 32 4-bit indices into a non-linear 16-value table, an f16 scale",
    "iq4_xs": "ggml IQ4_XS: 256 4-bit indices into IQ4_NL's table, 6-bit scales per 32, an f16 super-scale",
    "tq1_0": "ggml TQ1_0: 256 ternary weights packed 5 per byte (base 3), an f16 scale",
    "tq2_0": "ggml TQ2_0: 256 ternary weights in 2 bits each, an f16 scale",
    "mxfp4": "ggml MXFP4: 32 e2m1 (fp4) weights, an e8m0 power-of-two scale",
}
FLOAT_FORMATS = ("bf16", "f16", "f32")

# ggml tag -> (weights per block, bytes per block), the values of gguf.GGML_QUANT_SIZES
GGML_BLOCKS: dict[str, tuple[int, int]] = {
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
    "q8_0": (32, 34),
    "q2_k": (256, 84),
    "q3_k": (256, 110),
    "q4_k": (256, 144),
    "q5_k": (256, 176),
    "q6_k": (256, 210),
    "iq1_s": (256, 50),
    "iq1_m": (256, 56),
    "iq2_xxs": (256, 66),
    "iq2_xs": (256, 74),
    "iq2_s": (256, 82),
    "iq3_xxs": (256, 98),
    "iq3_s": (256, 110),
    "iq4_nl": (32, 18),
    "iq4_xs": (256, 136),
    "tq1_0": (256, 54),
    "tq2_0": (256, 66),
    "mxfp4": (32, 17),
}

# the expert types of the GGUF files users run (issue 16's list): what `bench-kernels` times by default, in order
GGML_EXPERT_TYPES = (
    "q4_0",
    "q8_0",
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
    "iq1_s",
    "iq1_m",
    "iq2_xxs",
    "iq2_xs",
    "iq3_xxs",
    "iq3_s",
    "iq4_xs",
)


def label(fmt: str, params: tuple[int, ...]) -> str:
    """Short name as `plan` and `inspect` print it: 'int4 g32', 'fp8 128x128', 'bf16', 'q4_k'."""
    if fmt == "int4":
        return f"int4 g{params[0]}"
    if fmt == "fp8":
        return f"fp8 {params[0]}x{params[1]}"
    return fmt


def fused_expert_format(fmt: str, params: tuple[int, ...]) -> bool:
    """Whether the fused expert kernels read this format in place: the native CPU kernel, and the GPU slot pool with
    its Triton kernel. INT4 group 32 only (K2.5); other formats are dequantized per expert on the CPU."""
    return fmt == "int4" and params == (32,)


def ggml_bits_per_weight(fmt: str) -> float:
    """Stored bits per weight of a ggml type, scales included: 'q4_0' -> 4.5, 'iq1_s' -> 1.5625."""
    block_size, type_size = _ggml_block(fmt)
    return 8 * type_size / block_size


def ggml_row_bytes(fmt: str, in_features: int) -> int:
    """Bytes of one stored row of `in_features` weights; the row must be a whole number of blocks."""
    block_size, type_size = _ggml_block(fmt)
    if in_features <= 0 or in_features % block_size:
        raise ValueError(
            f"a {fmt} row holds whole blocks of {block_size} weights; in_features {in_features} is not a positive "
            f"multiple of {block_size} (store this tensor in a type with smaller blocks, e.g. q8_0, or as f16)"
        )
    return in_features // block_size * type_size


def _ggml_block(fmt: str) -> tuple[int, int]:
    if fmt not in GGML_BLOCKS:
        raise ValueError(f"{fmt!r} is not a ggml quantized type; known: {', '.join(GGML_BLOCKS)}")
    return GGML_BLOCKS[fmt]
