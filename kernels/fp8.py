"""FP8 block weights (DeepSeek-V3, Kimi K2-Instruct): float8_e4m3fn values and one float32 scale per block.

W[r, c] = float(w[r, c]) * weight_scale_inv[r // B0, c // B1]  (a multiply, despite the name).
"""

from __future__ import annotations

import numpy as np
import torch

E4M3_MAX = 448.0


def e4m3_to_float_ref(bits: np.ndarray) -> np.ndarray:
    """Decode float8_e4m3fn bit patterns (uint8) to float32: bias 7, 3 mantissa bits, no infinities, S.1111.111 NaN."""
    if bits.dtype != np.uint8:
        raise ValueError(f"expected uint8 bit patterns, got {bits.dtype}")
    b = bits.astype(np.int32)
    sign = np.where(b & 0x80, -1.0, 1.0).astype(np.float32)
    exp = (b >> 3) & 0xF
    man = (b & 0x7).astype(np.float32)
    normal = (1.0 + man / 8.0) * np.exp2(exp.astype(np.float32) - 7.0)
    subnormal = (man / 8.0) * np.float32(2.0**-6)
    out = sign * np.where(exp == 0, subnormal, normal).astype(np.float32)
    return np.where((b & 0x7F) == 0x7F, np.float32(np.nan), out).astype(np.float32)


def _check(w_shape: tuple[int, ...], s_shape: tuple[int, ...], block: tuple[int, int]) -> None:
    if len(w_shape) != 2:
        raise ValueError(f"FP8 weight must be 2-D [out, in], got {w_shape}")
    want = (-(-w_shape[0] // block[0]), -(-w_shape[1] // block[1]))
    if tuple(s_shape) != want:
        raise ValueError(
            f"weight_scale_inv shape {tuple(s_shape)}; expected {want} for weight {w_shape} and block {block}"
        )


def dequantize_fp8_ref(bits: np.ndarray, scale_inv: np.ndarray, block: tuple[int, int] = (128, 128)) -> np.ndarray:
    """Reference: uint8 e4m3 bits [out, in] and float32 scales -> float32 [out, in]."""
    _check(bits.shape, scale_inv.shape, block)
    s = np.repeat(np.repeat(scale_inv.astype(np.float32), block[0], axis=0), block[1], axis=1)
    return e4m3_to_float_ref(bits) * s[: bits.shape[0], : bits.shape[1]]


def dequantize_fp8(
    w: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128), dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """torch float8_e4m3fn [out, in] and float32 block scales -> W [out, in] in `dtype` (product in float32)."""
    if w.dtype != torch.float8_e4m3fn:
        raise ValueError(f"FP8 weight must be torch.float8_e4m3fn, got {w.dtype}")
    _check(tuple(w.shape), tuple(scale_inv.shape), block)
    s = scale_inv.to(torch.float32).repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    return (w.to(torch.float32) * s[: w.shape[0], : w.shape[1]]).to(dtype)


def quantize_fp8(w: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """Block quantization with scale = absmax / 448: returns (float8_e4m3fn weight, float32 weight_scale_inv)."""
    if w.dim() != 2:
        raise ValueError(f"expected [out, in], got {tuple(w.shape)}")
    out_f, in_f = w.shape
    nb0, nb1 = -(-out_f // block[0]), -(-in_f // block[1])
    padded = torch.zeros(nb0 * block[0], nb1 * block[1], dtype=torch.float32)
    padded[:out_f, :in_f] = w.to(torch.float32)
    blocks = padded.view(nb0, block[0], nb1, block[1])
    scale = (blocks.abs().amax(dim=(1, 3)) / E4M3_MAX).clamp_min(torch.finfo(torch.float32).tiny)  # [nb0, nb1]
    q = (blocks / scale[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).view_as(padded)
    return q[:out_f, :in_f].to(torch.float8_e4m3fn).contiguous(), scale
