"""A stored Linear (plain, INT4 pack-quantized or FP8 block) as one dense weight matrix."""

from __future__ import annotations

import torch

from kernels.fp8 import dequantize_fp8
from kernels.int4 import dequantize_int4
from offload.quant import QuantConfig


def dense_weight(stored: dict[str, torch.Tensor], quant: QuantConfig, dtype: torch.dtype) -> torch.Tensor:
    """[out, in] weight in `dtype` from the tensors `Checkpoint.linear` returns; the format follows the stored
    suffixes. A plain weight already in `dtype` is returned as is (a zero-copy view of the mapping)."""
    if "weight_packed" in stored:
        in_f = int(stored["weight_shape"][1])
        return dequantize_int4(stored["weight_packed"], stored["weight_scale"], in_f, quant.group_size, dtype)
    if "weight_scale_inv" in stored:
        return dequantize_fp8(stored["weight"], stored["weight_scale_inv"], quant.block, dtype)
    return stored["weight"].to(dtype)
