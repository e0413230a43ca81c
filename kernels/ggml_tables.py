"""The lookup tables of the ggml IQ and FP4 types: format constants, taken from the installed gguf package.

llama.cpp defines them in ggml-common.h (iq1s_grid, iq2xxs_grid, ..., ksigns_iq2xs, kvalues_iq4nl,
kvalues_mxfp4); gguf-py's quant classes carry the same tables (the grids as hex strings they decode themselves), and
that is where these come from: thousands of constants are not retyped here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class GgmlTables:
    """Read-only NumPy tables: grids [entries, 4 or 8] float32 (integer values), signs, value tables."""

    iq1s_grid: np.ndarray  # [2048, 8] values -1, 0, 1 (IQ1_S and IQ1_M)
    iq2xxs_grid: np.ndarray  # [256, 8] values 8, 25, 43
    iq2xs_grid: np.ndarray  # [512, 8]
    iq2s_grid: np.ndarray  # [1024, 8]
    iq3xxs_grid: np.ndarray  # [256, 4] values 4 .. 62
    iq3s_grid: np.ndarray  # [512, 4] values 1, 3, .., 15
    ksigns: np.ndarray  # [128] uint8: 7 sign bits and, in bit 7, their parity (the 8th sign)
    iq4nl_values: np.ndarray  # [16] float32, -127 .. 113 (IQ4_NL and IQ4_XS)
    mxfp4_values: np.ndarray  # [16] float32, e2m1 values doubled: 0, 1, 2, 3, 4, 6, 8, 12, then negated


@functools.cache
def gguf_tables() -> GgmlTables:
    """The tables as gguf.quants builds them (each IQ class's init_grid() decodes its grid_hex into .grid)."""
    from gguf import quants  # imported here: only the IQ / FP4 types need it

    def grid(cls: type) -> np.ndarray:
        cls.init_grid()  # type: ignore[attr-defined]
        g = np.asarray(cls.grid, dtype=np.float32)  # type: ignore[attr-defined]
        return _frozen(g.reshape(g.shape[-2], g.shape[-1]))

    return GgmlTables(
        iq1s_grid=grid(quants.IQ1_S),
        iq2xxs_grid=grid(quants.IQ2_XXS),
        iq2xs_grid=grid(quants.IQ2_XS),
        iq2s_grid=grid(quants.IQ2_S),
        iq3xxs_grid=grid(quants.IQ3_XXS),
        iq3s_grid=grid(quants.IQ3_S),
        ksigns=_frozen(np.frombuffer(quants.IQ2_XXS.ksigns, dtype=np.uint8)),
        iq4nl_values=_frozen(np.array(quants.IQ4_NL.kvalues, dtype=np.float32)),
        mxfp4_values=_frozen(np.array(quants.MXFP4.kvalues, dtype=np.float32)),
    )


@functools.lru_cache(maxsize=8)
def torch_tables(device: torch.device) -> dict[str, torch.Tensor]:
    """gguf_tables() as tensors on `device`, made once per device. Sign tables come as +-1 float32 factors:
    'ksigns' [128, 8] (bit j of ksigns[i] set: weight j negated)."""
    t = gguf_tables()
    bits = (t.ksigns[:, None] >> np.arange(8, dtype=np.uint8)) & 1  # [128, 8]
    arrays = {
        "iq1s_grid": t.iq1s_grid,
        "iq2xxs_grid": t.iq2xxs_grid,
        "iq2xs_grid": t.iq2xs_grid,
        "iq2s_grid": t.iq2s_grid,
        "iq3xxs_grid": t.iq3xxs_grid,
        "iq3s_grid": t.iq3s_grid,
        "ksigns": (1 - 2 * bits.astype(np.float32)),
        "iq4nl_values": t.iq4nl_values,
        "mxfp4_values": t.mxfp4_values,
    }
    return {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in arrays.items()}


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a)  # an own copy, then read-only: the cached tables cannot be changed by a caller
    a.flags.writeable = False
    return a
