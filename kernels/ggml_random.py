"""Random valid ggml blocks, for tests, benchmarks and synthetic GGUF files: random bytes whose scale fields hold
finite, moderate values of both signs. They cover every type, the K and i-quants too, which gguf cannot quantize."""

from __future__ import annotations

import numpy as np

from kernels.formats import GGML_BLOCKS, ggml_row_bytes

# byte offsets of the f16 scale fields (d, dmin) in a block; IQ1_M splits its f16 over four nibbles and MXFP4 has
# an e8m0 exponent byte instead, both set in random_ggml_blocks
F16_FIELDS: dict[str, tuple[int, ...]] = {
    "q4_0": (0,),
    "q4_1": (0, 2),
    "q5_0": (0,),
    "q5_1": (0, 2),
    "q8_0": (0,),
    "q2_k": (80, 82),
    "q3_k": (108,),
    "q4_k": (0, 2),
    "q5_k": (0, 2),
    "q6_k": (208,),
    "iq1_s": (0,),
    "iq1_m": (),
    "iq2_xxs": (0,),
    "iq2_xs": (0,),
    "iq2_s": (0,),
    "iq3_xxs": (0,),
    "iq3_s": (0,),
    "iq4_nl": (0,),
    "iq4_xs": (0,),
    "tq1_0": (52,),
    "tq2_0": (64,),
    "mxfp4": (),
}


def random_f16_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    """n finite f16 values of both signs, magnitudes 2^-14 .. 2^-2, as little-endian bytes uint8 [n, 2]."""
    v = rng.uniform(0.5, 1.0, n) * np.exp2(rng.integers(-13, -1, n)) * rng.choice([-1.0, 1.0], n)
    return v.astype("<f2").view(np.uint8).reshape(n, 2)


def random_ggml_blocks(fmt: str, rows: int, in_features: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [rows, row_bytes] of random valid `fmt` blocks. MXFP4 scales are 2^-10 .. 2^9, except that the first
    two blocks get the subnormal scales 2^-128 and 2^-127 (e = 0, 1)."""
    row_bytes = ggml_row_bytes(fmt, in_features)
    type_size = GGML_BLOCKS[fmt][1]
    n = rows * row_bytes // type_size
    b = rng.integers(0, 256, size=(n, type_size), dtype=np.uint8)
    for at in F16_FIELDS[fmt]:
        b[:, at : at + 2] = random_f16_bytes(rng, n)
    if fmt == "iq1_m":  # d's four nibbles, lowest first, are the top nibbles of the u16 scales at bytes 48..55
        d = random_f16_bytes(rng, n).view("<u2")[:, 0].astype(np.int64)
        for k in range(4):
            hi = 49 + 2 * k
            b[:, hi] = (b[:, hi] & 0x0F) | (((d >> (4 * k)) & 0xF) << 4).astype(np.uint8)
    if fmt == "mxfp4":
        b[:, 0] = rng.integers(118, 138, n)
        b[: min(n, 2), 0] = [0, 1][: min(n, 2)]
    return b.reshape(rows, row_bytes)
