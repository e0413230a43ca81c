"""Triton: INT4 pack-quantized experts held in GPU slots, dequantized in-register inside a grouped GEMM.

Layout (one matrix kind per call: gate, up or down):
- slot pool: `packed` int32 [S, out, in/8] and `scale` bf16 [S, out, in/32] (compressed-tensors' format, see
  kernels/int4.py); `slot_of` int32 [E]: expert id -> slot, -1 = not on the GPU.
- tokens sorted by expert: `x` [N, in]; group g owns rows offsets[g] .. offsets[g+1] and runs expert
  group_expert[g]. Groups may be empty. Rows of a group whose expert has no slot are NOT written (the caller
  computes them on the CPU); neither are rows outside every group.

Grid: (cdiv(out, BLOCK_N), G). A program loads its group's expert and slot, walks the group's rows BLOCK_M at a
time (zero steps for an empty or unslotted group, so no host sync is needed to size the grid) and, per K block,
unpacks BLOCK_K/32 quantization groups: tl.dot(x, q) with q = nibble - 8 (exact in fp16/bf16), then multiplies by
the group's scale in fp32. Products are exact for fp16/bf16 activations; accumulation is fp32.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels.int4 import _check_packed, _check_scale, dequantize_int4

GROUP = 32  # K2.5's quantization group; the kernel needs 32 (q, then one scale per 32 columns)
NEEDS_CUDA = "Triton needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is first imported)"
_DOT_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


class SlotPool(NamedTuple):
    """One matrix kind of every slotted expert: packed int32 [S, out, in/8], scale bf16 [S, out, in/32]."""

    packed: torch.Tensor
    scale: torch.Tensor


@dataclass(frozen=True, slots=True)
class Int4Blocks:
    """Launch configuration; block_m=None picks 16/32/64 from the mean tokens per group (no host sync)."""

    block_m: int | None = None
    block_n: int = 64
    block_k: int = 128
    num_warps: int = 4
    num_stages: int = 3


@triton.jit
def _int4_grouped_kernel(
    x_ptr,
    packed_ptr,
    scale_ptr,
    slot_ptr,
    offsets_ptr,
    expert_ptr,
    y_ptr,
    OUT,
    IN,
    stride_xm,
    stride_xk,
    stride_ps,
    stride_pn,
    stride_pk,
    stride_ss,
    stride_sn,
    stride_sk,
    stride_ym,
    stride_yn,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    slot = tl.load(slot_ptr + tl.load(expert_ptr + g))
    start = tl.load(offsets_ptr + g)
    end = tl.load(offsets_ptr + g + 1)
    end = tl.where(slot < 0, start, end)  # no slot: zero row blocks, rows left untouched
    slot64 = tl.maximum(slot, 0).to(tl.int64)
    w_base = packed_ptr + slot64 * stride_ps
    s_base = scale_ptr + slot64 * stride_ss

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < OUT
    offs_g = tl.arange(0, GROUP)
    shift = (offs_g % 8) * 4  # column c sits in word c // 8 at bits 4 * (c % 8)
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < end
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, IN, BLOCK_K):
            for i in tl.static_range(BLOCK_K // GROUP):
                offs_k = k0 + i * GROUP + offs_g  # [GROUP]; IN is a multiple of GROUP, so a group is all in or out
                mask_k = offs_k < IN
                x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
                x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)  # [BLOCK_M, GROUP]
                w_ptrs = w_base + offs_n[None, :] * stride_pn + (offs_k // 8)[:, None] * stride_pk
                words = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0)  # [GROUP, BLOCK_N]
                q = ((words >> shift[:, None]) & 0xF) - 8  # [GROUP, BLOCK_N] in -8..7
                s_col = tl.minimum(k0 + i * GROUP, IN - GROUP) // GROUP  # a group past IN has x = 0: any scale
                s = tl.load(s_base + offs_n * stride_sn + s_col * stride_sk, mask=mask_n, other=0.0).to(tl.float32)
                if DOT_DTYPE == tl.float32:  # noqa: SIM300 (a constexpr: resolved at compile time)
                    part = tl.dot(x.to(tl.float32), q.to(tl.float32), input_precision="ieee")
                else:
                    part = tl.dot(x.to(DOT_DTYPE), q.to(DOT_DTYPE))
                acc += part * s[None, :]
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
        tl.store(y_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])


def _interpreted(fn: object) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(fn, InterpretedFunction)


def interpreter_ready(kernel: object = None) -> bool:
    """True when `kernel` (default: the INT4 one) runs in Triton's interpreter, on CPU tensors. Triton chooses
    when a function is decorated, so TRITON_INTERPRET=1 must be set before triton is first imported (its own
    tl.* helpers are decorated then)."""
    import triton.language.standard as std
    from triton.runtime.jit import JITFunction

    helpers = [f for f in vars(std).values() if isinstance(f, JITFunction) or _interpreted(f)]
    return _interpreted(kernel or _int4_grouped_kernel) and all(_interpreted(f) for f in helpers)


def _check_index(name: str, t: torch.Tensor, dim: int | None = None) -> None:
    if t.dtype != torch.int32 or t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D torch.int32 tensor, got {t.dtype} {tuple(t.shape)}")
    if dim is not None and t.shape[0] != dim:
        raise ValueError(f"{name} has {t.shape[0]} entries; expected {dim}")


def _check_index_values(
    n: int, slots: int, slot_of: torch.Tensor, offsets: torch.Tensor, group_expert: torch.Tensor
) -> None:
    """Value checks, run only for CPU index tensors: on the GPU they would cost a host sync."""
    off, experts, slot_list = offsets.tolist(), group_expert.tolist(), slot_of.tolist()
    if off and (off[0] < 0 or off[-1] > n or any(a > b for a, b in itertools.pairwise(off))):
        raise ValueError(f"offsets must be non-decreasing within [0, {n}] (rows of x), got {off}")
    if any(not 0 <= e < len(slot_list) for e in experts):
        raise ValueError(f"group_expert values must be expert ids in [0, {len(slot_list)}), got {experts}")
    if any(not -1 <= s < slots for s in slot_list):
        raise ValueError(f"slot_of values must be -1 or a slot in [0, {slots}), got {slot_list}")


def _pick_block_m(n: int, groups: int) -> int:
    mean = -(-n // max(groups, 1))
    return 16 if mean <= 16 else 32 if mean <= 32 else 64


def int4_grouped_matmul(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    slot_of: torch.Tensor,
    offsets: torch.Tensor,
    group_expert: torch.Tensor,
    out: torch.Tensor | None = None,
    blocks: Int4Blocks = Int4Blocks(),  # frozen, so a shared default is safe
) -> torch.Tensor:
    """y [N, out] float32: rows of group g = x[rows] @ W[slot_of[group_expert[g]]]^T.

    Rows of groups whose expert has slot -1 (and rows in no group) are left as they are in `out`; when `out` is
    None they are 0. Index values are validated only when the index tensors are on the CPU (no host sync on GPU).
    """
    if x.dim() != 2 or x.dtype not in _DOT_DTYPES:
        raise ValueError(f"x must be 2-D [N, in] float16/bfloat16/float32, got {x.dtype} {tuple(x.shape)}")
    n, in_f = x.shape
    if packed.dtype != torch.int32 or packed.dim() != 3:
        raise ValueError(f"packed must be torch.int32 [S, out, in/8], got {packed.dtype} {tuple(packed.shape)}")
    slots, out_f = packed.shape[0], packed.shape[1]
    _check_packed(tuple(packed.shape[1:]), in_f)
    if max(n * x.stride(0), n * out_f) >= 2**31:  # the kernel's row offsets are int32
        raise ValueError(f"{n} rows x {max(in_f, out_f)} columns overflow the kernel's int32 offsets; split the batch")
    if scale.dim() != 3 or scale.shape[0] != slots or scale.dtype not in _DOT_DTYPES:
        want = f"[{slots}, out, in/{GROUP}]"
        raise ValueError(f"scale must be bf16/fp16/fp32 {want}, got {scale.dtype} {tuple(scale.shape)}")
    _check_scale(tuple(scale.shape[1:]), out_f, in_f, GROUP)
    _check_index("slot_of", slot_of)
    _check_index("group_expert", group_expert)
    _check_index("offsets", offsets, group_expert.shape[0] + 1)
    tensors = dict(x=x, packed=packed, scale=scale, slot_of=slot_of, offsets=offsets, group_expert=group_expert)
    if out is not None:
        if out.dtype != torch.float32 or tuple(out.shape) != (n, out_f):
            raise ValueError(f"out must be torch.float32 [{n}, {out_f}], got {out.dtype} {tuple(out.shape)}")
        tensors["out"] = out
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) != 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")
    interpreted = _interpreted(_int4_grouped_kernel)
    if x.device.type != "cuda" and not interpreter_ready():
        raise ValueError(f"tensors are on {x.device}; {NEEDS_CUDA}")
    if x.device.type == "cpu":
        _check_index_values(n, slots, slot_of, offsets, group_expert)
    block_m = blocks.block_m or _pick_block_m(n, group_expert.shape[0])
    if blocks.block_k % GROUP or any(b < 16 or b & (b - 1) for b in (block_m, blocks.block_n)):
        raise ValueError(f"block_k must be a multiple of {GROUP}, block_m and block_n powers of two >= 16: {blocks}")

    y = torch.zeros(n, out_f, dtype=torch.float32, device=x.device) if out is None else out
    groups = group_expert.shape[0]
    if n == 0 or out_f == 0 or groups == 0:
        return y
    # The interpreter's tl.dot mishandles bf16 (held as raw uint16): there, bf16 products go through fp32.
    dot_dtype = tl.float32 if interpreted and x.dtype == torch.bfloat16 else _DOT_DTYPES[x.dtype]
    grid = (triton.cdiv(out_f, blocks.block_n), groups)
    _int4_grouped_kernel[grid](
        x,
        packed,
        scale,
        slot_of,
        offsets,
        group_expert,
        y,
        out_f,
        in_f,
        x.stride(0),
        x.stride(1),
        packed.stride(0),
        packed.stride(1),
        packed.stride(2),
        scale.stride(0),
        scale.stride(1),
        scale.stride(2),
        y.stride(0),
        y.stride(1),
        GROUP=GROUP,
        BLOCK_M=block_m,
        BLOCK_N=blocks.block_n,
        BLOCK_K=blocks.block_k,
        DOT_DTYPE=dot_dtype,
        num_warps=blocks.num_warps,
        num_stages=blocks.num_stages,
    )
    return y


def int4_grouped_ffn(
    x: torch.Tensor,
    gate_pool: SlotPool | tuple[torch.Tensor, torch.Tensor],
    up_pool: SlotPool | tuple[torch.Tensor, torch.Tensor],
    down_pool: SlotPool | tuple[torch.Tensor, torch.Tensor],
    slot_of: torch.Tensor,
    offsets: torch.Tensor,
    group_expert: torch.Tensor,
    out: torch.Tensor | None = None,
    blocks: Int4Blocks = Int4Blocks(),  # frozen, so a shared default is safe
) -> torch.Tensor:
    """Expert FFN down(silu(gate(x)) * up(x)) per group -> [N, hidden] float32; unslotted rows as in the matmul.

    The hidden activation is rounded to x.dtype before `down`, as a model running in x.dtype would."""
    index = (slot_of, offsets, group_expert)
    gate = int4_grouped_matmul(x, gate_pool[0], gate_pool[1], *index, blocks=blocks)  # [N, I]
    up = int4_grouped_matmul(x, up_pool[0], up_pool[1], *index, blocks=blocks)  # [N, I]
    h = (torch.nn.functional.silu(gate) * up).to(x.dtype)  # [N, I]; unslotted rows are 0
    return int4_grouped_matmul(h, down_pool[0], down_pool[1], *index, out=out, blocks=blocks)


# ---- reference (pure torch) -----------------------------------------------------------------------------------
def int4_grouped_matmul_ref(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    slot_of: torch.Tensor,
    offsets: torch.Tensor,
    group_expert: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as int4_grouped_matmul: one dequantized matrix per group (kernels.int4.dequantize_int4)."""
    in_f = packed.shape[2] * 8
    y = torch.zeros(x.shape[0], packed.shape[1], dtype=torch.float32, device=x.device) if out is None else out
    off, experts, slot_of_l = offsets.tolist(), group_expert.tolist(), slot_of.tolist()
    for g, expert in enumerate(experts):
        slot, lo, hi = slot_of_l[expert], off[g], off[g + 1]
        if slot < 0 or hi == lo:
            continue
        w = dequantize_int4(packed[slot], scale[slot], in_f, GROUP)  # [out, in] float32
        y[lo:hi] = x[lo:hi].double() @ w.double().T  # fp64: immune to TF32 settings, rounded once to fp32
    return y


def int4_grouped_ffn_ref(
    x: torch.Tensor,
    gate_pool: SlotPool | tuple[torch.Tensor, torch.Tensor],
    up_pool: SlotPool | tuple[torch.Tensor, torch.Tensor],
    down_pool: SlotPool | tuple[torch.Tensor, torch.Tensor],
    slot_of: torch.Tensor,
    offsets: torch.Tensor,
    group_expert: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as int4_grouped_ffn, on int4_grouped_matmul_ref."""
    index = (slot_of, offsets, group_expert)
    gate = int4_grouped_matmul_ref(x, gate_pool[0], gate_pool[1], *index)
    up = int4_grouped_matmul_ref(x, up_pool[0], up_pool[1], *index)
    h = (torch.nn.functional.silu(gate) * up).to(x.dtype)
    return int4_grouped_matmul_ref(h, down_pool[0], down_pool[1], *index, out=out)


# ---- benchmark (scripts/gpu_check.sh; runs on CPU under TRITON_INTERPRET=1 with tiny shapes) -------------------
def time_call(fn: Callable[[], object], iters: int, device: torch.device | str, cuda_graph: bool = False) -> float:
    """Mean seconds per call of fn after one warm-up call (which also compiles). With cuda_graph, the `iters`
    calls are captured once and replayed, which leaves out the host's launch overhead."""
    fn()
    if torch.device(device).type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters
    run: Callable[[], object] = lambda: [fn() for _ in range(iters)]  # noqa: E731
    if cuda_graph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        run = graph.replay
        run()
    torch.cuda.synchronize(device)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    stop.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(stop) / 1e3 / iters


def random_pool(
    slots: int, out_f: int, in_f: int, device: torch.device | str, gen: torch.Generator | None = None
) -> SlotPool:
    """Random packed words (every nibble, -8 included) and positive bf16 scales of about 1/64; drawn on the
    generator's device, then moved to `device`."""
    on = gen.device if gen is not None else torch.device("cpu")
    words = (slots, out_f, in_f // 8)
    packed = torch.randint(-(2**31), 2**31 - 1, words, dtype=torch.int32, generator=gen, device=on)
    scale = ((torch.rand(slots, out_f, in_f // GROUP, generator=gen, device=on) + 0.5) / 64).to(torch.bfloat16)
    return SlotPool(packed.to(device), scale.to(device))


def int4_matrix_bytes(out_f: int, in_f: int) -> int:
    """Bytes one INT4 [out, in] matrix occupies (packed int32 + bf16 group scales): what a pass must read."""
    return out_f * in_f // 2 + out_f * (in_f // GROUP) * 2


def bench_int4_grouped(
    hidden: int,
    inter: int,
    tokens: int,
    experts: int = 8,
    iters: int = 20,
    device: torch.device | str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    blocks: Int4Blocks = Int4Blocks(),  # frozen, so a shared default is safe
    min_pool_bytes: int = 256 << 20,
    cuda_graph: bool = True,
) -> dict[str, float | int | str]:
    """Time gate-shaped [inter, hidden] and down-shaped [hidden, inter] grouped GEMMs and the whole FFN over
    `experts` slotted experts with `tokens` rows each. Consecutive calls cycle through enough slots (at least
    min_pool_bytes of weights) that the weights come from HBM, not L2. GB/s counts weight bytes (packed + scale).
    On CUDA the timings replay a CUDA graph (kernel time); ffn_eager_us adds the host's launch overhead.
    *_err: max |kernel - reference| / max |reference| on the first set of experts."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(0)
    gate_one, down_one = int4_matrix_bytes(inter, hidden), int4_matrix_bytes(hidden, inter)
    one = 2 * gate_one + down_one  # bytes of one expert's gate, up and down
    sets = max(1, math.ceil(min_pool_bytes / (experts * one)))
    slots = sets * experts
    gate, up = random_pool(slots, inter, hidden, device, gen), random_pool(slots, inter, hidden, device, gen)
    down = random_pool(slots, hidden, inter, device, gen)
    offsets = torch.arange(experts + 1, dtype=torch.int32, device=device) * tokens
    ids = torch.arange(slots, dtype=torch.int32, device=device)
    slot_of = ids  # expert e sits in slot e
    sets_experts = list(ids.split(experts))  # set s: experts s*experts .. (s+1)*experts - 1
    x = (torch.randn(experts * tokens, hidden, generator=gen, device=device) + 0.1).to(dtype)  # [N, hidden]
    h = (torch.randn(experts * tokens, inter, generator=gen, device=device) + 0.1).to(dtype)  # [N, inter]
    graph = cuda_graph and device.type == "cuda"
    result: dict[str, float | int | str] = {
        "hidden": hidden,
        "inter": inter,
        "tokens_per_expert": tokens,
        "experts": experts,
        "pool_slots": slots,
        "dtype": str(dtype).removeprefix("torch."),
        "block_m": blocks.block_m or _pick_block_m(experts * tokens, experts),
        "block_n": blocks.block_n,
        "block_k": blocks.block_k,
        "num_warps": blocks.num_warps,
        "num_stages": blocks.num_stages,
        "cuda_graph": graph,
    }

    def cycling(run: Callable[[torch.Tensor], object]) -> Callable[[], object]:
        group_experts = itertools.cycle(sets_experts)
        return lambda: run(next(group_experts))

    def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
        return ((y - ref).abs().max() / ref.abs().max()).item()

    first = (slot_of, offsets, sets_experts[0])
    for name, inp, pool, nbytes in (("gate", x, gate, gate_one), ("down", h, down, down_one)):
        y = int4_grouped_matmul(inp, *pool, *first, blocks=blocks)
        result[f"{name}_err"] = rel_err(y, int4_grouped_matmul_ref(inp, *pool, *first))
        fn = cycling(partial(int4_grouped_matmul, inp, *pool, slot_of, offsets, blocks=blocks))
        sec = time_call(fn, iters, device, graph)
        result[f"{name}_us"] = sec * 1e6
        result[f"{name}_gbs"] = experts * nbytes / sec / 1e9
    y = int4_grouped_ffn(x, gate, up, down, *first, blocks=blocks)
    result["ffn_err"] = rel_err(y, int4_grouped_ffn_ref(x, gate, up, down, *first))
    ffn = cycling(partial(int4_grouped_ffn, x, gate, up, down, slot_of, offsets, blocks=blocks))
    sec = time_call(ffn, iters, device, graph)
    result["ffn_us"] = sec * 1e6
    result["ffn_gbs"] = experts * one / sec / 1e9
    result["ffn_eager_us"] = time_call(ffn, iters, device) * 1e6
    return result
