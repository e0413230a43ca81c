"""Triton kernels (kernels/triton_int4.py, kernels/triton_fp8.py) against their torch/NumPy references.

Without CUDA the kernels run in Triton's interpreter on CPU tensors (slow per program: tiny shapes, big blocks).
Triton picks interpreter or compiler when a function is decorated, its own tl.* helpers included, so
TRITON_INTERPRET is set here before anything below imports triton. When another test module imported triton
first (compressed-tensors does), the interpreter cannot run in this process: these tests then skip here and
run in a fresh subprocess (test_interpreter_tests_in_subprocess). With CUDA the same tests run on the GPU,
plus the `gpu` ones at real shapes.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernels.fp8 import dequantize_fp8, dequantize_fp8_ref, quantize_fp8
from kernels.int4 import dequantize_int4_ref
from kernels.triton_fp8 import bench_fp8_dequant, dequantize_fp8_triton
from kernels.triton_int4 import (
    Int4Blocks,
    SlotPool,
    bench_int4_grouped,
    int4_grouped_ffn,
    int4_grouped_ffn_ref,
    int4_grouped_matmul,
    int4_grouped_matmul_ref,
    interpreter_ready,
    random_pool,
)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
ROOT = Path(__file__).resolve().parents[1]
KERNELS_RUN_HERE = CUDA or interpreter_ready()
SUBPROCESS_FLAG = "KIMI_OFFLOAD_TRITON_SUBPROCESS"  # set in the subprocess, where the interpreter must work


@pytest.fixture(autouse=True)
def _needs_kernels_in_this_process(request: pytest.FixtureRequest) -> None:
    if KERNELS_RUN_HERE or request.node.name == "test_interpreter_tests_in_subprocess":
        return
    if os.environ.get(SUBPROCESS_FLAG):
        pytest.fail("the Triton interpreter is unavailable even in a fresh process: something imports triton first")
    pytest.skip("triton was imported before TRITON_INTERPRET was set; run by test_interpreter_tests_in_subprocess")


@pytest.mark.skipif(KERNELS_RUN_HERE, reason="the kernel tests run in this process")
def test_interpreter_tests_in_subprocess() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", SUBPROCESS_FLAG: "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", __file__]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


# Max |kernel - reference| / max |reference|. fp16/bf16 activations times int4 q are exact products, so the
# matmul differs from the fp64 reference only by fp32 summation order; the FFN also rounds its hidden
# activation to x.dtype, where a last-bit difference in gate/up can flip one ulp.
MATMUL_TOL = {torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
FFN_TOL = {torch.float32: 1e-5, torch.float16: 2e-4, torch.bfloat16: 2e-3}

# Small odd problem: out and in not multiples of the blocks (in a multiple of 32), groups of 3, 0, 20 (two row
# blocks of 16), 2 (expert 1: no slot), 5 tokens, then one row in no group.
EXPERTS_SLOT = [2, -1, 0, 1, -1, -1]  # expert -> slot
GROUP_EXPERT = [0, 3, 2, 1, 3]
GROUP_TOKENS = [3, 0, 20, 2, 5]
SMALL_BLOCKS = Int4Blocks(block_m=16, block_n=32, block_k=64)


def signed_rand(*shape: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Uniform magnitudes in [0.1, 1.1) with random signs: no zeros."""
    sign = torch.where(torch.rand(*shape, generator=gen) < 0.5, -1.0, 1.0)
    return ((torch.rand(*shape, generator=gen) + 0.1) * sign).to(dtype).to(DEVICE)


def index(experts_slot: list[int], group_expert: list[int], tokens: list[int]) -> tuple[torch.Tensor, ...]:
    offsets = np.concatenate([[0], np.cumsum(tokens)])
    as_i32 = lambda v: torch.tensor(v, dtype=torch.int32, device=DEVICE)  # noqa: E731
    return as_i32(experts_slot), as_i32(offsets.tolist()), as_i32(group_expert)


def unwritten_rows(experts_slot: list[int], group_expert: list[int], tokens: list[int], n: int) -> torch.Tensor:
    """Bool [n]: rows of groups without a slot, and rows in no group."""
    mask, start = torch.ones(n, dtype=torch.bool), 0
    for e, t in zip(group_expert, tokens, strict=True):
        mask[start : start + t] = experts_slot[e] < 0
        start += t
    return mask.to(DEVICE)


def assert_close_rel(y: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    err = ((y - ref).abs().max() / ref.abs().max()).item()
    assert err <= tol, f"max |y - ref| / max |ref| = {err:.3g} > {tol:.3g}"


def check_grouped(out: torch.Tensor, ref: torch.Tensor, unwritten: torch.Tensor, tol: float) -> None:
    assert torch.isnan(out[unwritten]).all(), "rows of unslotted groups (or of no group) were written"
    assert torch.isfinite(out[~unwritten]).all(), "rows of slotted groups were not all written"
    assert_close_rel(out[~unwritten], ref[~unwritten], tol)


# ---- INT4 grouped GEMM ----------------------------------------------------------------------------------------
def test_reference_matches_numpy_dequantization() -> None:
    gen = torch.Generator().manual_seed(1)
    pool = random_pool(3, 40, 96, "cpu", gen)
    slot_of, offsets, group_expert = index(EXPERTS_SLOT, GROUP_EXPERT, GROUP_TOKENS)
    x = signed_rand(sum(GROUP_TOKENS) + 1, 96, dtype=torch.float32, gen=gen).cpu()
    y = int4_grouped_matmul_ref(x, *pool, slot_of.cpu(), offsets.cpu(), group_expert.cpu())
    start = 0
    for e, t in zip(GROUP_EXPERT, GROUP_TOKENS, strict=True):
        slot = EXPERTS_SLOT[e]
        if slot >= 0 and t:
            w = dequantize_int4_ref(pool.packed[slot].numpy(), pool.scale[slot].float().numpy(), 96)
            rows = slice(start, start + t)
            np.testing.assert_allclose(y[rows].numpy(), x[rows].numpy() @ w.T, rtol=1e-5, atol=1e-5)
        start += t


@pytest.mark.parametrize("blocks", [SMALL_BLOCKS, Int4Blocks()], ids=["blocks16x32x64", "default"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_int4_grouped_matmul_matches_reference(dtype: torch.dtype, blocks: Int4Blocks) -> None:
    gen = torch.Generator().manual_seed(2)
    out_f, in_f, n = 40, 96, sum(GROUP_TOKENS) + 1
    pool = random_pool(3, out_f, in_f, DEVICE, gen)
    idx = index(EXPERTS_SLOT, GROUP_EXPERT, GROUP_TOKENS)
    x = signed_rand(n, in_f, dtype=dtype, gen=gen)
    poisoned = torch.full((n, out_f), float("nan"), device=DEVICE)
    y = int4_grouped_matmul(x, *pool, *idx, out=poisoned, blocks=blocks)
    assert y is poisoned
    ref = int4_grouped_matmul_ref(x, *pool, *idx)
    check_grouped(y, ref, unwritten_rows(EXPERTS_SLOT, GROUP_EXPERT, GROUP_TOKENS, n), MATMUL_TOL[dtype])


def test_int4_grouped_matmul_strided_x_and_default_out() -> None:
    gen = torch.Generator().manual_seed(3)
    pool = random_pool(3, 24, 64, DEVICE, gen)
    idx = index(EXPERTS_SLOT, GROUP_EXPERT, GROUP_TOKENS)
    x = signed_rand(64, sum(GROUP_TOKENS), dtype=torch.float16, gen=gen).T  # [N, 64], column-major
    y = int4_grouped_matmul(x, *pool, *idx, blocks=SMALL_BLOCKS)
    unwritten = unwritten_rows(EXPERTS_SLOT, GROUP_EXPERT, GROUP_TOKENS, x.shape[0])
    assert (y[unwritten] == 0).all(), "with out=None, unwritten rows are zeros"
    assert_close_rel(y, int4_grouped_matmul_ref(x, *pool, *idx), MATMUL_TOL[torch.float16])


def test_int4_grouped_matmul_nothing_to_do() -> None:
    gen = torch.Generator().manual_seed(4)
    pool = random_pool(2, 24, 32, DEVICE, gen)
    x = signed_rand(4, 32, dtype=torch.float32, gen=gen)
    no_groups = index([0, 1], [], [])
    assert (int4_grouped_matmul(x, *pool, *no_groups) == 0).all()
    all_skipped = index([-1, -1], [0, 1], [3, 1])
    poisoned = torch.full((4, 24), float("nan"), device=DEVICE)
    assert torch.isnan(int4_grouped_matmul(x, *pool, *all_skipped, out=poisoned, blocks=SMALL_BLOCKS)).all()
    assert int4_grouped_matmul(x[:0], *pool, *index([0, 1], [0], [0])).shape == (0, 24)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_int4_grouped_ffn_matches_reference(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    hidden, inter, n = 64, 96, sum(GROUP_TOKENS) + 1
    gate, up = random_pool(3, inter, hidden, DEVICE, gen), random_pool(3, inter, hidden, DEVICE, gen)
    down = random_pool(3, hidden, inter, DEVICE, gen)
    idx = index(EXPERTS_SLOT, GROUP_EXPERT, GROUP_TOKENS)
    x = signed_rand(n, hidden, dtype=dtype, gen=gen)
    poisoned = torch.full((n, hidden), float("nan"), device=DEVICE)
    y = int4_grouped_ffn(x, gate, up, down, *idx, out=poisoned, blocks=SMALL_BLOCKS)
    ref = int4_grouped_ffn_ref(x, gate, up, down, *idx)
    check_grouped(y, ref, unwritten_rows(EXPERTS_SLOT, GROUP_EXPERT, GROUP_TOKENS, n), FFN_TOL[dtype])


def _int4_args() -> dict[str, object]:
    gen = torch.Generator().manual_seed(6)
    pool = random_pool(3, 24, 64, DEVICE, gen)
    slot_of, offsets, group_expert = index(EXPERTS_SLOT, GROUP_EXPERT, GROUP_TOKENS)
    x = signed_rand(sum(GROUP_TOKENS), 64, dtype=torch.float32, gen=gen)
    return {
        "x": x,
        "packed": pool.packed,
        "scale": pool.scale,
        "slot_of": slot_of,
        "offsets": offsets,
        "group_expert": group_expert,
    }


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("x", lambda a: a["x"].double(), "x must be 2-D"),
        ("x", lambda a: a["x"][:, :32], "does not hold 32 input features"),
        ("packed", lambda a: a["packed"].view(torch.float32), "packed must be torch.int32"),
        ("packed", lambda a: a["packed"][0], r"packed must be torch.int32 \[S, out, in/8\]"),
        ("scale", lambda a: a["scale"][:2], "scale must be"),
        ("scale", lambda a: a["scale"][:, :, :1], "weight_scale shape"),
        ("slot_of", lambda a: a["slot_of"].long(), "slot_of must be a 1-D torch.int32"),
        ("offsets", lambda a: a["offsets"][:-1], "offsets has 5 entries; expected 6"),
        ("group_expert", lambda a: a["group_expert"][None], "group_expert must be a 1-D"),
        ("out", lambda a: torch.zeros(3, 24, device=DEVICE), r"out must be torch.float32 \[30, 24\]"),
        ("out", lambda a: torch.zeros(30, 24, dtype=torch.float16, device=DEVICE), "out must be torch.float32"),
        ("blocks", lambda a: Int4Blocks(block_n=48), "powers of two >= 16"),
        ("blocks", lambda a: Int4Blocks(block_m=8), "powers of two >= 16"),
        ("blocks", lambda a: Int4Blocks(block_k=48), "block_k must be a multiple of 32"),
    ],
)
def test_int4_grouped_matmul_rejects_bad_inputs(field: str, bad, message: str) -> None:  # type: ignore[no-untyped-def]
    args = _int4_args()
    args[field] = bad(args)
    with pytest.raises(ValueError, match=message):
        int4_grouped_matmul(**args)  # type: ignore[arg-type]


@pytest.mark.skipif(CUDA, reason="index values are validated only for CPU tensors (no host sync on GPU)")
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("offsets", [0, 3, 2, 23, 25, 30], "offsets must be non-decreasing"),
        ("offsets", [0, 3, 3, 23, 25, 31], r"within \[0, 30\]"),
        ("group_expert", [0, 3, 6, 1, 3], r"expert ids in \[0, 6\)"),
        ("slot_of", [2, -1, 0, 3, -1, -1], r"-1 or a slot in \[0, 3\)"),
    ],
)
def test_int4_index_values_checked_on_cpu(field: str, value: list[int], message: str) -> None:
    args = _int4_args()
    args[field] = torch.tensor(value, dtype=torch.int32)
    with pytest.raises(ValueError, match=message):
        int4_grouped_matmul(**args)  # type: ignore[arg-type]


# ---- FP8 block dequantization ---------------------------------------------------------------------------------
# The interpreter rounds fp32 -> bf16 toward zero (CUDA rounds to nearest even, as torch does): one bf16 ulp there.
FP8_ULPS = {torch.float32: 0.0, torch.float16: 0.0, torch.bfloat16: 0.0 if CUDA else 2.0**-7}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("shape", "block", "tile"), [((130, 200), (128, 128), (32, 64)), ((70, 90), (32, 48), (64, 128))]
)
def test_fp8_dequant_matches_reference(
    dtype: torch.dtype, shape: tuple[int, int], block: tuple[int, int], tile: tuple[int, int]
) -> None:
    gen = torch.Generator().manual_seed(7)
    w, scale_inv = quantize_fp8(torch.randn(*shape, generator=gen) * 3, block)
    y = dequantize_fp8_triton(w.to(DEVICE), scale_inv.to(DEVICE), block, dtype, tile=tile)
    assert y.dtype == dtype and y.shape == shape
    ref = dequantize_fp8(w, scale_inv, block, dtype)
    torch.testing.assert_close(y.cpu(), ref, rtol=FP8_ULPS[dtype], atol=0.0)
    if dtype == torch.float32:  # and the NumPy bit-level definition
        bits = w.view(torch.uint8).numpy()
        np.testing.assert_array_equal(y.cpu().numpy(), dequantize_fp8_ref(bits, scale_inv.numpy(), block))


def test_fp8_dequant_rejects_bad_inputs() -> None:
    w, s = quantize_fp8(torch.randn(130, 200))
    w, s = w.to(DEVICE), s.to(DEVICE)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        dequantize_fp8_triton(w.view(torch.uint8), s)
    with pytest.raises(ValueError, match=r"must be torch\.float32"):
        dequantize_fp8_triton(w, s.double())
    with pytest.raises(ValueError, match=r"expected \(2, 2\)"):
        dequantize_fp8_triton(w, s[:1])
    with pytest.raises(ValueError, match="dtype must be one of"):
        dequantize_fp8_triton(w, s, dtype=torch.int8)
    with pytest.raises(ValueError, match="out must be"):
        dequantize_fp8_triton(w, s, out=torch.empty(130, 200, device=DEVICE))


# ---- benchmark helpers and scripts/gpu_check.sh ---------------------------------------------------------------
def test_bench_helpers_run_on_tiny_shapes() -> None:
    r = bench_int4_grouped(64, 32, 3, experts=2, iters=1, device=DEVICE, blocks=SMALL_BLOCKS, min_pool_bytes=0)
    assert r["pool_slots"] == 2 and all(float(r[k]) > 0 for k in ("gate_gbs", "down_gbs", "ffn_gbs", "ffn_us"))
    assert float(r["gate_err"]) <= MATMUL_TOL[torch.bfloat16] and float(r["down_err"]) <= MATMUL_TOL[torch.bfloat16]
    assert float(r["ffn_err"]) <= FFN_TOL[torch.bfloat16]
    f = bench_fp8_dequant(70, 90, iters=1, device=DEVICE, dtype=torch.float16)
    assert float(f["gbs"]) > 0 and f["max_abs_diff"] == 0


@pytest.mark.skipif(CUDA, reason="with CUDA the script runs the whole check (minutes)")
def test_gpu_check_script_skips_without_cuda() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    script = ROOT / "scripts" / "gpu_check.sh"
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "no CUDA device" in r.stdout


# ---- CUDA at real shapes --------------------------------------------------------------------------------------
REAL_SHAPES = {"bench": (2048, 512), "k2.5": (7168, 2048)}  # (hidden, moe_intermediate)
REAL_SLOT = [3, -1, 0, 1, -1, 2, -1, -1]
REAL_GROUP_EXPERT = [0, 2, 5, 7, 3, 1]
REAL_TOKENS = [1, 8, 64, 0, 5, 3]  # expert 1 has no slot


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("kind", ["gate", "down"])
@pytest.mark.parametrize("shape", list(REAL_SHAPES), ids=str)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_int4_grouped_matmul_real_shapes(shape: str, kind: str, dtype: torch.dtype) -> None:
    hidden, inter = REAL_SHAPES[shape]
    out_f, in_f = (inter, hidden) if kind == "gate" else (hidden, inter)
    gen = torch.Generator().manual_seed(8)
    pool = random_pool(4, out_f, in_f, DEVICE, gen)
    idx, n = index(REAL_SLOT, REAL_GROUP_EXPERT, REAL_TOKENS), sum(REAL_TOKENS)
    x = signed_rand(n, in_f, dtype=dtype, gen=gen)
    y = int4_grouped_matmul(x, *pool, *idx, out=torch.full((n, out_f), float("nan"), device=DEVICE))
    ref = int4_grouped_matmul_ref(x, *pool, *idx)
    check_grouped(y, ref, unwritten_rows(REAL_SLOT, REAL_GROUP_EXPERT, REAL_TOKENS, n), MATMUL_TOL[dtype])


@pytest.mark.parametrize("shape", list(REAL_SHAPES), ids=str)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_int4_grouped_ffn_real_shapes(shape: str) -> None:
    hidden, inter = REAL_SHAPES[shape]
    gen = torch.Generator().manual_seed(9)
    gate, up = random_pool(4, inter, hidden, DEVICE, gen), random_pool(4, inter, hidden, DEVICE, gen)
    down: SlotPool = random_pool(4, hidden, inter, DEVICE, gen)
    idx, n = index(REAL_SLOT, REAL_GROUP_EXPERT, REAL_TOKENS), sum(REAL_TOKENS)
    x = signed_rand(n, hidden, dtype=torch.bfloat16, gen=gen)
    y = int4_grouped_ffn(x, gate, up, down, *idx, out=torch.full((n, hidden), float("nan"), device=DEVICE))
    ref = int4_grouped_ffn_ref(x, gate, up, down, *idx)
    check_grouped(y, ref, unwritten_rows(REAL_SLOT, REAL_GROUP_EXPERT, REAL_TOKENS, n), FFN_TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_fp8_dequant_real_shape(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(10)
    w, scale_inv = quantize_fp8(torch.randn(7168, 2048, generator=gen))
    w, scale_inv = w.to(DEVICE), scale_inv.to(DEVICE)
    y = dequantize_fp8_triton(w, scale_inv, dtype=dtype)
    torch.testing.assert_close(y, dequantize_fp8(w, scale_inv, dtype=dtype), rtol=0, atol=0)
