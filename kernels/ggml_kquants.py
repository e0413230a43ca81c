"""ggml K-quants (Q2_K .. Q6_K) and the ternary types TQ1_0, TQ2_0: super-blocks of 256 weights.

Layouts (bytes, little-endian). "2-bit planes per 128" means weight 128h + 32s + l comes from bits 2s, 2s + 1 of
byte 32h + l of the field (see kernels.ggml_bits); nibble and bit planes alike.
- Q2_K [84]:  scales[16] (per 16 weights: low nibble scale, high nibble min), qs[64] (2-bit planes per 128),
  d f16, dmin f16; w = (d * scale) * q - (dmin * min)
- Q3_K [110]: hmask[32] (bit planes: weight 32s + l is bit s of byte l), qs[64] (2-bit planes per 128),
  scales[12] (16 6-bit scales per 16 weights: low 4 bits in nibble planes of bytes 0..7, high 2 bits in 2-bit planes
  of bytes 8..11), d f16; q = low 2 bits - (4 where the hmask bit is 0), w = (d * (scale - 32)) * q
- Q4_K [144]: d f16, dmin f16, scales[12] (8 6-bit scales and mins per 32 weights, see k4_scales_ref), qs[128]
  (nibble planes per 64); w = (d * scale) * q - (dmin * min)
- Q5_K [176]: d f16, dmin f16, scales[12] as Q4_K, qh[32] (bit planes), qs[128] as Q4_K; q = nibble | hbit << 4
- Q6_K [210]: ql[128] (nibble planes per 128, over runs of 64 bytes), qh[64] (2-bit planes per 128), scales
  int8[16] (per 16 weights), d f16; q = (nibble | 2 bits << 4) - 32, w = (d * scale) * q
- TQ1_0 [54]: qs[48], qh[4], d f16: 5 (qh: 4) base-3 digits per byte, read as ((byte * 3^k mod 256) * 3) >> 8;
  digit k of bytes 0..31 are weights 32k.., of bytes 32..47 weights 160 + 16k.., of qh weights 240 + 4k..;
  w = d * (digit - 1)
- TQ2_0 [66]: qs[64] (2-bit planes per 128), d f16; w = d * (q - 1)

Each product and sum is one float32 operation in the order written, as gguf.quants and ggml-quants.c do it.
NumPy functions (`*_ref`, [n, type_size] uint8 -> [n, 256] float32) are the reference; the torch ones write the
same values into `dst` [n, 256] float32.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kernels.ggml_bits import f16, f16_ref, planes, planes_into, planes_ref

F32 = np.float32


# ---- NumPy reference ----------------------------------------------------------------------------------------
def k4_scales_ref(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K's 12 scale bytes -> 8 6-bit scales and 8 6-bit mins (int [n, 8] each).

    Sub-blocks 0..3: scale = byte j & 63, min = byte 4 + j & 63. Sub-blocks 4..7: the low 4 bits from byte 8 + j
    (scale: low nibble, min: high nibble), the high 2 bits from the top bits of byte j (scale) or 4 + j (min)."""
    lo, mi, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scale = np.concatenate([lo & 63, (hi & 15) | (lo >> 6) << 4], axis=-1)
    mins = np.concatenate([mi & 63, (hi >> 4) | (mi >> 6) << 4], axis=-1)
    return scale, mins


def q2_k_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    s = b[:, :16]
    q = planes_ref(b[:, 16:80].reshape(n, 2, 32), 2).reshape(n, 16, 16).astype(F32)
    dl = f16_ref(b, 80) * (s & 15).astype(F32)  # [n, 16]
    ml = f16_ref(b, 82) * (s >> 4).astype(F32)
    return (dl[..., None] * q - ml[..., None]).reshape(n, 256)


def q3_k_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    low = planes_ref(b[:, 32:96].reshape(n, 2, 32), 2).reshape(n, 256).astype(np.int16)
    high = planes_ref(b[:, :32], 1).astype(np.int16)  # [n, 256]
    q = (low - 4 * (1 - high)).reshape(n, 16, 16).astype(F32)
    s = b[:, 96:108]
    scale = (planes_ref(s[:, :8], 4) | planes_ref(s[:, 8:], 2) << 4).astype(F32) - 32  # [n, 16]
    return ((f16_ref(b, 108) * scale)[..., None] * q).reshape(n, 256)


def q4_k_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    scale, mins = k4_scales_ref(b[:, 4:16])
    q = planes_ref(b[:, 16:].reshape(n, 4, 32), 4).reshape(n, 8, 32).astype(F32)
    dl = f16_ref(b, 0) * scale.astype(F32)  # [n, 8]
    ml = f16_ref(b, 2) * mins.astype(F32)
    return (dl[..., None] * q - ml[..., None]).reshape(n, 256)


def q5_k_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    scale, mins = k4_scales_ref(b[:, 4:16])
    low = planes_ref(b[:, 48:].reshape(n, 4, 32), 4).reshape(n, 256)
    q = (low | planes_ref(b[:, 16:48], 1) << 4).reshape(n, 8, 32).astype(F32)
    dl = f16_ref(b, 0) * scale.astype(F32)
    ml = f16_ref(b, 2) * mins.astype(F32)
    return (dl[..., None] * q - ml[..., None]).reshape(n, 256)


def q6_k_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    low = planes_ref(b[:, :128].reshape(n, 2, 64), 4)  # [n, 2, 128]
    high = planes_ref(b[:, 128:192].reshape(n, 2, 32), 2)
    q = (low | high << 4).reshape(n, 16, 16).astype(F32) - 32
    dl = f16_ref(b, 208) * b[:, 192:208].view(np.int8).astype(F32)  # [n, 16]
    return (dl[..., None] * q).reshape(n, 256)


def trits_ref(x: np.ndarray, count: int) -> np.ndarray:
    """uint8 [n, k] holding `count` base-3 digits each -> digits 0..2 [n, count * k], digit 0 of all bytes first."""
    x = x.astype(np.int32)
    return np.concatenate([(((x * 3**k) & 255) * 3) >> 8 for k in range(count)], axis=-1)


def tq1_0_ref(b: np.ndarray) -> np.ndarray:
    q = np.concatenate([trits_ref(b[:, :32], 5), trits_ref(b[:, 32:48], 5), trits_ref(b[:, 48:52], 4)], axis=-1)
    return f16_ref(b, 52) * (q.astype(F32) - 1)


def tq2_0_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    q = planes_ref(b[:, :64].reshape(n, 2, 32), 2).reshape(n, 256)
    return f16_ref(b, 64) * (q.astype(F32) - 1)


REFERENCES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "q2_k": q2_k_ref,
    "q3_k": q3_k_ref,
    "q4_k": q4_k_ref,
    "q5_k": q5_k_ref,
    "q6_k": q6_k_ref,
    "tq1_0": tq1_0_ref,
    "tq2_0": tq2_0_ref,
}


# ---- torch (the runtime's path) -------------------------------------------------------------------------------
# Codes go straight into dst and are scaled there in place: the same float32 operations, one buffer.
def k4_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K's 12 scale bytes [n, 12] -> float32 scales and mins [n, 8] (see k4_scales_ref)."""
    lo, mi, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scale = torch.cat([lo & 63, (hi & 15) | (lo >> 6) << 4], dim=-1)
    mins = torch.cat([mi & 63, (hi >> 4) | (mi >> 6) << 4], dim=-1)
    return scale.to(torch.float32), mins.to(torch.float32)


def q2_k(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    planes_into(dst.view(n, 2, 4, 32), b[:, 16:80].reshape(n, 2, 32), 2)
    s = b[:, :16]
    dl = f16(b, 80) * (s & 15).to(torch.float32)  # [n, 16]
    ml = f16(b, 82) * (s >> 4).to(torch.float32)
    dst.view(n, 16, 16).mul_(dl[..., None]).sub_(ml[..., None])


def q3_k(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    low = planes(b[:, 32:96].reshape(n, 2, 32), 2).reshape(n, 256)
    high = planes(b[:, :32], 1)  # [n, 256]
    dst.copy_((low | high << 2).view(torch.int8) - 4)  # low - 4 where the hmask bit is 0
    s = b[:, 96:108]
    scale = (planes(s[:, :8], 4) | planes(s[:, 8:], 2) << 4).to(torch.float32) - 32  # [n, 16]
    dst.view(n, 16, 16).mul_((f16(b, 108) * scale)[..., None])


def q4_k(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    planes_into(dst.view(n, 4, 2, 32), b[:, 16:].reshape(n, 4, 32), 4)
    scale, mins = k4_scales(b[:, 4:16])
    dst.view(n, 8, 32).mul_((f16(b, 0) * scale)[..., None]).sub_((f16(b, 2) * mins)[..., None])


def q5_k(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    low = planes(b[:, 48:].reshape(n, 4, 32), 4).reshape(n, 256)
    dst.copy_(low | planes(b[:, 16:48], 1) << 4)
    scale, mins = k4_scales(b[:, 4:16])
    dst.view(n, 8, 32).mul_((f16(b, 0) * scale)[..., None]).sub_((f16(b, 2) * mins)[..., None])


def q6_k(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    low = planes(b[:, :128].reshape(n, 2, 64), 4)
    high = planes(b[:, 128:192].reshape(n, 2, 32), 2)
    dst.view(n, 2, 128).copy_((low | high << 4).view(torch.int8) - 32)
    dl = f16(b, 208) * b[:, 192:208].view(torch.int8).to(torch.float32)  # [n, 16]
    dst.view(n, 16, 16).mul_(dl[..., None])


def trits(x: torch.Tensor, count: int) -> torch.Tensor:
    """uint8 [n, k] holding `count` base-3 digits each -> digits 0..2 [n, count * k], digit 0 of all bytes first."""
    x = x.to(torch.int32)
    return torch.cat([(((x * 3**k) & 255) * 3) >> 8 for k in range(count)], dim=-1)


def tq1_0(b: torch.Tensor, dst: torch.Tensor) -> None:
    dst.copy_(torch.cat([trits(b[:, :32], 5), trits(b[:, 32:48], 5), trits(b[:, 48:52], 4)], dim=-1))
    dst.sub_(1).mul_(f16(b, 52))


def tq2_0(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    planes_into(dst.view(n, 2, 4, 32), b[:, :64].reshape(n, 2, 32), 2)
    dst.sub_(1).mul_(f16(b, 64))


KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], None]] = {
    "q2_k": q2_k,
    "q3_k": q3_k,
    "q4_k": q4_k,
    "q5_k": q5_k,
    "q6_k": q6_k,
    "tq1_0": tq1_0,
    "tq2_0": tq2_0,
}
