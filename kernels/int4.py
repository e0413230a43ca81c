"""INT4 pack-quantized weights as compressed-tensors stores them (Kimi K2-Thinking / K2.5 routed experts).

A Linear [out, in] is three tensors: `weight_packed` int32 [out, in/8] (column c in word c // 8 at bits
4*(c % 8)..4*(c % 8)+3, least significant nibble first), `weight_scale` [out, in/group], `weight_shape` [2].
A nibble n encodes q = n - 8 (offset binary) and W[r, c] = q[r, c] * scale[r, c // group].

NumPy functions are the reference definition; the torch ones are what the runtime calls.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

QMIN, QMAX = -8, 7
# compressed-tensors' symmetric rule: scale = absmax / ((QMAX - QMIN) / 2)
SCALE_DIVISOR = (QMAX - QMIN) / 2  # 7.5


def _check_packed(packed_shape: tuple[int, ...], in_features: int) -> None:
    if len(packed_shape) != 2:
        raise ValueError(f"weight_packed must be 2-D [out, in/8], got shape {tuple(packed_shape)}")
    if in_features % 8 or packed_shape[1] != in_features // 8:
        raise ValueError(
            f"weight_packed shape {tuple(packed_shape)} does not hold {in_features} input features "
            f"(expected [out, {in_features // 8}] with in_features a multiple of 8)"
        )


def _check_scale(scale_shape: tuple[int, ...], out_features: int, in_features: int, group: int) -> None:
    if in_features % group:
        raise ValueError(f"in_features {in_features} is not a multiple of group_size {group}")
    want = (out_features, in_features // group)
    if tuple(scale_shape) != want:
        raise ValueError(f"weight_scale shape {tuple(scale_shape)}; expected {want} for group_size {group}")


# ---- NumPy reference ----------------------------------------------------------------------------------------
def pack_int4_ref(q: np.ndarray) -> np.ndarray:
    """int8 q in [-8, 7], [out, in] -> int32 [out, in/8]."""
    if q.dtype != np.int8 or q.ndim != 2 or q.shape[1] % 8:
        raise ValueError(f"expected int8 [out, in] with in a multiple of 8, got {q.dtype} {q.shape}")
    if q.size and (q.min() < QMIN or q.max() > QMAX):
        raise ValueError(f"values outside [{QMIN}, {QMAX}]: min {q.min()}, max {q.max()}")
    n = (q.astype(np.int64) + 8).reshape(q.shape[0], -1, 8)  # [out, in/8, 8] nibbles 0..15
    shifts = np.arange(8, dtype=np.int64) * 4
    words = (n << shifts).sum(axis=-1)  # [out, in/8], 0 .. 2^32 - 1
    return words.astype(np.uint32).view(np.int32)


def unpack_int4_ref(packed: np.ndarray, in_features: int) -> np.ndarray:
    """int32 [out, in/8] -> int8 q [out, in] in [-8, 7]."""
    if packed.dtype != np.int32:
        raise ValueError(f"weight_packed must be int32, got {packed.dtype}")
    _check_packed(packed.shape, in_features)
    words = packed.view(np.uint32).astype(np.int64)[..., None]  # [out, in/8, 1]
    shifts = np.arange(8, dtype=np.int64) * 4
    n = (words >> shifts) & 0xF  # [out, in/8, 8]
    return (n - 8).astype(np.int8).reshape(packed.shape[0], in_features)


def dequantize_int4_ref(packed: np.ndarray, scale: np.ndarray, in_features: int, group: int = 32) -> np.ndarray:
    """W [out, in] float32 = q * scale[:, c // group]; `scale` given as float32 (bf16 widens exactly)."""
    q = unpack_int4_ref(packed, in_features)
    _check_scale(scale.shape, packed.shape[0], in_features, group)
    return q.astype(np.float32) * np.repeat(scale.astype(np.float32), group, axis=1)


def quantize_int4_ref(w: np.ndarray, scale: np.ndarray, group: int = 32) -> np.ndarray:
    """q = clamp(round_half_even(w / scale), -8, 7) as int8 [out, in], for given per-group scales."""
    s = np.repeat(scale.astype(np.float32), group, axis=1)
    return np.clip(np.rint(w.astype(np.float32) / s), QMIN, QMAX).astype(np.int8)


# ---- torch (the runtime's path) -------------------------------------------------------------------------------
def unpack_int4(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """int32 [out, in/8] -> int8 q [out, in]; byte b of a row holds column 2b (low nibble) and 2b+1 (high)."""
    if packed.dtype != torch.int32:
        raise ValueError(f"weight_packed must be torch.int32, got {packed.dtype}")
    _check_packed(tuple(packed.shape), in_features)
    if sys.byteorder != "little":
        raise NotImplementedError("unpack_int4 reads nibbles bytewise and needs a little-endian host")
    b = packed.contiguous().view(torch.uint8)  # [out, in/2] (little-endian hosts)
    lo = (b & 0xF).to(torch.int8) - 8
    hi = (b >> 4).to(torch.int8) - 8
    return torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], in_features)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 q [out, in] in [-8, 7] -> int32 [out, in/8]."""
    if q.dtype != torch.int8 or q.dim() != 2 or q.shape[1] % 8:
        raise ValueError(f"expected torch.int8 [out, in] with in a multiple of 8, got {q.dtype} {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < QMIN or int(q.max()) > QMAX):
        raise ValueError(f"values outside [{QMIN}, {QMAX}]: min {int(q.min())}, max {int(q.max())}")
    n = (q.to(torch.int16) + 8).to(torch.uint8).reshape(q.shape[0], -1, 2)  # [out, in/2, 2]
    b = n[..., 0] | (n[..., 1] << 4)  # [out, in/2]
    return b.contiguous().view(torch.int32)


def dequantize_int4(
    packed: torch.Tensor, scale: torch.Tensor, in_features: int, group: int = 32, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """W [out, in] in `dtype`; the product is formed in float32, so bf16 scales are applied exactly."""
    q = unpack_int4(packed, in_features)
    _check_scale(tuple(scale.shape), packed.shape[0], in_features, group)
    w = q.to(torch.float32).view(packed.shape[0], -1, group) * scale.to(torch.float32)[..., None]
    return w.reshape(packed.shape[0], in_features).to(dtype)


def quantize_int4(w: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric group quantization (compressed-tensors' rule): returns (weight_packed, weight_scale bf16).

    The scale is the library's (absmax / 7.5, stored bf16). The division w / scale is done in float32; the library
    divides in the weight's dtype, so for bf16 weights about 1% of values land one step apart (ours is the more
    accurate rounding). For float32 weights the two agree bit for bit (tests/test_formats.py)."""
    if w.dim() != 2 or w.shape[1] % group:
        raise ValueError(f"expected [out, in] with in a multiple of {group}, got {tuple(w.shape)}")
    g = w.to(torch.float32).view(w.shape[0], -1, group)  # [out, in/group, group]
    scale = (g.abs().amax(dim=-1) / SCALE_DIVISOR).to(torch.bfloat16)  # [out, in/group]
    s = scale.to(torch.float32).clamp_min(torch.finfo(torch.float32).tiny)[..., None]
    q = torch.round(g / s).clamp(QMIN, QMAX).to(torch.int8).view_as(w)
    return pack_int4(q), scale
