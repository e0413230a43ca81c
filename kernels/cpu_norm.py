"""RMSNorm of bf16 rows on the CPU in one native call (csrc/norm_cpu.cpp), and its NumPy definition.

A decode step normalises ~45 single rows; torch spends ~100 us on each (float copy, fused norm, bf16 copy, the
weight's product) on a 2-core machine, the native call a few. Same arithmetic as offload/model/norm.py: statistics
in float32, the normalised row rounded to bf16, times the bf16 weight, rounded once more. Without a compiler or AVX2
`rms_norm_bf16_cpu` returns None and the caller keeps torch's path.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import numpy as np
import torch

from kernels.native import AVX2_FLAGS, NativeBuild, build, cpu_flags

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "norm_cpu.cpp"


def rms_norm_ref(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """float64 definition: x / sqrt(mean(x^2) + eps) * w over the last axis."""
    x64 = x.astype(np.float64)
    return x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps) * w.astype(np.float64)


@functools.cache
def _native() -> ctypes.CDLL | None:
    try:
        nb: NativeBuild = build(SOURCE, "kimi_norm_cpu", AVX2_FLAGS)
        lib = ctypes.CDLL(str(nb.path))
    except (RuntimeError, OSError) as e:
        log.warning("native RMSNorm unavailable, using torch's: %s", e)
        return None
    p = ctypes.c_void_p
    lib.kimi_rms_norm_bf16.argtypes = [p, ctypes.c_int64, ctypes.c_int64, p, ctypes.c_float, p]
    lib.kimi_rms_norm_bf16.restype = ctypes.c_int
    return lib


@functools.cache
def available() -> bool:
    """Whether this CPU runs the native RMSNorm (AVX2, FMA) and it built here (else the reason was logged once)."""
    flags = cpu_flags()
    return "avx2" in flags and "fma" in flags and _native() is not None


def rms_norm_bf16_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """x [..., n] bf16 contiguous on the CPU, weight [n] bf16 -> the normalised rows [..., n] bf16; None when the
    inputs are not that (or the native call is unavailable): the caller then uses torch."""
    if (
        x.dtype != torch.bfloat16
        or weight.dtype != torch.bfloat16
        or not x.is_cpu
        or not weight.is_cpu
        or not x.is_contiguous()
        or not weight.is_contiguous()
        or weight.ndim != 1
        or x.ndim < 1
        or x.shape[-1] != weight.shape[0]
        or x.shape[-1] == 0
        or not available()
    ):
        return None
    lib = _native()
    assert lib is not None
    y = torch.empty_like(x)
    n = x.shape[-1]
    rc = lib.kimi_rms_norm_bf16(x.data_ptr(), x.numel() // n, n, weight.data_ptr(), eps, y.data_ptr())
    if rc != 0:
        raise ValueError(f"kimi_rms_norm_bf16 refused rows of {n} (rc {rc})")
    return y
