"""Triton: FP8 block dequantization (DeepSeek-V3 / K2-Instruct weights) on the GPU.

W[r, c] = float(w[r, c]) * scale_inv[r // B0, c // B1] (a multiply, despite the name), formed in fp32 and rounded
once to the output dtype, so it matches kernels.fp8.dequantize_fp8 bit for bit. Grid: (cdiv(out, BLOCK_M),
cdiv(in, BLOCK_N)); each program gathers the block scales of its tile (cache hits: one or a few per tile).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.fp8 import _check, dequantize_fp8
from kernels.triton_int4 import NEEDS_CUDA, interpreter_ready, time_call

_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _fp8_dequant_kernel(
    w_ptr,
    s_ptr,
    y_ptr,
    OUT,
    IN,
    stride_wm,
    stride_wn,
    stride_sm,
    stride_sn,
    stride_ym,
    stride_yn,
    B0: tl.constexpr,
    B1: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < OUT)[:, None] & (offs_n < IN)[None, :]
    w = tl.load(w_ptr + offs_m[:, None] * stride_wm + offs_n[None, :] * stride_wn, mask=mask, other=0.0)
    s_ptrs = s_ptr + (offs_m // B0)[:, None] * stride_sm + (offs_n // B1)[None, :] * stride_sn
    y = w.to(tl.float32) * tl.load(s_ptrs, mask=mask, other=0.0)
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)


def dequantize_fp8_triton(
    w: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int] = (128, 128),
    dtype: torch.dtype = torch.bfloat16,
    out: torch.Tensor | None = None,
    tile: tuple[int, int] = (64, 128),
) -> torch.Tensor:
    """float8_e4m3fn w [out, in] and float32 scale_inv [ceil(out/B0), ceil(in/B1)] -> W [out, in] in `dtype`."""
    if w.dtype != torch.float8_e4m3fn:
        raise ValueError(f"FP8 weight must be torch.float8_e4m3fn, got {w.dtype}")
    if scale_inv.dtype != torch.float32:
        raise ValueError(f"weight_scale_inv must be torch.float32, got {scale_inv.dtype}")
    _check(tuple(w.shape), tuple(scale_inv.shape), block)
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"dtype must be one of {_OUT_DTYPES}, got {dtype}")
    if scale_inv.device != w.device:
        raise ValueError(f"w is on {w.device} but scale_inv on {scale_inv.device}; put both on one device")
    if w.device.type != "cuda" and not interpreter_ready(_fp8_dequant_kernel):
        raise ValueError(f"tensors are on {w.device}; {NEEDS_CUDA}")
    if out is None:
        out = torch.empty(w.shape, dtype=dtype, device=w.device)
    elif out.dtype != dtype or out.shape != w.shape or out.device != w.device:
        want, got = f"{dtype} {tuple(w.shape)} on {w.device}", f"{out.dtype} {tuple(out.shape)} on {out.device}"
        raise ValueError(f"out must be {want}, got {got}")
    if w.numel() == 0:
        return out
    grid = (triton.cdiv(w.shape[0], tile[0]), triton.cdiv(w.shape[1], tile[1]))
    _fp8_dequant_kernel[grid](
        w,
        scale_inv,
        out,
        w.shape[0],
        w.shape[1],
        w.stride(0),
        w.stride(1),
        scale_inv.stride(0),
        scale_inv.stride(1),
        out.stride(0),
        out.stride(1),
        B0=block[0],
        B1=block[1],
        BLOCK_M=tile[0],
        BLOCK_N=tile[1],
    )
    return out


def bench_fp8_dequant(
    out_f: int, in_f: int, iters: int = 20, device: torch.device | str = "cuda", dtype: torch.dtype = torch.bfloat16
) -> dict[str, float | int | str]:
    """Time dequantize_fp8_triton on a random [out_f, in_f] weight; GB/s counts fp8 read + output written.
    max_abs_diff: against kernels.fp8.dequantize_fp8 (0 expected: both round the fp32 product once)."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(0)
    w = (torch.randn(out_f, in_f, generator=gen, device=device) * 100).to(torch.float8_e4m3fn)
    scale_inv = torch.rand(-(-out_f // 128), -(-in_f // 128), generator=gen, device=device) + 0.5
    y = torch.empty(out_f, in_f, dtype=dtype, device=device)
    ref = dequantize_fp8(w, scale_inv, dtype=dtype)
    diff = (dequantize_fp8_triton(w, scale_inv, dtype=dtype, out=y).float() - ref.float()).abs()
    sec = time_call(lambda: dequantize_fp8_triton(w, scale_inv, dtype=dtype, out=y), iters, device)
    moved = w.numel() * (1 + y.element_size()) + scale_inv.numel() * 4
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "out": out_f,
        "in": in_f,
        "dtype": dtype_name,
        "us": sec * 1e6,
        "gbs": moved / sec / 1e9,
        "max_abs_diff": diff.max().item(),
    }
