"""Dequantization dispatched by a stored weight's format tag (see kernels.formats)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from kernels.formats import FORMATS, GGML_BLOCKS
from kernels.fp8 import dequantize_fp8
from kernels.ggml import dequantize_ggml
from kernels.int4 import dequantize_int4


@dataclass(frozen=True, slots=True)
class StoredWeight:
    """One Linear's weight as stored: `fmt` (a FORMATS tag), its logical [out, in] shape and its tensors.

    parts: float formats {"weight"}; int4 {"packed" [out, in/8] int32, "scale" [out, in/group] bf16};
    fp8 {"weight" [out, in] e4m3, "scale_inv" [ceil(out/b0), ceil(in/b1)] f32};
    ggml types ("q4_0", "q4_k", "iq1_s", ... see formats.GGML_BLOCKS) {"data" [out, row_bytes] uint8, the GGUF
    tensor's bytes: each row `in / block_size` blocks of `type_size` bytes}.
    params: int4 (group,); fp8 (b0, b1); float formats and ggml types ().
    """

    fmt: str
    shape: tuple[int, int]
    parts: Mapping[str, torch.Tensor] = field(repr=False)
    params: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"weight format {self.fmt!r} is unknown; known: {', '.join(FORMATS)}")

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.parts.values())

    @property
    def device(self) -> torch.device:
        return next(iter(self.parts.values())).device

    def rows(self, index: torch.Tensor) -> StoredWeight:
        """Rows `index` ([n] int64) of the weight, still in its format (a gather of n stored rows). FP8 blocks span 128
        rows, so they cannot be gathered by row."""
        if self.fmt == "fp8":
            raise ValueError("an fp8 weight's scales cover blocks of rows; dequantize it whole")
        parts = {k: t[index] for k, t in self.parts.items()}
        return StoredWeight(self.fmt, (int(index.shape[0]), self.shape[1]), parts, self.params)

    def to(self, device: torch.device | str) -> StoredWeight:
        """The same weight with its tensors on `device` (still in their stored format)."""
        return StoredWeight(self.fmt, self.shape, {k: t.to(device) for k, t in self.parts.items()}, self.params)


def _float(w: StoredWeight, dtype: torch.dtype) -> torch.Tensor:
    return w.parts["weight"].to(dtype)  # a weight already in `dtype` comes back as is: zero-copy


def _int4(w: StoredWeight, dtype: torch.dtype) -> torch.Tensor:
    (group,) = w.params
    return dequantize_int4(w.parts["packed"], w.parts["scale"], w.shape[1], group, dtype)


def _fp8(w: StoredWeight, dtype: torch.dtype) -> torch.Tensor:
    b0, b1 = w.params
    if w.parts["weight"].is_cuda:  # one Triton pass on the GPU; it matches dequantize_fp8 bit for bit
        from kernels.triton_fp8 import dequantize_fp8_triton  # triton is imported only where CUDA is

        return dequantize_fp8_triton(w.parts["weight"], w.parts["scale_inv"], (b0, b1), dtype)
    return dequantize_fp8(w.parts["weight"], w.parts["scale_inv"], (b0, b1), dtype)


def _ggml(w: StoredWeight, dtype: torch.dtype) -> torch.Tensor:
    data = w.parts["data"]
    if data.dim() != 2 or data.shape[0] != w.shape[0]:
        raise ValueError(f"{w.fmt} data has shape {tuple(data.shape)}; a {w.shape} weight stores {w.shape[0]} rows")
    return dequantize_ggml(data, w.fmt, w.shape[1], dtype)


DEQUANTIZE: dict[str, Callable[[StoredWeight, torch.dtype], torch.Tensor]] = {
    "bf16": _float,
    "f16": _float,
    "f32": _float,
    "int4": _int4,
    "fp8": _fp8,
    **dict.fromkeys(GGML_BLOCKS, _ggml),
}


def dequantize(w: StoredWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[out, in] in `dtype` on the weight's device, by its format tag."""
    out = DEQUANTIZE[w.fmt](w, dtype)
    if tuple(out.shape) != w.shape:
        raise ValueError(f"a {w.fmt} weight dequantized to {tuple(out.shape)}; its stored shape is {w.shape}")
    return out
