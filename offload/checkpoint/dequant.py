"""A stored Linear (plain, INT4 pack-quantized or FP8 block) as one dense weight matrix."""

from __future__ import annotations

import torch

from kernels.ffn import dequantize_linear
from offload.quant import QuantConfig


def dense_weight(stored: dict[str, torch.Tensor], quant: QuantConfig, dtype: torch.dtype) -> torch.Tensor:
    """[out, in] weight in `dtype` from the tensors `Checkpoint.linear` returns; the format follows the stored
    suffixes. A plain weight already in `dtype` is returned as is (a zero-copy view of the mapping)."""
    return dequantize_linear(stored, quant.group_size, quant.block, dtype)
