"""Dequantization of the ggml types of GGUF files: a uint8 tensor [rows, row_bytes] of whole blocks per row ->
[rows, in_features]. The per-type code is in ggml_legacy (32-weight blocks), ggml_kquants (K-quants, ternary) and
ggml_iquants (i-quants); the NumPy functions there are the definition, checked bit for bit against
gguf.quants.dequantize, and the torch ones, the runtime's path, against them (tests/test_ggml_types.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kernels import ggml_iquants, ggml_kquants, ggml_legacy
from kernels.formats import GGML_BLOCKS, ggml_row_bytes

# tag -> blocks [n, type_size] uint8 -> float32 [n, block_size]
REFERENCES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    **ggml_legacy.REFERENCES,
    **ggml_kquants.REFERENCES,
    **ggml_iquants.REFERENCES,
}
# tag -> (blocks [n, type_size] uint8, dst [n, block_size] float32) -> None
KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], None]] = {
    **ggml_legacy.KERNELS,
    **ggml_kquants.KERNELS,
    **ggml_iquants.KERNELS,
}


def _check(fmt: str, shape: tuple[int, ...], in_features: int) -> None:
    row_bytes = ggml_row_bytes(fmt, in_features)  # raises for unknown tags and partial blocks
    if len(shape) != 2 or shape[1] != row_bytes:
        raise ValueError(
            f"{fmt} data has shape {shape}; rows of {in_features} weights take {row_bytes} bytes each "
            f"({in_features // GGML_BLOCKS[fmt][0]} blocks of {GGML_BLOCKS[fmt][1]}): expected [rows, {row_bytes}]"
        )


# ---- NumPy reference ----------------------------------------------------------------------------------------
def dequantize_ggml_ref(data: np.ndarray, fmt: str, in_features: int) -> np.ndarray:
    """uint8 [rows, row_bytes] -> float32 [rows, in_features]."""
    if data.dtype != np.uint8:
        raise ValueError(f"{fmt} data must be uint8 bytes, got {data.dtype} (view the raw bytes as uint8)")
    _check(fmt, data.shape, in_features)
    type_size = GGML_BLOCKS[fmt][1]
    w = REFERENCES[fmt](np.ascontiguousarray(data).reshape(-1, type_size))  # [rows * blocks, block_size]
    return w.reshape(data.shape[0], in_features)


# ---- torch (the runtime's path) -------------------------------------------------------------------------------
def dequantize_ggml(
    data: torch.Tensor,
    fmt: str,
    in_features: int,
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 [rows, row_bytes] -> [rows, in_features] in `dtype` on data's device, computed in float32 (so a bf16
    result is the float32 one rounded once). `out`, when given, is written and returned: a contiguous
    [rows, in_features] tensor of `dtype` on the same device, reusable across calls."""
    if data.dtype != torch.uint8:
        raise ValueError(f"{fmt} data must be torch.uint8 bytes, got {data.dtype} (view the raw bytes as uint8)")
    _check(fmt, tuple(data.shape), in_features)
    rows = data.shape[0]
    if out is not None:
        want = (rows, in_features)
        if tuple(out.shape) != want or out.dtype != dtype or out.device != data.device or not out.is_contiguous():
            raise ValueError(
                f"out must be a contiguous {dtype} tensor of shape {want} on {data.device}; got {out.dtype} "
                f"{tuple(out.shape)} on {out.device}{'' if out.is_contiguous() else ', not contiguous'}"
            )
    block_size, type_size = GGML_BLOCKS[fmt]
    if out is not None and dtype == torch.float32:
        w = out
    else:
        w = torch.empty(rows, in_features, dtype=torch.float32, device=data.device)
    KERNELS[fmt](data.reshape(-1, type_size), w.view(-1, block_size))
    if w is out or dtype == torch.float32:
        return w
    return w.to(dtype) if out is None else out.copy_(w)
