"""Encoding float weights as ggml Q8_0 blocks, for `--cpu-weights int8`: a checkpoint's bf16 Linears become the
bytes a GGUF Q8_0 tensor would hold, so the native ggml kernel multiplies them (1.06 bytes a weight instead of 2).
Bit-exact with ggml's quantize_row_q8_0 (as gguf.quants.quantize reproduces it): d = amax / 127 per 32 weights,
q = round-half-away(w / d) (w times the float32 reciprocal), d stored as f16."""

from __future__ import annotations

import torch

ROWS_PER_CHUNK = 1024  # rows encoded at a time: a K2.5 Linear's float32 copy never exists whole


def quantize_q8_0(w: torch.Tensor) -> torch.Tensor:
    """[out, in] float (any float dtype, in a multiple of 32) -> uint8 [out, in / 32 * 34] Q8_0 rows."""
    if w.ndim != 2 or not w.is_floating_point() or w.shape[1] % 32:
        raise ValueError(f"Q8_0 encodes float [out, in] with in a multiple of 32; got {w.dtype} {list(w.shape)}")
    out_f, in_f = w.shape
    nb = in_f // 32
    dst = torch.empty(out_f, nb, 34, dtype=torch.uint8)
    for r0 in range(0, out_f, ROWS_PER_CHUNK):
        blocks = w[r0 : r0 + ROWS_PER_CHUNK].float().reshape(-1, nb, 32)  # [rows, nb, 32]
        d = blocks.abs().amax(dim=-1, keepdim=True) / 127  # float32, as ggml computes it
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        x = blocks * inv
        a = x.abs()
        q = torch.sign(x) * (a.floor() + (2 * (a - a.floor())).floor())  # roundf: halves away from zero
        dst[r0 : r0 + ROWS_PER_CHUNK, :, :2] = d.to(torch.float16).view(torch.uint8).reshape(-1, nb, 2)
        dst[r0 : r0 + ROWS_PER_CHUNK, :, 2:] = q.to(torch.int8).view(torch.uint8)
    return dst.reshape(out_f, nb * 34)
