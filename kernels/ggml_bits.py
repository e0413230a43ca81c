"""Byte and bit unpacking shared by the ggml types, as NumPy (`*_ref`, the reference) and torch functions.

ggml blocks are little-endian byte records. Two orders of sub-byte fields occur:
- planes: field f of every byte of a run comes before field f + 1 (Q4_0's low nibbles hold weights 0..15 and its
  high nibbles 16..31; Q2_K's 2-bit fields, Q3_K's and Q5_K's high-bit masks);
- fields: the fields of one byte in order, byte after byte, as a little-endian bit stream (sign bits, IQ scales).
"""

from __future__ import annotations

import sys

import numpy as np
import torch


# ---- NumPy reference ----------------------------------------------------------------------------------------
def f16_ref(b: np.ndarray, at: int) -> np.ndarray:
    """The little-endian f16 at byte `at` of each block [n, type_size] -> float32 [n, 1]."""
    return np.ascontiguousarray(b[:, at : at + 2]).view("<f2").astype(np.float32)


def uint_ref(b: np.ndarray, width: int) -> np.ndarray:
    """Little-endian unsigned integers of `width` bytes: uint8 [..., k * width] -> int64 [..., k]."""
    x = b.reshape(*b.shape[:-1], -1, width).astype(np.int64)
    return sum((x[..., i] << (8 * i) for i in range(1, width)), x[..., 0])


def planes_ref(x: np.ndarray, width: int) -> np.ndarray:
    """uint8 [..., k] -> [..., k * 8 / width]: the lowest `width` bits of all k bytes, then the next, ..."""
    mask = (1 << width) - 1
    return np.concatenate([(x >> s) & mask for s in range(0, 8, width)], axis=-1)


def fields_ref(x: np.ndarray, width: int) -> np.ndarray:
    """uint8 [..., k] -> [..., k * 8 / width]: byte 0's `width`-bit fields lowest first, then byte 1's, ..."""
    mask = (1 << width) - 1
    return np.stack([(x >> s) & mask for s in range(0, 8, width)], axis=-1).reshape(*x.shape[:-1], -1)


# ---- torch (the runtime's path) -------------------------------------------------------------------------------
def f16(b: torch.Tensor, at: int) -> torch.Tensor:
    """The f16 at byte `at` of each block [n, type_size] -> float32 [n, 1] (little-endian hosts)."""
    if sys.byteorder != "little":
        raise NotImplementedError("the torch ggml path reads f16 fields bytewise and needs a little-endian host")
    return b[:, at : at + 2].contiguous().view(torch.float16).to(torch.float32)


def uint(b: torch.Tensor, width: int) -> torch.Tensor:
    """Little-endian unsigned integers of `width` bytes: uint8 [..., k * width] -> int64 [..., k]."""
    x = b.reshape(*b.shape[:-1], -1, width).to(torch.int64)
    out = x[..., 0].clone()
    for i in range(1, width):
        out |= x[..., i] << (8 * i)
    return out


def planes(x: torch.Tensor, width: int) -> torch.Tensor:
    """uint8 [..., k] -> [..., k * 8 / width]: the lowest `width` bits of all k bytes, then the next, ..."""
    mask = (1 << width) - 1
    return torch.cat([(x >> s) & mask for s in range(0, 8, width)], dim=-1)


def planes_into(dst: torch.Tensor, x: torch.Tensor, width: int) -> None:
    """planes(x, width), converted to dst's dtype, into dst [..., 8 / width, k] (one field a slice, no concat)."""
    mask = (1 << width) - 1
    for f, s in enumerate(range(0, 8, width)):
        dst[..., f, :].copy_((x >> s) & mask)


def fields(x: torch.Tensor, width: int) -> torch.Tensor:
    """uint8 [..., k] -> [..., k * 8 / width]: byte 0's `width`-bit fields lowest first, then byte 1's, ..."""
    mask = (1 << width) - 1
    return torch.stack([(x >> s) & mask for s in range(0, 8, width)], dim=-1).flatten(-2)


def sign_factors(bits: torch.Tensor) -> torch.Tensor:
    """Sign bits (0 or 1, any integer dtype) -> float32 factors +1 / -1."""
    return 1 - 2 * bits.to(torch.float32)
