"""ggml i-quants: super-blocks of 256 weights coded as indices into fixed grids (IQ1_*, IQ2_*, IQ3_*) or into a
16-value table (IQ4_XS). The grids and sign tables come from kernels.ggml_tables.

Layouts (bytes, little-endian). A grid entry gives 8 (IQ1, IQ2) or 4 (IQ3) consecutive weights.
- IQ1_S [50]:   d f16, qs[32], qh u16[8]; per 32 weights qh: index_l = qs | (bits 3l.. of qh & 7) << 8,
  dl = d * (2 * (qh >> 12 & 7) + 1), delta = -1/8 if qh bit 15 else 1/8; w = dl * (grid + delta)
- IQ1_M [56]:   qs[32], qh[16], sc u16[4]; d f16 = the top nibbles of sc[0..3] (lowest first); 3-bit scales
  at bits 3m of sc[k] per 16 weights, dl = d * (2 * s + 1); entry k: qh nibble k (byte k // 2, low first) gives
  index bits 8..10 and, in bit 3, the delta's sign; w = dl * (grid + delta)
- IQ2_XXS [66]: d f16, 8 x (4 index bytes, u32 aux); aux: 4 x 7-bit ksigns indices, scale s in bits 28..31;
  db = d * (0.5 + s) * 0.25; w = db * grid * sign
- IQ2_XS [74]:  d f16, qs u16[32] (9-bit index, 7-bit ksigns index), scales[8] (nibbles per 16 weights)
- IQ2_S [82]:   d f16, qs[32], signs[32] (a bit per weight), qh[8] (2-bit fields: index bits 8..9), scales[8]
- IQ3_XXS [98]: d f16, qs[64] (index bytes), u32[8] (as IQ2_XXS's aux); db = d * (0.5 + s) * 0.5
- IQ3_S [110]:  d f16, qs[64], qh[8] (index bit 8, a bit per entry), signs[32], scales[4] (nibbles per 32);
  db = d * (1 + 2 * s)
- IQ4_XS [136]: d f16, scales_h u16 (2-bit fields), scales_l[4] (nibbles), qs[128] (nibble planes per 32);
  w = (d * (scale - 32)) * kvalues_iq4nl[nibble]

Each product and sum is one float32 operation in the order written, as gguf.quants and ggml-quants.c do it.
NumPy functions (`*_ref`, [n, type_size] uint8 -> [n, 256] float32) are the reference; the torch ones write the
same values into `dst` [n, 256] float32.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kernels.ggml_bits import f16, f16_ref, fields, fields_ref, planes, planes_ref, sign_factors, uint, uint_ref
from kernels.ggml_tables import gguf_tables, torch_tables

F32 = np.float32
DELTA = 0.125  # IQ1's grid offset


# ---- NumPy reference ----------------------------------------------------------------------------------------
def ksign_factors_ref(index: np.ndarray) -> np.ndarray:
    """7-bit ksigns indices [...] -> float32 +1 / -1 factors [..., 8]."""
    bits = fields_ref(gguf_tables().ksigns[index][..., None], 1)
    return np.where(bits == 1, F32(-1), F32(1))


def iq1_s_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    qh = uint_ref(b[:, 34:50], 2)  # [n, 8]
    index = b[:, 2:34].reshape(n, 8, 4) | ((qh[..., None] >> np.array([0, 3, 6, 9])) & 7) << 8
    grid = gguf_tables().iq1s_grid[index].reshape(n, 8, 32)
    dl = f16_ref(b, 0) * (2 * ((qh >> 12) & 7) + 1).astype(F32)  # [n, 8]
    delta = np.where(qh & 0x8000, F32(-DELTA), F32(DELTA))
    return (dl[..., None] * (grid + delta[..., None])).reshape(n, 256)


def iq1_m_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    sc = uint_ref(b[:, 48:56], 2)  # [n, 4]
    d_bits = sum(((sc[:, k] >> 12) << (4 * k) for k in range(4)), np.zeros(n, dtype=np.int64))
    d = d_bits.astype("<u2").view("<f2").astype(F32)[:, None]  # [n, 1]
    s = ((sc[..., None] >> np.array([0, 3, 6, 9])) & 7).reshape(n, 16)
    dl = d * (2 * s + 1).astype(F32)  # [n, 16]
    nib = fields_ref(b[:, 32:48], 4).astype(np.int64)  # [n, 32]
    grid = gguf_tables().iq1s_grid[b[:, :32] | (nib & 7) << 8]  # [n, 32, 8]
    delta = np.where(nib & 8, F32(-DELTA), F32(DELTA))
    return (dl.reshape(n, 16, 1, 1) * (grid.reshape(n, 16, 2, 8) + delta.reshape(n, 16, 2, 1))).reshape(n, 256)


def iq2_xxs_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    g = b[:, 2:].reshape(n, 8, 8)
    aux = uint_ref(g[..., 4:], 4)[..., 0]  # [n, 8]
    db = f16_ref(b, 0) * (0.5 + (aux >> 28).astype(F32)) * F32(0.25)
    grid = gguf_tables().iq2xxs_grid[g[..., :4]]  # [n, 8, 4, 8]
    signs = ksign_factors_ref((aux[..., None] >> np.array([0, 7, 14, 21])) & 127)
    return (db[..., None, None] * grid * signs).reshape(n, 256)


def iq2_xs_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    qs = uint_ref(b[:, 2:66], 2)  # [n, 32]
    db = f16_ref(b, 0) * (0.5 + fields_ref(b[:, 66:74], 4).astype(F32)) * F32(0.25)  # [n, 16]
    grid = gguf_tables().iq2xs_grid[qs & 511].reshape(n, 16, 2, 8)
    signs = ksign_factors_ref(qs >> 9).reshape(n, 16, 2, 8)
    return (db[..., None, None] * grid * signs).reshape(n, 256)


def iq2_s_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    index = b[:, 2:34].astype(np.int64) | fields_ref(b[:, 66:74], 2).astype(np.int64) << 8  # [n, 32]
    db = f16_ref(b, 0) * (0.5 + fields_ref(b[:, 74:82], 4).astype(F32)) * F32(0.25)  # [n, 16]
    grid = gguf_tables().iq2s_grid[index].reshape(n, 16, 2, 8)
    signs = np.where(fields_ref(b[:, 34:66], 1) == 1, F32(-1), F32(1)).reshape(n, 16, 2, 8)
    return (db[..., None, None] * grid * signs).reshape(n, 256)


def iq3_xxs_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    aux = uint_ref(b[:, 66:98], 4)  # [n, 8]
    db = f16_ref(b, 0) * (0.5 + (aux >> 28).astype(F32)) * F32(0.5)
    grid = gguf_tables().iq3xxs_grid[b[:, 2:66]].reshape(n, 8, 4, 8)
    signs = ksign_factors_ref((aux[..., None] >> np.array([0, 7, 14, 21])) & 127)  # [n, 8, 4, 8]
    return (db[..., None, None] * grid * signs).reshape(n, 256)


def iq3_s_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    index = b[:, 2:66].astype(np.int64) | fields_ref(b[:, 66:74], 1).astype(np.int64) << 8  # [n, 64]
    db = f16_ref(b, 0) * (1 + 2 * fields_ref(b[:, 106:110], 4).astype(F32))  # [n, 8]
    grid = gguf_tables().iq3s_grid[index].reshape(n, 8, 32)
    signs = np.where(fields_ref(b[:, 74:106], 1) == 1, F32(-1), F32(1)).reshape(n, 8, 32)
    return (db[..., None] * grid * signs).reshape(n, 256)


def iq4_xs_ref(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    scale = (fields_ref(b[:, 4:8], 4) | fields_ref(b[:, 2:4], 2) << 4).astype(F32) - 32  # [n, 8]
    values = gguf_tables().iq4nl_values[planes_ref(b[:, 8:].reshape(n, 8, 16), 4)]  # [n, 8, 32]
    return ((f16_ref(b, 0) * scale)[..., None] * values).reshape(n, 256)


REFERENCES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "iq1_s": iq1_s_ref,
    "iq1_m": iq1_m_ref,
    "iq2_xxs": iq2_xxs_ref,
    "iq2_xs": iq2_xs_ref,
    "iq2_s": iq2_s_ref,
    "iq3_xxs": iq3_xxs_ref,
    "iq3_s": iq3_s_ref,
    "iq4_xs": iq4_xs_ref,
}


# ---- torch (the runtime's path) -------------------------------------------------------------------------------
# Grid entries are gathered straight into dst and scaled there in place: the same float32 operations, one buffer.
def _shifts(b: torch.Tensor, *s: int) -> torch.Tensor:
    return torch.tensor(s, dtype=torch.int64, device=b.device)


def _gather(table: torch.Tensor, index: torch.Tensor, dst: torch.Tensor) -> None:
    """table [entries, k] rows at `index` (any shape, in weight order) into dst, k consecutive weights each."""
    torch.index_select(table, 0, index.flatten(), out=dst.view(-1, table.shape[1]))


def iq1_s(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    qh = uint(b[:, 34:50], 2)  # [n, 8]
    index = b[:, 2:34].reshape(n, 8, 4).long() | ((qh[..., None] >> _shifts(b, 0, 3, 6, 9)) & 7) << 8
    _gather(torch_tables(b.device)["iq1s_grid"], index, dst)
    dl = f16(b, 0) * (2 * ((qh >> 12) & 7) + 1).to(torch.float32)  # [n, 8]
    delta = DELTA * sign_factors(qh >> 15)
    dst.view(n, 8, 32).add_(delta[..., None]).mul_(dl[..., None])


def iq1_m(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    nib = fields(b[:, 32:48], 4).long()  # [n, 32]
    _gather(torch_tables(b.device)["iq1s_grid"], b[:, :32].long() | (nib & 7) << 8, dst)
    sc = uint(b[:, 48:56], 2)  # [n, 4]
    d_bits = ((sc >> 12) << _shifts(b, 0, 4, 8, 12)).sum(dim=-1, keepdim=True)  # [n, 1], disjoint nibbles
    d_bits = d_bits - ((d_bits >> 15) << 16)  # the u16 as int16 (two's complement), for the f16 view
    d = d_bits.to(torch.int16).view(torch.float16).to(torch.float32)
    s = ((sc[..., None] >> _shifts(b, 0, 3, 6, 9)) & 7).reshape(n, 16)
    dl = d * (2 * s + 1).to(torch.float32)  # [n, 16]
    delta = DELTA * sign_factors(nib >> 3)
    dst.view(n, 16, 2, 8).add_(delta.view(n, 16, 2, 1)).mul_(dl.view(n, 16, 1, 1))


def iq2_xxs(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    g = b[:, 2:].reshape(n, 8, 8)
    t = torch_tables(b.device)
    _gather(t["iq2xxs_grid"], g[..., :4].long(), dst)
    aux = uint(g[..., 4:], 4)[..., 0]  # [n, 8]
    db = f16(b, 0) * (0.5 + (aux >> 28).to(torch.float32)) * 0.25
    signs = t["ksigns"][(aux[..., None] >> _shifts(b, 0, 7, 14, 21)) & 127]  # [n, 8, 4, 8]
    dst.view(n, 8, 4, 8).mul_(db[..., None, None]).mul_(signs)


def iq2_xs(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    qs = uint(b[:, 2:66], 2)  # [n, 32]
    t = torch_tables(b.device)
    _gather(t["iq2xs_grid"], qs & 511, dst)
    db = f16(b, 0) * (0.5 + fields(b[:, 66:74], 4).to(torch.float32)) * 0.25  # [n, 16]
    dst.view(n, 16, 2, 8).mul_(db[..., None, None]).mul_(t["ksigns"][qs >> 9].view(n, 16, 2, 8))


def iq2_s(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    _gather(torch_tables(b.device)["iq2s_grid"], b[:, 2:34].long() | fields(b[:, 66:74], 2).long() << 8, dst)
    db = f16(b, 0) * (0.5 + fields(b[:, 74:82], 4).to(torch.float32)) * 0.25  # [n, 16]
    dst.view(n, 16, 16).mul_(db[..., None]).mul_(sign_factors(fields(b[:, 34:66], 1)).view(n, 16, 16))


def iq3_xxs(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    t = torch_tables(b.device)
    _gather(t["iq3xxs_grid"], b[:, 2:66].long(), dst)
    aux = uint(b[:, 66:98], 4)  # [n, 8]
    db = f16(b, 0) * (0.5 + (aux >> 28).to(torch.float32)) * 0.5
    signs = t["ksigns"][(aux[..., None] >> _shifts(b, 0, 7, 14, 21)) & 127]  # [n, 8, 4, 8]
    dst.view(n, 8, 4, 8).mul_(db[..., None, None]).mul_(signs)


def iq3_s(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    _gather(torch_tables(b.device)["iq3s_grid"], b[:, 2:66].long() | fields(b[:, 66:74], 1).long() << 8, dst)
    db = f16(b, 0) * (1 + 2 * fields(b[:, 106:110], 4).to(torch.float32))  # [n, 8]
    dst.view(n, 8, 32).mul_(db[..., None]).mul_(sign_factors(fields(b[:, 74:106], 1)).view(n, 8, 32))


def iq4_xs(b: torch.Tensor, dst: torch.Tensor) -> None:
    n = b.shape[0]
    _gather(torch_tables(b.device)["iq4nl_values"][:, None], planes(b[:, 8:].reshape(n, 8, 16), 4).long(), dst)
    scale = (fields(b[:, 4:8], 4) | fields(b[:, 2:4], 2) << 4).to(torch.float32) - 32  # [n, 8]
    dst.view(n, 8, 32).mul_((f16(b, 0) * scale)[..., None])


KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], None]] = {
    "iq1_s": iq1_s,
    "iq1_m": iq1_m,
    "iq2_xxs": iq2_xxs,
    "iq2_xs": iq2_xs,
    "iq2_s": iq2_s,
    "iq3_xxs": iq3_xxs,
    "iq3_s": iq3_s,
    "iq4_xs": iq4_xs,
}
