"""ggml-quantized Linears and MoE layers on the CPU, on a GGUF file's mapped bytes in place, with int8 activations.

The native kernel (csrc/ggml_cpu.cpp) decodes each weight row into int8 codes with per-16 scales (and minimums),
quantizes activations to int8 per 32 (as ggml's Q8_0) or, for the K- and IQ-types, per 256 (its Q8_K:
`activation_block`) and takes integer dot products: AVX2, or AVX-512 VNNI where
the CPU has it (the build is picked at run time, `kernels.native.best_isa`). One call computes a whole MoE layer's CPU
experts: gate, up, SiLU times up, down and the weighted sum, no Python per expert.

Accuracy: the only difference from the float computation is the activations' rounding. Quantizing a block (32 or
256) with scale s = amax / 127 moves each value by at most s / 2, so an output moves by at most
sum_i |w_i| * s_block(i) / 2 (`activation_error_bound`), and the tests hold the kernel to that bound. The float path
(dequantize, matmul: `kernels.ggml`) stays for `--dtype float32`, where results must match the reference exactly.

Without a compiler or without AVX2/FMA/F16C the functions here fall back to dequantize + matmul after one warning.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kernels.dequant import StoredWeight, dequantize
from kernels.ffn import check_out_not_x, expert_ffn, run_bounds, sorted_pairs, sum_over_runs
from kernels.formats import GGML_BLOCKS
from kernels.ggml import dequantize_ggml_ref
from kernels.ggml_tables import gguf_tables
from kernels.native import AVX2_FLAGS, AVX512_FLAGS, NativeBuild, best_isa, build

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "ggml_cpu.cpp"
FLAGS = {"avx2": AVX2_FLAGS, "avx512vnni": AVX512_FLAGS}
# the types the native kernel reads (every ggml type with blocks of 32 or 256 weights)
NATIVE_TYPES = tuple(GGML_BLOCKS)
GgmlExpert = tuple[StoredWeight, StoredWeight, StoredWeight]  # gate [I, D], up [I, D], down [D, I]


@dataclass(frozen=True, slots=True)
class CheckedExpert:
    """An expert whose three weights were checked once (`check_expert`): a decode step passes the same experts
    layer after layer, and checking 24 tensors per layer costs more than some of the kernel calls."""

    weights: GgmlExpert
    hidden: int  # D
    inter: int  # I
    fmts: tuple[str, str, str]
    ptrs: tuple[int, int, int]  # the data pointers of gate, up, down


# ---- the native library --------------------------------------------------------------------------------------------
class _Native:
    """ctypes bindings of csrc/ggml_cpu.cpp, its tables set."""

    def __init__(self, nb: NativeBuild) -> None:
        self.build = nb
        lib = ctypes.CDLL(str(nb.path))
        p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.kimi_ggml_type_id.argtypes = [ctypes.c_char_p]
        lib.kimi_ggml_type_id.restype = i32
        lib.kimi_ggml_isa.restype = i32
        lib.kimi_ggml_set_tables.argtypes = [p] * 9
        lib.kimi_ggml_set_tables.restype = None
        lib.kimi_ggml_decode.argtypes = [p, i32, i64, i64, p]
        lib.kimi_ggml_decode.restype = i32
        lib.kimi_ggml_linear.argtypes = [p, i64, i64, p, i32, i64, p, i32]
        lib.kimi_ggml_linear.restype = i32
        lib.kimi_ggml_linear_batched.argtypes = [p, i64, i64, i64, p, i32, i64, p, i32]
        lib.kimi_ggml_linear_batched.restype = i32
        lib.kimi_ggml_moe.argtypes = [p, i64, i64, i64, i64, p, p, p, p, p, p, p, i32]
        lib.kimi_ggml_moe.restype = i32
        lib.kimi_mla_decode.argtypes = [p, p, i64, p, i32]  # csrc/mla_cpu.h, bound in kernels/cpu_mla.py
        lib.kimi_mla_decode.restype = i32
        lib.kimi_int4_moe_decode.argtypes = [p, i64, i64, i64, p, p, p, i32]  # csrc/int4_q8.h, kernels/cpu_int4.py
        lib.kimi_int4_moe_decode.restype = i32
        f32 = ctypes.c_float
        lib.kimi_route.argtypes = [p, i32, i64, i64, p, p, i64, i32, i32, i32, i32, f32, p, p, p, i32]  # router_cpu.h
        lib.kimi_route.restype = i32
        lib.kimi_ggml_mlp.argtypes = [p, p, i64, i64, p, i32]  # csrc/layer_cpu.h, bound in kernels/cpu_layer.py
        lib.kimi_ggml_mlp.restype = i32
        lib.kimi_decode_attn.argtypes = [p, p, i64, p, p, p, i32]
        lib.kimi_decode_attn.restype = i32
        lib.kimi_decode_ffn.argtypes = [p, p, p, i64, i64, p, p, i32]
        lib.kimi_decode_ffn.restype = i32
        self.lib = lib
        self.type_ids = {fmt: int(lib.kimi_ggml_type_id(fmt.encode())) for fmt in NATIVE_TYPES}
        missing = [f for f, i in self.type_ids.items() if i < 0]
        if missing:
            raise RuntimeError(f"{nb.path} does not know the types {missing}: rebuild it (delete the file)")
        t = gguf_tables()
        arrays = [
            np.ascontiguousarray(a, dtype=np.int8)
            for a in (t.iq1s_grid, t.iq2xxs_grid, t.iq2xs_grid, t.iq2s_grid, t.iq3xxs_grid, t.iq3s_grid)
        ]
        arrays.append(np.ascontiguousarray(t.ksigns, dtype=np.uint8))
        arrays += [np.ascontiguousarray(t.iq4nl_values, dtype=np.int8), np.ascontiguousarray(t.mxfp4_values, np.int8)]
        lib.kimi_ggml_set_tables(*(a.ctypes.data for a in arrays))  # copied into the library

    def type_id(self, fmt: str) -> int:
        if fmt not in self.type_ids:
            raise ValueError(f"the native ggml kernel does not read {fmt!r}; it reads {', '.join(NATIVE_TYPES)}")
        return self.type_ids[fmt]


@functools.cache
def _native(isa: str | None = None) -> _Native | None:
    """The loaded library for `isa` (None: the best this CPU runs), or None after a logged warning."""
    try:
        chosen = isa or best_isa()
        if chosen is None:
            raise RuntimeError("it needs an x86-64 CPU with AVX2, FMA and F16C")
        nb = build(SOURCE, f"kimi_ggml_cpu_{chosen}", FLAGS[chosen], chosen)
        lib = _Native(nb)
    except (RuntimeError, OSError) as e:
        log.warning("ggml CPU kernel unavailable, using the slower torch path (dequantize + matmul): %s", e)
        return None
    log.info("ggml CPU kernel %s (%s, compiled in %.1f s)", nb.path, chosen, nb.compile_s)
    return lib


def native_build(isa: str | None = None) -> NativeBuild | None:
    """The loaded native kernel's build, or None when the torch fallback is in use (the reason was logged)."""
    lib = _native(isa)
    return None if lib is None else lib.build


def _lib(isa: str | None) -> _Native:
    lib = _native(isa)
    if lib is None:
        raise RuntimeError("the ggml CPU kernel is not available here (see the logged warning)")
    return lib


def _raise_rc(rc: int, what: str) -> None:
    if rc == 1:
        raise MemoryError(f"{what}: the ggml CPU kernel could not allocate its scratch")
    if rc != 0:
        raise RuntimeError(f"{what}: the ggml CPU kernel refused its arguments (rc {rc}); this is a bug")


# ---- checks ---------------------------------------------------------------------------------------------------------
def _check_x(x: object, width: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32 or x.ndim != 2 or x.shape[1] != width or not x.is_cpu or not x.is_contiguous():
        raise ValueError(
            f"x: expected a contiguous float32 CPU tensor [*, {width}], got {x.dtype} {list(x.shape)} on {x.device}"
            f"{'' if x.is_contiguous() else ' (not contiguous)'}"
        )
    return x


def _check_weight(name: str, w: StoredWeight, in_features: int | None = None) -> tuple[int, int]:
    """(out, in) of a ggml weight whose bytes the kernel can read in place."""
    if w.fmt not in GGML_BLOCKS:
        raise ValueError(f"{name}: the ggml kernel reads ggml types; this weight is {w.fmt}")
    out_f, in_f = w.shape
    if in_features is not None and in_f != in_features:
        raise ValueError(f"{name}: expected {in_features} input features, got a {w.fmt} weight of shape {w.shape}")
    block, size = GGML_BLOCKS[w.fmt]
    data = w.parts["data"]
    if in_f % block or in_f % 32:
        raise ValueError(f"{name}: {w.fmt} rows of {in_f} weights are not whole blocks of {block}")
    want = (out_f, in_f // block * size)
    if data.dtype != torch.uint8 or tuple(data.shape) != want or not data.is_cpu:
        raise ValueError(
            f"{name}: {w.fmt} data must be uint8 {list(want)} on the CPU, got {data.dtype} "
            f"{list(data.shape)} on {data.device}"
        )
    if data.stride() != (want[1], 1):
        raise ValueError(f"{name}: {w.fmt} rows must be contiguous, got strides {data.stride()}")
    return out_f, in_f


# ---- NumPy references -----------------------------------------------------------------------------------------------
def ggml_linear_ref(x: np.ndarray, data: np.ndarray, fmt: str, in_features: int) -> np.ndarray:
    """x [T, in] @ W.T in float64 with W the reference dequantization, -> [T, out] float32."""
    w = dequantize_ggml_ref(data, fmt, in_features).astype(np.float64)
    return (x.astype(np.float64) @ w.T).astype(np.float32)


def activation_block(fmt: str) -> int:
    """The block the kernel quantizes activations in before they meet `fmt`: 256 for the K- and IQ-types (ggml's
    Q8_K), 32 for the others (its Q8_0)."""
    return 256 if GGML_BLOCKS[fmt][0] == 256 else 32


def quantize_activations_ref(x: np.ndarray, block: int = 32) -> np.ndarray:
    """The kernel's int8 activations as values: per `block`, d = amax / 127 (float32), q = round-half-even(x * (1 /
    d)), returned as q * d [T, in] float64 (0 where a block is all zero)."""
    t, width = x.shape
    b = x.astype(np.float32).reshape(t, width // block, block)
    d = np.abs(b).max(axis=-1, keepdims=True) / np.float32(127)  # [T, blocks, 1] float32
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d > 0)
    q = np.rint(b * inv)
    return (q.astype(np.float64) * d.astype(np.float64)).reshape(t, width)


def ggml_linear_int8_ref(x: np.ndarray, data: np.ndarray, fmt: str, in_features: int) -> np.ndarray:
    """What the kernel computes, in float64: the int8-rounded activations @ W.T -> [T, out] float64."""
    w = dequantize_ggml_ref(data, fmt, in_features).astype(np.float64)
    return quantize_activations_ref(x, activation_block(fmt)) @ w.T


def ggml_grouped_ffn_int8_ref(
    x: np.ndarray,
    ids: np.ndarray,
    weights: np.ndarray,
    experts: Mapping[int, tuple[np.ndarray, ...]],
    blocks: tuple[int, int, int] = (32, 32, 32),
) -> np.ndarray:
    """What the grouped kernel computes, in float64: per (t, k) with an expert in `experts` (dense float
    (gate, up, down)), weight * down(int8(silu(gate int8(x)) * up int8(x))) -> [T, D] float64, the activations
    rounded per `blocks` (gate's, up's, down's: `activation_block` of their types)."""
    xg, xu = (quantize_activations_ref(x, b) for b in blocks[:2])
    out = np.zeros(x.shape, dtype=np.float64)
    for t in range(x.shape[0]):
        for e, wt in zip(ids[t], weights[t], strict=True):
            if int(e) not in experts:
                continue
            gate, up, down = (m.astype(np.float64) for m in experts[int(e)])
            g, u = xg[t] @ gate.T, xu[t] @ up.T
            with np.errstate(over="ignore"):  # e^-g overflows for g < -709: silu's limit, 0, comes out
                h = (g / (1.0 + np.exp(-g)) * u)[None, :]
            out[t] += float(wt) * (quantize_activations_ref(h, blocks[2])[0] @ down.T)
    return out


def activation_error_bound(x: np.ndarray, w: np.ndarray, block: int = 32) -> np.ndarray:
    """The most int8 activations per `block` can move x @ w.T: [T, out], sum_i |w[o, i]| * (amax of i's block /
    254)."""
    t, width = x.shape
    step = np.abs(x.astype(np.float64)).reshape(t, width // block, block).max(axis=-1) / 254.0  # [T, blocks]
    half = np.repeat(step, block, axis=1)  # [T, in]
    return half @ np.abs(w.astype(np.float64)).T


# ---- one Linear -----------------------------------------------------------------------------------------------------
def ggml_decode_native(w: StoredWeight, isa: str | None = None) -> torch.Tensor:
    """The kernel's own decoding of `w` as float32 [out, in] (scale * q - min per weight): checked against the
    reference dequantization in the tests."""
    out_f, in_f = _check_weight("w", w)
    lib = _lib(isa)
    y = torch.empty(out_f, in_f, dtype=torch.float32)
    rc = lib.lib.kimi_ggml_decode(w.parts["data"].data_ptr(), lib.type_id(w.fmt), out_f, in_f, y.data_ptr())
    _raise_rc(rc, "ggml_decode_native")
    return y


def check_ggml_weight(w: StoredWeight, name: str = "w") -> tuple[int, int]:
    """(out, in) of a weight the kernel reads in place (a ggml type, contiguous uint8 rows on the CPU), else
    ValueError saying what is wrong."""
    return _check_weight(name, w)


def ggml_linear_cpu(
    x: torch.Tensor, w: StoredWeight, out: torch.Tensor | None = None, isa: str | None = None, checked: bool = False
) -> torch.Tensor:
    """x [T, in] float32 @ W.T -> [T, out] float32, W read in place from its ggml bytes; torch's thread count.
    The native kernel (int8 activations) when it is available, else dequantize + matmul. `checked`: the caller
    passed `w` through `check_ggml_weight` already (a Linear called every step checks its weight once)."""
    out_f, in_f = w.shape if checked else _check_weight("w", w)
    xt = _check_x(x, in_f)
    y = torch.empty(xt.shape[0], out_f, dtype=torch.float32) if out is None else out
    if tuple(y.shape) != (xt.shape[0], out_f) or y.dtype != torch.float32 or not y.is_contiguous():
        raise ValueError(f"out: expected a contiguous float32 [{xt.shape[0]}, {out_f}], got {y.dtype} {list(y.shape)}")
    lib = _native(isa)
    if lib is None:
        return torch.matmul(xt, dequantize(w, torch.float32).t(), out=y)
    if xt.shape[0] and out_f:
        rc = lib.lib.kimi_ggml_linear(
            xt.data_ptr(),
            xt.shape[0],
            in_f,
            w.parts["data"].data_ptr(),
            lib.type_id(w.fmt),
            out_f,
            y.data_ptr(),
            torch.get_num_threads(),
        )
        _raise_rc(rc, "ggml_linear_cpu")
    return y


def ggml_linear_batched_cpu(
    x: torch.Tensor, w: StoredWeight, heads: int, out: torch.Tensor | None = None, isa: str | None = None
) -> torch.Tensor:
    """x [H, T, in] float32 @ W_h.T per h -> [H, T, out] float32, with W [H * out, in] the H matrices' rows one
    after another in a ggml type (MLA's absorbed per-head weights). Native kernel, else dequantize + bmm."""
    rows, in_f = _check_weight("w", w)
    if heads < 1 or rows % heads:
        raise ValueError(f"w has {rows} rows: not {heads} matrices of equal height")
    out_f = rows // heads
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[0] != heads:
        raise ValueError(f"x: expected [{heads}, T, {in_f}], got {getattr(x, 'shape', type(x).__name__)}")
    xt = _check_x(x.view(-1, x.shape[-1]) if x.is_contiguous() else x.reshape(-1, x.shape[-1]), in_f)
    n_tok = x.shape[1]
    y = torch.empty(heads, n_tok, out_f, dtype=torch.float32) if out is None else out
    if tuple(y.shape) != (heads, n_tok, out_f) or y.dtype != torch.float32 or not y.is_contiguous():
        raise ValueError(
            f"out: expected a contiguous float32 [{heads}, {n_tok}, {out_f}], got {y.dtype} {list(y.shape)}"
        )
    lib = _native(isa)
    if lib is None:
        dense = dequantize(w, torch.float32).view(heads, out_f, in_f)
        return torch.bmm(xt.view(heads, n_tok, in_f), dense.transpose(1, 2), out=y)
    if n_tok and out_f:
        rc = lib.lib.kimi_ggml_linear_batched(
            xt.data_ptr(), heads, n_tok, in_f, w.parts["data"].data_ptr(), lib.type_id(w.fmt), out_f, y.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        _raise_rc(rc, "ggml_linear_batched_cpu")
    return y


# ---- experts --------------------------------------------------------------------------------------------------------
def check_expert(expert: GgmlExpert, hidden: int, name: str = "expert") -> CheckedExpert:
    """(gate [I, D], up [I, D], down [D, I]) checked for the kernel: ggml types read in place, matching shapes."""
    gate, up, down = expert
    i = _check_weight(f"{name} gate", gate, hidden)[0]
    for part, w, out_f, in_f in (("up", up, i, hidden), ("down", down, hidden, i)):
        if _check_weight(f"{name} {part}", w, in_f)[0] != out_f:
            raise ValueError(f"{name} {part}: expected shape {(out_f, in_f)}, got {w.shape}")
    ptrs = (gate.parts["data"].data_ptr(), up.parts["data"].data_ptr(), down.parts["data"].data_ptr())
    return CheckedExpert(expert, hidden, i, (gate.fmt, up.fmt, down.fmt), ptrs)


def _check_experts(
    x: torch.Tensor, experts: Mapping[int, GgmlExpert | CheckedExpert], present: list[int]
) -> tuple[int, list[CheckedExpert]]:
    """I and the present experts checked, all of one hidden size, inter size and (gate, up, down) types."""
    d = x.shape[1]
    checked = []
    for e in present:
        ex = experts[e]
        c = ex if isinstance(ex, CheckedExpert) else check_expert(ex, d, f"experts[{e}]")
        if c.hidden != d:
            raise ValueError(f"experts[{e}]: hidden size {c.hidden}, x has {d}")
        checked.append(c)
    first = checked[0]
    for e, c in zip(present, checked, strict=True):
        if c.inter != first.inter:
            raise ValueError(
                f"experts[{e}]: expected the inter size {first.inter} of experts[{present[0]}], got {c.inter}"
            )
        if c.fmts != first.fmts:
            raise ValueError(
                f"experts[{e}]: types {list(c.fmts)} differ from experts[{present[0]}]'s "
                f"{list(first.fmts)}; one call takes one layer, whose experts share their types"
            )
    return first.inter, checked


def _decode_ffn(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    experts: Mapping[int, GgmlExpert | CheckedExpert],
    out: torch.Tensor | None,
    isa: str | None,
) -> torch.Tensor | None:
    """ggml_grouped_ffn_cpu for one token with checked experts, its arguments in ctypes arrays built from lists (a
    decode step's MoE layer: some ten torch ops fewer); None where the general path must run (it raises the errors)."""
    lib = _native(isa)
    if lib is None or not (isinstance(ids, torch.Tensor) and isinstance(weights, torch.Tensor)):
        return None
    if ids.dtype != torch.int64 or weights.dtype != torch.float32 or ids.shape != weights.shape or ids.ndim != 2:
        return None
    if ids.shape[0] != 1 or not ids.is_cpu or not weights.is_cpu:
        return None
    if out is None:
        out = torch.empty(x.shape, dtype=torch.float32)
    else:
        shared = out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
        if shared or tuple(out.shape) != tuple(x.shape) or out.dtype != torch.float32 or not out.is_contiguous():
            return None
    row, wrow = ids.tolist()[0], weights.tolist()[0]
    if len(set(row)) != len(row):
        return None
    pairs = sorted((e, wt) for e, wt in zip(row, wrow, strict=True) if e in experts)
    if not pairs:
        return out.zero_()
    checked: list[CheckedExpert] = []
    for e, _ in pairs:
        c = experts[e]
        if not isinstance(c, CheckedExpert):
            return None
        checked.append(c)
    first = checked[0]
    if any(c.hidden != x.shape[1] or c.inter != first.inter or c.fmts != first.fmts for c in checked):
        return None
    n = len(pairs)
    i64 = ctypes.c_int64 * n
    ptrs = (ctypes.c_int64 * (3 * n))(*(p for c in checked for p in c.ptrs))
    types = (ctypes.c_int * 3)(*(lib.type_id(f) for f in first.fmts))
    begin, end, tokens = i64(*range(n)), i64(*range(1, n + 1)), i64()
    wts = (ctypes.c_float * n)(*(wt for _, wt in pairs))
    rc = lib.lib.kimi_ggml_moe(
        x.data_ptr(), 1, x.shape[1], first.inter, n,
        ctypes.addressof(ptrs), ctypes.addressof(types), ctypes.addressof(begin), ctypes.addressof(end),
        ctypes.addressof(tokens), ctypes.addressof(wts), out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    _raise_rc(rc, "ggml_grouped_ffn_cpu")
    return out


def ggml_grouped_ffn_cpu(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    experts: Mapping[int, GgmlExpert | CheckedExpert],
    out: torch.Tensor | None = None,
    isa: str | None = None,
) -> torch.Tensor:
    """sum_k weights[t, k] * expert_{ids[t, k]}(x[t]) over the (t, k) whose expert is in `experts`: [T, D] float32;
    experts absent from the mapping run elsewhere. The native kernel takes the whole layer in one call."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ValueError(f"x: expected [tokens, hidden], got {getattr(x, 'shape', type(x).__name__)}")
    xt = _check_x(x, x.shape[1])
    n_tok, d = xt.shape
    if n_tok == 1:
        done = _decode_ffn(xt, ids, weights, experts, out, isa)
        if done is not None:
            return done
    runs, tokens, wts = sorted_pairs(ids, weights, n_tok, experts)
    check_out_not_x(out, xt)
    y = torch.empty(n_tok, d, dtype=torch.float32) if out is None else out
    if tuple(y.shape) != (n_tok, d) or y.dtype != torch.float32 or not y.is_contiguous():
        raise ValueError(f"out: expected a contiguous float32 [{n_tok}, {d}], got {y.dtype} {list(y.shape)}")
    if not runs:
        return y.zero_()
    i, checked = _check_experts(xt, experts, [e for e, _, _ in runs])
    lib = _native(isa)
    if lib is None:
        by_id = {e: c.weights for (e, _, _), c in zip(runs, checked, strict=True)}
        return sum_over_runs(
            y, xt, runs, tokens, wts, lambda e, xs: expert_ffn(xs, *(dequantize(w, torch.float32) for w in by_id[e]))
        )
    ptrs = torch.tensor([c.ptrs for c in checked], dtype=torch.int64)
    types = (ctypes.c_int * 3)(*(lib.type_id(f) for f in checked[0].fmts))
    bounds = run_bounds(runs)
    rc = lib.lib.kimi_ggml_moe(
        xt.data_ptr(),
        n_tok,
        d,
        i,
        len(runs),
        ptrs.data_ptr(),
        ctypes.addressof(types),
        bounds[0].data_ptr(),
        bounds[1].data_ptr(),
        tokens.data_ptr(),
        wts.data_ptr(),
        y.data_ptr(),
        torch.get_num_threads(),
    )
    _raise_rc(rc, "ggml_grouped_ffn_cpu")
    return y
