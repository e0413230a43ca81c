"""ggml types with blocks of 32 weights: the legacy quants Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, and IQ4_NL and MXFP4.

Layouts (bytes, little-endian; q is a block's j-th weight code, j = 0..31):
- Q4_0 [18]:  d f16, qs[16]; q = nibble (low nibbles of qs are j = 0..15, high ones 16..31) - 8; w = d * q
- Q4_1 [20]:  d f16, m f16, qs[16]; q = nibble; w = d * q + m
- Q5_0 [22]:  d f16, qh u32, qs[16]; q = nibble | bit j of qh << 4, minus 16; w = d * q
- Q5_1 [24]:  d f16, m f16, qh u32, qs[16]; q = nibble | bit j of qh << 4; w = d * q + m
- Q8_0 [34]:  d f16, qs int8[32]; w = qs * d
- IQ4_NL [18]: d f16, qs[16] as Q4_0; w = d * kvalues_iq4nl[nibble]
- MXFP4 [17]: e u8, qs[16] as Q4_0; w = 2^(e - 128) * kvalues_mxfp4[nibble] (the table is e2m1 doubled, so
  the scale is halved: 2^(e - 127) / 2)

Each product and sum is one float32 operation in the order written, as gguf.quants and ggml-quants.c do it.
NumPy functions (`*_ref`, [n, type_size] uint8 -> [n, 32] float32) are the reference; the torch ones write the
same values into `dst` [n, 32] float32.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kernels.ggml_bits import f16, f16_ref, fields, fields_ref, planes, planes_into, planes_ref
from kernels.ggml_tables import gguf_tables, torch_tables

F32 = np.float32


# ---- NumPy reference ----------------------------------------------------------------------------------------
def q4_0_ref(b: np.ndarray) -> np.ndarray:
    q = planes_ref(b[:, 2:], 4).astype(F32) - 8  # [n, 32]
    return f16_ref(b, 0) * q


def q4_1_ref(b: np.ndarray) -> np.ndarray:
    q = planes_ref(b[:, 4:], 4).astype(F32)
    return f16_ref(b, 0) * q + f16_ref(b, 2)


def q5_0_ref(b: np.ndarray) -> np.ndarray:
    q = (planes_ref(b[:, 6:], 4) | fields_ref(b[:, 2:6], 1) << 4).astype(F32) - 16
    return f16_ref(b, 0) * q


def q5_1_ref(b: np.ndarray) -> np.ndarray:
    q = (planes_ref(b[:, 8:], 4) | fields_ref(b[:, 4:8], 1) << 4).astype(F32)
    return f16_ref(b, 0) * q + f16_ref(b, 2)


def q8_0_ref(b: np.ndarray) -> np.ndarray:
    return b[:, 2:].view(np.int8).astype(F32) * f16_ref(b, 0)


def iq4_nl_ref(b: np.ndarray) -> np.ndarray:
    return f16_ref(b, 0) * gguf_tables().iq4nl_values[planes_ref(b[:, 2:], 4)]


def mxfp4_ref(b: np.ndarray) -> np.ndarray:
    d = np.ldexp(F32(1), b[:, :1].astype(np.int32) - 128)  # [n, 1]; e = 0 and 1 give float32 subnormals
    return d * gguf_tables().mxfp4_values[planes_ref(b[:, 1:], 4)]


REFERENCES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "q4_0": q4_0_ref,
    "q4_1": q4_1_ref,
    "q5_0": q5_0_ref,
    "q5_1": q5_1_ref,
    "q8_0": q8_0_ref,
    "iq4_nl": iq4_nl_ref,
    "mxfp4": mxfp4_ref,
}


# ---- torch (the runtime's path) -------------------------------------------------------------------------------
# Codes go straight into dst and are scaled there in place: the same float32 operations, one buffer.
def q4_0(b: torch.Tensor, dst: torch.Tensor) -> None:
    planes_into(dst.view(-1, 2, 16), b[:, 2:], 4)
    dst.sub_(8).mul_(f16(b, 0))


def q4_1(b: torch.Tensor, dst: torch.Tensor) -> None:
    planes_into(dst.view(-1, 2, 16), b[:, 4:], 4)
    dst.mul_(f16(b, 0)).add_(f16(b, 2))


def q5_0(b: torch.Tensor, dst: torch.Tensor) -> None:
    dst.copy_(planes(b[:, 6:], 4) | fields(b[:, 2:6], 1) << 4)
    dst.sub_(16).mul_(f16(b, 0))


def q5_1(b: torch.Tensor, dst: torch.Tensor) -> None:
    dst.copy_(planes(b[:, 8:], 4) | fields(b[:, 4:8], 1) << 4)
    dst.mul_(f16(b, 0)).add_(f16(b, 2))


def q8_0(b: torch.Tensor, dst: torch.Tensor) -> None:
    dst.copy_(b[:, 2:].view(torch.int8))
    dst.mul_(f16(b, 0))


def iq4_nl(b: torch.Tensor, dst: torch.Tensor) -> None:
    values = torch_tables(b.device)["iq4nl_values"]
    torch.index_select(values, 0, planes(b[:, 2:], 4).flatten().long(), out=dst.view(-1))
    dst.mul_(f16(b, 0))


def mxfp4(b: torch.Tensor, dst: torch.Tensor) -> None:
    values = torch_tables(b.device)["mxfp4_values"]
    torch.index_select(values, 0, planes(b[:, 1:], 4).flatten().long(), out=dst.view(-1))
    e = b[:, :1].to(torch.int32)  # [n, 1]
    # 2^(e - 128) as float32 bits: a subnormal for e = 0, 1 (2^-128, 2^-127), else the exponent field e - 1
    bits = torch.where(e < 2, torch.full_like(e, 0x200000) << e, (e - 1) << 23)
    dst.mul_(bits.view(torch.float32))


KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], None]] = {
    "q4_0": q4_0,
    "q4_1": q4_1,
    "q5_0": q5_0,
    "q5_1": q5_1,
    "q8_0": q8_0,
    "iq4_nl": iq4_nl,
    "mxfp4": mxfp4,
}
