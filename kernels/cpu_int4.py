"""Cold INT4 experts computed on the CPU, straight from the checkpoint's pack-quantized layout.

A Linear [out, in] is `weight_packed` int32 [out, in/8] and `weight_scale` bf16 [out, in/32] (kernels/int4.py);
both are read in place, so they may be zero-copy views over an mmap of the safetensors shard. The fast path is a
small C++ kernel (csrc/int4_cpu.cpp: AVX2 + FMA, OpenMP over rows) compiled once per machine (kernels/native.py)
and called through ctypes, which releases the GIL while it runs. Without a compiler or without AVX2/FMA,
the same functions run a pure-torch path (dequantize, then matmul) after one logged warning.

Candidates kept for tests and `kernels.bench`: the NumPy reference, the torch-ops path, torch's own int4 kernel
(needs a one-time repack of the weights) and the native kernel.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import platform
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from kernels import cpu_ggml  # its library holds the int8-activation kernels
from kernels.ffn import check_out_not_x, expert_ffn, run_bounds, sorted_pairs, sum_over_runs
from kernels.int4 import dequantize_int4, dequantize_int4_ref, unpack_int4
from kernels.native import NativeBuild, build

log = logging.getLogger(__name__)

GROUP = 32  # compressed-tensors' group size for K2.5's experts; the kernel assumes it
Int4Linear = tuple[torch.Tensor, torch.Tensor]  # (weight_packed int32 [out, in/8], weight_scale bf16 [out, in/32])
Int4Expert = tuple[Int4Linear, Int4Linear, Int4Linear]  # gate [I, D], up [I, D], down [D, I]

SOURCE = Path(__file__).parent / "csrc" / "int4_cpu.cpp"
CXXFLAGS = ("-mavx2", "-mfma")


# ---- checks ---------------------------------------------------------------------------------------------------
def _check_tensor(name: str, t: object, dtype: torch.dtype, rows: int | None, cols: int | None) -> torch.Tensor:
    """`t` is a contiguous 2-D CPU tensor of `dtype`, [rows, cols] (None: any size). The checks run on every call
    of the decode path, so the message is only built when one fails."""
    if (
        isinstance(t, torch.Tensor)
        and t.dtype == dtype
        and t.ndim == 2
        and t.is_cpu
        and t.is_contiguous()
        and (rows is None or t.shape[0] == rows)
        and (cols is None or t.shape[1] == cols)
    ):
        return t
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    want = f"[{'*' if rows is None else rows}, {'*' if cols is None else cols}]"
    if t.ndim != 2 or (rows is not None and t.shape[0] != rows) or (cols is not None and t.shape[1] != cols):
        raise ValueError(f"{name}: expected shape {want}, got {list(t.shape)}")
    if t.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if not t.is_cpu:
        raise ValueError(f"{name}: expected a CPU tensor, got device {t.device}")
    raise ValueError(f"{name}: expected a contiguous tensor, got strides {t.stride()} (call .contiguous())")


def _check_linear(name: str, packed: object, scale: object, in_features: int | None = None) -> tuple[int, int]:
    """(out, in) of one INT4 Linear; errors name `{name}packed` / `{name}scale`; `in_features`, when given, is the
    width the caller needs."""
    p = _check_tensor(f"{name}packed", packed, torch.int32, None, None)
    out_f, in_f = p.shape[0], p.shape[1] * 8
    if in_f % GROUP or in_f == 0:
        raise ValueError(f"{name}packed: in = 8 * {p.shape[1]} = {in_f} is not a positive multiple of {GROUP}")
    if in_features is not None and in_f != in_features:
        raise ValueError(f"{name}packed: expected shape [*, {in_features // 8}], got {list(p.shape)}")
    _check_tensor(f"{name}scale", scale, torch.bfloat16, out_f, in_f // GROUP)
    return out_f, in_f


def _check_out(out: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=torch.float32)
    return _check_tensor("out", out, torch.float32, *shape)


def _check_expert(x: object, gate: Int4Linear, up: Int4Linear, down: Int4Linear) -> tuple[torch.Tensor, int, int]:
    """x, D and I of one expert call."""
    xt = _check_tensor("x", x, torch.float32, None, None)
    d = xt.shape[1]
    i, _ = _check_linear("gate ", *gate, in_features=d)
    i_up, _ = _check_linear("up ", *up, in_features=d)
    if i_up != i:
        raise ValueError(f"up packed: expected shape [{i}, {d // 8}] like gate, got {list(up[0].shape)}")
    d_out, _ = _check_linear("down ", *down, in_features=i)
    if d_out != d:
        raise ValueError(f"down packed: expected shape [{d}, {i // 8}], got {list(down[0].shape)}")
    return xt, d, i


def check_expert(x: object, gate: Int4Linear, up: Int4Linear, down: Int4Linear) -> tuple[int, int]:
    """(D, I) of an expert for x [T, D] float32, after checking its packed weights and scales (ValueError)."""
    return _check_expert(x, gate, up, down)[1:]


# ---- the native kernel: built once per machine, loaded once per process --------------------------------------------
def build_native(force: bool = False) -> NativeBuild:
    """Compile csrc/int4_cpu.cpp into the cache (keyed by source, flags and compiler) unless it is there already.
    Raises RuntimeError saying why when it cannot."""
    cap = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() not in ("x86_64", "amd64") or cap not in ("AVX2", "AVX512"):
        raise RuntimeError(f"the INT4 CPU kernel needs an x86-64 CPU with AVX2 and FMA (torch sees {cap})")
    return build(SOURCE, "kimi_int4_cpu", CXXFLAGS, force=force)


class _Native:
    """ctypes bindings of csrc/int4_cpu.cpp."""

    def __init__(self, build: NativeBuild) -> None:
        self.build = build
        lib = ctypes.CDLL(str(build.path))
        p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.kimi_int4_linear.argtypes = [p, i64, i64, p, p, i64, p, i32]
        lib.kimi_int4_linear.restype = i32
        lib.kimi_int4_expert_ffn.argtypes = [p, i64, i64, i64, p, p, p, p, p, p, p, i32]
        lib.kimi_int4_expert_ffn.restype = i32
        lib.kimi_int4_grouped_ffn.argtypes = [p, i64, i64, i64, i64, p, p, p, p, p, p, i32]
        lib.kimi_int4_grouped_ffn.restype = i32
        self.lib = lib


@functools.cache
def _native() -> _Native | None:
    try:
        native = _Native(build_native())
    except (RuntimeError, OSError) as e:
        log.warning("INT4 CPU kernel unavailable, using the slower torch path (dequantize + matmul): %s", e)
        return None
    log.info("INT4 CPU kernel %s (compiled in %.1f s)", native.build.path, native.build.compile_s)
    return native


def native_build() -> NativeBuild | None:
    """The loaded native kernel's build, or None when the torch fallback is in use (the reason was logged)."""
    native = _native()
    return None if native is None else native.build


def _raise_rc(rc: int, what: str) -> None:
    if rc != 0:
        raise MemoryError(f"{what}: the INT4 CPU kernel could not allocate its scratch (rc {rc})")


# ---- one Linear ------------------------------------------------------------------------------------------------
def int4_linear_ref(x: np.ndarray, packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """NumPy reference: x [T, in] @ W.T with W = q * scale (scale given as float32, bf16 widens exactly), float64
    inside, [T, out] float32."""
    w = dequantize_int4_ref(packed, scale.astype(np.float32), packed.shape[1] * 8, GROUP)
    return (x.astype(np.float64) @ w.astype(np.float64).T).astype(np.float32)


def int4_linear_numpy(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Candidate (a): the NumPy reference on torch tensors."""
    _, in_f = _check_linear("", packed, scale)
    _check_tensor("x", x, torch.float32, None, in_f)
    return torch.from_numpy(int4_linear_ref(x.numpy(), packed.numpy(), scale.float().numpy()))


def int4_linear_torch(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Candidate (b) and the fallback: dequantize to float32 [out, in], then one matmul."""
    out_f, in_f = _check_linear("", packed, scale)
    xt = _check_tensor("x", x, torch.float32, None, in_f)
    y = _check_out(out, (xt.shape[0], out_f))
    return torch.matmul(xt, dequantize_int4(packed, scale, in_f, GROUP).t(), out=y)


def to_int4pack(packed: torch.Tensor, scale: torch.Tensor, inner_k_tiles: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate (c)'s one-time repack into torch's own int4 CPU layout: (weight uint8 [out, in/2], scales-and-zeros
    bf16 [in/32, out, 2]); zeros are 0 because torch decodes (n - 8) * scale + zero, like the checkpoint."""
    out_f, in_f = _check_linear("", packed, scale)
    if out_f % 16:
        raise ValueError(f"packed: torch's int4 layout needs out a multiple of 16, got {out_f}")
    nibbles = unpack_int4(packed, in_f).to(torch.int32) + 8  # [out, in] in 0..15
    w = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles, inner_k_tiles)
    s = scale.t()  # [in/32, out]
    return w, torch.stack((s, torch.zeros_like(s)), dim=-1).contiguous()


def int4_linear_int4pack(x: torch.Tensor, w: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor:
    """Candidate (c): torch's int4 CPU kernel on weights repacked by `to_int4pack`. Its fast path takes bf16
    activations (float32 ones run about 5x slower), so x is rounded to bf16 and the bf16 result widened."""
    xt = _check_tensor("x", x, torch.float32, None, w.shape[1] * 2)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(xt.to(torch.bfloat16), w, GROUP, scales_zeros).float()


def int4_linear_native(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Candidate (d): the C++ kernel. Raises RuntimeError when it is not available here."""
    native = _native()
    if native is None:
        raise RuntimeError("the INT4 CPU kernel is not available here (see the logged warning)")
    out_f, in_f = _check_linear("", packed, scale)
    xt = _check_tensor("x", x, torch.float32, None, in_f)
    y = _check_out(out, (xt.shape[0], out_f))
    if xt.shape[0] and out_f:
        rc = native.lib.kimi_int4_linear(
            xt.data_ptr(),
            xt.shape[0],
            in_f,
            packed.data_ptr(),
            scale.data_ptr(),
            out_f,
            y.data_ptr(),
            torch.get_num_threads(),
        )
        _raise_rc(rc, "int4_linear_cpu")
    return y


def int4_linear_cpu(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """x [T, in] float32 @ W.T -> [T, out] float32, W read from (weight_packed, weight_scale) in place; all of
    torch's threads. The C++ kernel when it is available, else the torch path."""
    if _native() is None:
        return int4_linear_torch(x, packed, scale, out)
    return int4_linear_native(x, packed, scale, out)


# ---- experts ---------------------------------------------------------------------------------------------------
def int4_expert_ffn_cpu(
    x: torch.Tensor, gate: Int4Linear, up: Int4Linear, down: Int4Linear, out: torch.Tensor | None = None
) -> torch.Tensor:
    """One routed expert, down(silu(gate x) * up x): x [T, D] float32 -> [T, D] float32. The native kernel does
    the three matmuls and the activation in one parallel region."""
    xt, d, i = _check_expert(x, gate, up, down)
    y = _check_out(out, (xt.shape[0], d))
    native = _native()
    if native is None:
        w = [dequantize_int4(p, s, p.shape[1] * 8, GROUP) for p, s in (gate, up, down)]
        y.copy_(expert_ffn(xt, *w))
    elif xt.shape[0]:
        rc = native.lib.kimi_int4_expert_ffn(
            xt.data_ptr(),
            xt.shape[0],
            d,
            i,
            *(t.data_ptr() for pair in (gate, up, down) for t in pair),
            y.data_ptr(),
            torch.get_num_threads(),
        )
        _raise_rc(rc, "int4_expert_ffn_cpu")
    return y


def int4_grouped_ffn_cpu(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    experts: Mapping[int, Int4Expert],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_k weights[t, k] * expert_{ids[t, k]}(x[t]) over the (t, k) whose expert is in `experts`: [T, D] float32.
    Experts absent from the mapping are skipped (they run elsewhere, e.g. in a GPU slot); each present expert runs
    once on the tokens routed to it. The native kernel takes the whole layer in one call."""
    xt = _check_tensor("x", x, torch.float32, None, None)
    n_tok, d = xt.shape
    check_out_not_x(out, xt)
    y = _check_out(out, (n_tok, d))
    runs, tokens, wts = sorted_pairs(ids, weights, n_tok, experts)
    i = _check_expert(xt, *experts[runs[0][0]])[2] if runs else 0
    for e, _, _ in runs[1:]:
        if _check_expert(xt, *experts[e])[2] != i:
            raise ValueError(f"experts[{e}]: expected the inter size {i} of experts[{runs[0][0]}], got a different one")
    native = _native()
    if native is None or not runs:
        return sum_over_runs(y, xt, runs, tokens, wts, lambda e, xs: int4_expert_ffn_cpu(xs, *experts[e]))
    ptrs = torch.tensor([[t.data_ptr() for pair in experts[e] for t in pair] for e, _, _ in runs], dtype=torch.int64)
    bounds = run_bounds(runs)
    rc = native.lib.kimi_int4_grouped_ffn(
        xt.data_ptr(),
        n_tok,
        d,
        i,
        len(runs),
        ptrs.data_ptr(),
        bounds[0].data_ptr(),
        bounds[1].data_ptr(),
        tokens.data_ptr(),
        wts.data_ptr(),
        y.data_ptr(),
        torch.get_num_threads(),
    )
    _raise_rc(rc, "int4_grouped_ffn_cpu")
    return y


def int4_grouped_ffn_q8_cpu(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, experts: Mapping[int, Int4Expert]
) -> torch.Tensor | None:
    """One decode token (x [1, D] float32) through its experts present in `experts` with int8 activations and
    integer dot products (csrc/int4_q8.h, in the ggml kernel's library; AVX2 or AVX-512 VNNI): [1, D] float32, or
    None where that library is not available (the caller keeps the float kernel). What it computes is
    `kernels.cpu_ggml.ggml_grouped_ffn_int8_ref` on the dequantized weights."""
    lib = cpu_ggml._native()
    if lib is None:
        return None
    xt = _check_tensor("x", x, torch.float32, 1, None)
    d = xt.shape[1]
    runs, _, wts = sorted_pairs(ids, weights, 1, experts)
    y = torch.zeros(1, d, dtype=torch.float32)
    if not runs:
        return y
    i = _check_expert(xt, *experts[runs[0][0]])[2]
    for e, _, _ in runs[1:]:
        if _check_expert(xt, *experts[e])[2] != i:
            raise ValueError(f"experts[{e}]: expected the inter size {i} of experts[{runs[0][0]}], got a different one")
    if d % 32 or i % 32:
        raise ValueError(f"int8 activations take widths that are multiples of 32; got hidden {d}, inter {i}")
    ptrs = (ctypes.c_int64 * (6 * len(runs)))(*(t.data_ptr() for e, _, _ in runs for pair in experts[e] for t in pair))
    rc = lib.lib.kimi_int4_moe_decode(
        xt.data_ptr(), d, i, len(runs), ctypes.addressof(ptrs), wts.data_ptr(), y.data_ptr(), torch.get_num_threads()
    )
    _raise_rc(rc, "int4_grouped_ffn_q8_cpu")
    return y
