"""The expert FFN down(silu(gate x) * up x): one expert, and grouped over the experts a batch of tokens is routed to.

NumPy functions are the definition (float64 inside); the torch ones are the runtime path. Weights come dense here
([out, in] in any float dtype, e.g. from kernels.dequant.dequantize); the fused INT4 paths live in cpu_int4.py and
triton_int4.py and are checked against these.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import numpy as np
import torch
import torch.nn.functional as F

Expert = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # gate [I, D], up [I, D], down [D, I]


# ---- NumPy reference ----------------------------------------------------------------------------------------
def bf16_to_float_ref(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: the top half of a float32."""
    if bits.dtype != np.uint16:
        raise ValueError(f"expected uint16 bit patterns, got {bits.dtype}")
    return (bits.astype(np.uint32) << 16).view(np.float32)


def expert_ffn_ref(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    """x [T, D] -> [T, D] float32; silu(g) = g / (1 + e^-g)."""
    x64 = x.astype(np.float64)
    g = x64 @ gate.astype(np.float64).T  # [T, I]
    u = x64 @ up.astype(np.float64).T
    return ((g / (1.0 + np.exp(-g)) * u) @ down.astype(np.float64).T).astype(np.float32)


def grouped_ffn_ref(
    x: np.ndarray, ids: np.ndarray, weights: np.ndarray, experts: Mapping[int, tuple[np.ndarray, ...]]
) -> np.ndarray:
    """sum_k weights[t, k] * expert_{ids[t, k]}(x[t]), token by token: [T, D] float32."""
    out = np.zeros((x.shape[0], x.shape[1]), dtype=np.float64)
    for t in range(x.shape[0]):
        for e, w in zip(ids[t], weights[t], strict=True):
            out[t] += float(w) * expert_ffn_ref(x[t : t + 1], *experts[int(e)])[0]
    return out.astype(np.float32)


# ---- torch --------------------------------------------------------------------------------------------------
def _check_expert(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [tokens, hidden], got shape {tuple(x.shape)}")
    d = x.shape[1]
    if gate.dim() != 2 or gate.shape[1] != d or up.shape != gate.shape:
        raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} must both be [inter, {d}]")
    if tuple(down.shape) != (d, gate.shape[0]):
        raise ValueError(f"down is {tuple(down.shape)}; expected [{d}, {gate.shape[0]}] (hidden, inter)")
    if not (x.is_floating_point() and gate.is_floating_point() and up.is_floating_point() and down.is_floating_point()):
        raise ValueError("x and the expert weights must be floating point (dequantize first)")


def expert_ffn(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """x [T, D] -> [T, D] in x's dtype, computed in x's dtype (weights are cast to it)."""
    _check_expert(x, gate, up, down)
    dt = x.dtype
    return F.linear(F.silu(F.linear(x, gate.to(dt))) * F.linear(x, up.to(dt)), down.to(dt))


def grouped_ffn(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    experts: Mapping[int, Expert] | Callable[[int], Expert],
    out: torch.Tensor | None = None,
    only: Collection[int] | None = None,
) -> torch.Tensor:
    """sum_k weights[t, k] * expert_{ids[t, k]}(x[t]) as float32 [T, D]: tokens gathered expert by expert, one
    host sync for the set of experts. `experts` maps an id to its dense (gate, up, down) or fetches it; with
    `only`, experts outside it are skipped (they run elsewhere)."""
    if ids.shape != weights.shape or ids.dim() != 2 or ids.shape[0] != x.shape[0]:
        raise ValueError(f"ids {tuple(ids.shape)} and weights {tuple(weights.shape)} must both be [{x.shape[0]}, k]")
    if ids.dtype != torch.int64 or weights.dtype != torch.float32:
        raise ValueError(f"ids must be int64 and weights float32, got {ids.dtype} and {weights.dtype}")
    if out is None:
        out = torch.empty(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    elif tuple(out.shape) != (x.shape[0], x.shape[1]) or out.dtype != torch.float32:
        raise ValueError(f"out must be float32 {tuple(x.shape)}, got {out.dtype} {tuple(out.shape)}")
    out.zero_()
    fetch = experts if callable(experts) else experts.__getitem__
    for expert in torch.unique(ids).tolist():
        if only is not None and expert not in only:
            continue
        tok, slot = torch.nonzero(ids == expert, as_tuple=True)  # tokens routed to `expert`, and which of their k
        y = expert_ffn(x[tok], *fetch(expert))  # [n, D]
        out.index_add_(0, tok, y.float() * weights[tok, slot, None])
    return out


SMALL_PAIRS = 64  # up to this many (token, k) pairs, sorted_pairs works on Python lists


def sorted_pairs(
    ids: torch.Tensor, weights: torch.Tensor, n_tok: int, present: Collection[int]
) -> tuple[list[tuple[int, int, int]], torch.Tensor, torch.Tensor]:
    """The (token, k) pairs routed to the experts in `present`, sorted by expert, for the fused CPU kernels:
    runs [(expert, begin, end)] into tokens [P] int64 (each pair's token) and wts [P] float32 (its weight). One host
    sync for the set of experts; pairs of absent experts (they run elsewhere) are left out."""
    for name, t, dtype in (("ids", ids, torch.int64), ("weights", weights, torch.float32)):
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.ndim != 2 or not t.is_cpu:
            got = f"{t.dtype} {list(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a {dtype} CPU tensor [{n_tok}, k], got {got}")
    if ids.shape[0] != n_tok:
        raise ValueError(f"ids: expected shape [{n_tok}, *], got {list(ids.shape)}")
    if tuple(weights.shape) != tuple(ids.shape):
        raise ValueError(f"weights: expected shape {list(ids.shape)}, got {list(weights.shape)}")
    if ids.numel() <= SMALL_PAIRS:  # a decode step: plain Python on k ids is ~20 torch ops cheaper
        rows = ids.tolist()
        if any(len(set(r)) != len(r) for r in rows):
            raise ValueError("ids lists an expert twice for one token; top-k routing picks k distinct experts")
        k = ids.shape[1]
        pairs = sorted((e, t * k + j) for t, r in enumerate(rows) for j, e in enumerate(r) if e in present)
        runs_small: list[tuple[int, int, int]] = []
        for at, (e, _) in enumerate(pairs):
            if runs_small and runs_small[-1][0] == e:
                runs_small[-1] = (e, runs_small[-1][1], at + 1)
            else:
                runs_small.append((e, at, at + 1))
        flat_w = weights.reshape(-1).tolist()
        tokens_small = torch.tensor([i // k for _, i in pairs], dtype=torch.int64)
        return runs_small, tokens_small, torch.tensor([flat_w[i] for _, i in pairs], dtype=torch.float32)
    if ids.shape[1] > 1 and bool((ids.sort(dim=1).values.diff(dim=1) == 0).any()):
        raise ValueError("ids lists an expert twice for one token; top-k routing picks k distinct experts")
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    uniq, counts = torch.unique_consecutive(flat[order], return_counts=True)
    keep, runs, begin, at = [], [], 0, 0
    for e, c in zip(uniq.tolist(), counts.tolist(), strict=True):
        if e in present:
            keep.append(order[begin : begin + c])
            runs.append((e, at, at + c))
            at += c
        begin += c
    picked = torch.cat(keep) if keep else order[:0]
    tokens = picked.div(ids.shape[1], rounding_mode="floor")  # [P] token of each kept pair
    return runs, tokens, weights.reshape(-1)[picked].contiguous()


def check_out_not_x(out: torch.Tensor | None, x: torch.Tensor) -> None:
    """The fused grouped kernels zero `out` before they read `x`: the two must not share memory."""
    if out is not None and out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        raise ValueError("out shares memory with x; the output is zeroed before x is read: pass another buffer")


def run_bounds(runs: list[tuple[int, int, int]]) -> torch.Tensor:
    """[2, E] int64: each run's begin and end into the sorted pairs (the fused kernels' begin / end arrays)."""
    return torch.tensor([[b for _, b, _ in runs], [end for _, _, end in runs]], dtype=torch.int64)


def sum_over_runs(
    y: torch.Tensor,
    x: torch.Tensor,
    runs: list[tuple[int, int, int]],
    tokens: torch.Tensor,
    wts: torch.Tensor,
    expert: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """y [T, D] = sum over the runs of wts * expert(e, x[tokens]) scattered back to the tokens (the path used when a
    fused kernel is not built): `expert(e, xs)` maps [n, D] float32 to [n, D] float32."""
    y.zero_()
    for e, b, end in runs:
        h = expert(e, x.index_select(0, tokens[b:end]))  # [n, D]
        y.index_add_(0, tokens[b:end], h.mul_(wts[b:end, None]))
    return y
