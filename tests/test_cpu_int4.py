"""The CPU INT4 paths (kernels/cpu_int4.py) against the NumPy reference on random odd-sized inputs.

Packed words are random int32 (every nibble value, sign bit included), scales random positive bf16, activations
random and never zero; shapes have `out` off the kernel's 4-row tile and 64-row chunk and `in` an odd number of
32-column groups (a half 64-column block at the end). Outputs are poisoned with NaN before each call that writes
into a buffer.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from kernels import cpu_int4
from kernels.cpu_int4 import (
    int4_expert_ffn_cpu,
    int4_grouped_ffn_cpu,
    int4_linear_cpu,
    int4_linear_int4pack,
    int4_linear_native,
    int4_linear_numpy,
    int4_linear_ref,
    int4_linear_torch,
    to_int4pack,
)
from kernels.ffn import expert_ffn_ref, grouped_ffn_ref
from kernels.int4 import dequantize_int4_ref
from tests.harness import random_int4, random_int4_expert

# float32 paths, relative to the output's scale (max |reference|): sums of up to 2048 products in float32
ATOL_F32 = 2e-6
# torch's int4 kernel rounds the activations and its output to bf16 (8 bits of mantissa)
ATOL_BF16 = 1e-2

OUT_SIZES = (1, 5, 67, 130)
IN_SIZES = (32, 96, 160, 288)  # 1, 3, 5, 9 groups of 32: a half 64-column block; 288 also has a 256-column run
TOKENS = (1, 3, 8, 33)


def _x(t: int, d: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    x = (torch.rand(t, d, generator=g) + 0.05) * torch.sign(torch.rand(t, d, generator=g) - 0.5)
    return x * scale  # |x| in [0.05, 1.05) * scale, never zero


def _dense(packed: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    return dequantize_int4_ref(packed.numpy(), scale.float().numpy(), packed.shape[1] * 8)


def _close(got: torch.Tensor, ref: np.ndarray, atol: float = ATOL_F32) -> None:
    assert got.dtype == torch.float32 and tuple(got.shape) == ref.shape, (got.dtype, got.shape, ref.shape)
    tol = atol * max(float(np.abs(ref).max(initial=0.0)), 1e-30)
    err = float(np.abs(got.numpy().astype(np.float64) - ref).max(initial=0.0))
    assert np.isfinite(got.numpy()).all() and err <= tol, f"max error {err:.3g} > {tol:.3g}"


# ---- one Linear --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out_f", OUT_SIZES)
@pytest.mark.parametrize("in_f", IN_SIZES)
def test_linear_candidates(out_f: int, in_f: int, native: None) -> None:
    g = torch.Generator().manual_seed(out_f * 1000 + in_f)
    packed, scale = random_int4(out_f, in_f, g)
    for t in TOKENS:
        x = _x(t, in_f, g)
        ref = int4_linear_ref(x.numpy(), packed.numpy(), scale.float().numpy())
        _close(int4_linear_numpy(x, packed, scale), ref)
        for fn in (int4_linear_native, int4_linear_torch, int4_linear_cpu):
            _close(fn(x, packed, scale, out=torch.full((t, out_f), float("nan"))), ref)
            _close(fn(x, packed, scale), ref)


def test_reference_is_the_definition() -> None:
    """int4_linear_ref is x @ W.T with W from the format's own reference dequantization."""
    g = torch.Generator().manual_seed(1)
    packed, scale = random_int4(7, 96, g)
    x = _x(2, 96, g)
    want = x.double().numpy() @ _dense(packed, scale).astype(np.float64).T
    np.testing.assert_allclose(int4_linear_ref(x.numpy(), packed.numpy(), scale.float().numpy()), want, rtol=1e-6)


@pytest.mark.parametrize(("out_f", "in_f"), [(48, 96), (144, 288), (16, 32)])
def test_torch_int4pack_candidate(out_f: int, in_f: int) -> None:
    g = torch.Generator().manual_seed(out_f + in_f)
    packed, scale = random_int4(out_f, in_f, g)
    w, sz = to_int4pack(packed, scale)
    for t in TOKENS:
        x = _x(t, in_f, g)
        ref = int4_linear_ref(x.numpy(), packed.numpy(), scale.float().numpy())
        _close(int4_linear_int4pack(x, w, sz), ref, ATOL_BF16)


def test_linear_real_width(native: None) -> None:
    """K2.5's down-projection width (in = 2048: long 256-column runs) with a row count off every tile."""
    g = torch.Generator().manual_seed(2)
    packed, scale = random_int4(515, 2048, g)
    for t in (1, 2, 4, 7):
        x = _x(t, 2048, g)
        _close(
            int4_linear_native(x, packed, scale, out=torch.full((t, 515), float("nan"))),
            int4_linear_ref(x.numpy(), packed.numpy(), scale.float().numpy()),
        )


def test_zero_tokens(native: None) -> None:
    packed, scale = random_int4(5, 96, torch.Generator().manual_seed(3))
    x = torch.empty(0, 96)
    for fn in (int4_linear_native, int4_linear_torch, int4_linear_cpu):
        assert fn(x, packed, scale).shape == (0, 5)
    assert int4_expert_ffn_cpu(x, *random_int4_expert(96, 64, torch.Generator())).shape == (0, 96)


def test_linear_views_over_a_buffer(native: None) -> None:
    """The kernel reads tensors that are views over someone else's bytes (as over an mmap of a shard)."""
    g = torch.Generator().manual_seed(4)
    packed, scale = random_int4(67, 160, g)
    blob = bytearray(8) + packed.numpy().tobytes() + scale.view(torch.int16).numpy().tobytes()
    p = torch.frombuffer(blob, dtype=torch.int32, offset=8, count=packed.numel()).view(67, 20)
    s = torch.frombuffer(blob, dtype=torch.bfloat16, offset=8 + 4 * packed.numel(), count=scale.numel()).view(67, 5)
    x = _x(3, 160, g)
    _close(int4_linear_cpu(x, p, s), int4_linear_ref(x.numpy(), packed.numpy(), scale.float().numpy()))


def _bad_cases() -> list[tuple[str, dict[str, object], str]]:
    g = torch.Generator().manual_seed(5)
    p, s = random_int4(5, 96, g)
    x = _x(2, 96, g)
    return [
        ("packed dtype", {"packed": p.to(torch.int64)}, r"packed: expected dtype torch\.int32, got torch\.int64"),
        ("scale dtype", {"scale": s.float()}, r"scale: expected dtype torch\.bfloat16, got torch\.float32"),
        ("scale shape", {"scale": s[:, :2].contiguous()}, r"scale: expected shape \[5, 3\], got \[5, 2\]"),
        ("x width", {"x": x[:, :64].contiguous()}, r"x: expected shape \[\*, 96\], got \[2, 64\]"),
        ("x dtype", {"x": x.double()}, r"x: expected dtype torch\.float32, got torch\.float64"),
        ("x rank", {"x": x[0]}, r"x: expected shape \[\*, 96\], got \[96\]"),
        ("packed strided", {"packed": torch.ones(12, 5, dtype=torch.int32).t()}, r"packed: expected a contiguous"),
        ("in not k*32", {"packed": p[:, :3].contiguous()}, r"in = 8 \* 3 = 24 is not a positive multiple of 32"),
        ("out", {"out": torch.empty(2, 4)}, r"out: expected shape \[2, 5\], got \[2, 4\]"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_inputs_raise(case: tuple[str, dict[str, object], str], native: None) -> None:
    _, change, match = case
    g = torch.Generator().manual_seed(5)
    p, s = random_int4(5, 96, g)
    args: dict[str, object] = {"x": _x(2, 96, g), "packed": p, "scale": s, **change}
    for fn in (int4_linear_native, int4_linear_torch, int4_linear_cpu):
        with pytest.raises(ValueError, match=match):
            fn(**args)  # type: ignore[arg-type]


# ---- experts -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("d", "i"), [(96, 160), (288, 96), (160, 32), (256, 200 - 8)])
def test_expert_ffn(d: int, i: int, native: None) -> None:
    g = torch.Generator().manual_seed(d + i)
    expert = random_int4_expert(d, i, g)
    dense = [_dense(*lin) for lin in expert]
    for t in TOKENS:
        x = _x(t, d, g, 0.2)
        ref = expert_ffn_ref(x.numpy(), *dense)
        _close(int4_expert_ffn_cpu(x, *expert, out=torch.full((t, d), float("nan"))), ref)
        _close(int4_expert_ffn_cpu(x, *expert), ref)


def test_expert_ffn_bad_shapes() -> None:
    g = torch.Generator().manual_seed(6)
    gate, up, down = random_int4_expert(96, 64, g)
    x = _x(1, 96, g)
    with pytest.raises(ValueError, match=r"up packed: expected shape \[64, 12\] like gate, got \[32, 12\]"):
        int4_expert_ffn_cpu(x, gate, random_int4(32, 96, g), down)
    with pytest.raises(ValueError, match=r"down packed: expected shape \[\*, 8\], got \[96, 4\]"):
        int4_expert_ffn_cpu(x, gate, up, random_int4(96, 32, g))
    with pytest.raises(ValueError, match=r"down packed: expected shape \[96, 8\], got \[64, 8\]"):
        int4_expert_ffn_cpu(x, gate, up, random_int4(64, 64, g))
    with pytest.raises(ValueError, match=r"gate scale: expected dtype torch\.bfloat16"):
        int4_expert_ffn_cpu(x, (gate[0], gate[1].half()), up, down)


def test_grouped_ffn(native: None) -> None:
    """Tokens gathered per expert; an expert with no tokens; a routed expert absent from the mapping is skipped."""
    g = torch.Generator().manual_seed(7)
    d, i, n_tok, k = 96, 160, 9, 3
    experts = {e: random_int4_expert(d, i, g) for e in (0, 2, 3, 5)}  # 5 gets no tokens
    ids = torch.tensor(
        [[0, 2, 3], [2, 0, 4], [3, 4, 0], [0, 2, 3], [4, 3, 2], [2, 3, 0], [0, 3, 2], [3, 0, 4], [2, 4, 0]]
    )
    weights = torch.rand(n_tok, k, generator=g) + 0.1
    x = _x(n_tok, d, g, 0.2)
    dense = {e: tuple(_dense(*lin) for lin in ex) for e, ex in experts.items()}
    dense[4] = tuple(np.zeros_like(m) for m in dense[0])  # absent: contributes nothing
    ref = grouped_ffn_ref(x.numpy(), ids.numpy(), weights.numpy(), dense)
    _close(int4_grouped_ffn_cpu(x, ids, weights, experts, out=torch.full((n_tok, d), float("nan"))), ref)
    _close(int4_grouped_ffn_cpu(x[:1], ids[:1], weights[:1], experts), ref[:1])
    assert int4_grouped_ffn_cpu(x[:0], ids[:0], weights[:0], experts).shape == (0, d)
    with pytest.raises(ValueError, match=r"ids: expected a torch\.int64 CPU tensor \[9, k\], got torch\.int32"):
        int4_grouped_ffn_cpu(x, ids.int(), weights, experts)
    with pytest.raises(ValueError, match=r"weights: expected shape \[9, 3\], got \[9, 2\]"):
        int4_grouped_ffn_cpu(x, ids, weights[:, :2].contiguous(), experts)


@pytest.mark.parametrize(("d", "i"), [(96, 160), (256, 64), (2048, 512)])
def test_decode_with_int8_activations_is_the_int8_reference(d: int, i: int, native: None) -> None:
    """One decode token through the int8-activation kernel (the ggml library's): what the grouped int8 reference
    computes on the dequantized weights, to float rounding; absent experts skipped; the same on 1 and 2 threads."""
    from kernels.cpu_ggml import ggml_grouped_ffn_int8_ref, native_build
    from kernels.cpu_int4 import int4_grouped_ffn_q8_cpu

    if native_build() is None:
        pytest.skip("the ggml library does not build here")
    g = torch.Generator().manual_seed(d + i)
    experts = {e: random_int4_expert(d, i, g) for e in (0, 1, 3, 6)}
    ids = torch.tensor([[6, 0, 4, 3]])  # 4 runs elsewhere
    weights = torch.rand(1, 4, generator=g) + 0.1
    x = _x(1, d, g, 0.2)
    dense = {e: tuple(_dense(*lin) for lin in ex) for e, ex in experts.items()}
    ref = ggml_grouped_ffn_int8_ref(x.numpy(), ids.numpy(), weights.numpy(), dense)
    got = int4_grouped_ffn_q8_cpu(x, ids, weights, experts)
    assert got is not None
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=2e-3 * float(np.abs(ref).max()))
    # int8 activations move the result by far less than the float kernel's tolerance to the float definition
    absent = {**dense, 4: tuple(np.zeros_like(m) for m in dense[0])}
    exact = grouped_ffn_ref(x.numpy(), ids.numpy(), weights.numpy(), absent)
    assert float(np.abs(got.numpy() - exact).max()) < 0.05 * float(np.abs(ref).max())
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = int4_grouped_ffn_q8_cpu(x, ids, weights, experts)
    finally:
        torch.set_num_threads(n)
    assert one is not None and torch.equal(one, got)
    none = int4_grouped_ffn_q8_cpu(x, torch.tensor([[4, 5]]), weights[:, :2].contiguous(), experts)
    assert none is not None and torch.equal(none, torch.zeros(1, d))
    with pytest.raises(ValueError, match=r"x: expected shape \[1, \*\]"):
        int4_grouped_ffn_q8_cpu(_x(2, d, g), ids.expand(2, 4).contiguous(), weights.expand(2, 4).contiguous(), experts)


# ---- the fallback ------------------------------------------------------------------------------------------------
def test_fallback_without_compiler(no_compiler: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kernels.cpu_int4"):
        assert cpu_int4.native_build() is None
    assert "using the slower torch path" in caplog.text and "failed" in caplog.text
    g = torch.Generator().manual_seed(8)
    packed, scale = random_int4(67, 96, g)
    x = _x(3, 96, g)
    _close(
        int4_linear_cpu(x, packed, scale, out=torch.full((3, 67), float("nan"))),
        int4_linear_ref(x.numpy(), packed.numpy(), scale.float().numpy()),
    )
    expert = random_int4_expert(96, 64, g)
    _close(int4_expert_ffn_cpu(x * 0.2, *expert), expert_ffn_ref((x * 0.2).numpy(), *(_dense(*lin) for lin in expert)))
    ids, weights = torch.tensor([[0, 1], [2, 0], [1, 0]]), torch.rand(3, 2, generator=g)
    bank = {0: expert, 1: random_int4_expert(96, 64, g)}  # 2 is absent
    dense = {e: tuple(_dense(*lin) for lin in ex) for e, ex in bank.items()}
    dense[2] = tuple(np.zeros_like(m) for m in dense[0])
    _close(
        int4_grouped_ffn_cpu(x * 0.2, ids, weights, bank),
        grouped_ffn_ref((x * 0.2).numpy(), ids.numpy(), weights.numpy(), dense),
    )
    with pytest.raises(RuntimeError, match="not available"):
        int4_linear_native(x, packed, scale)


def test_grouped_refuses_aliasing_and_repeated_experts():
    g = torch.Generator().manual_seed(9)
    d, i = 64, 32
    expert = random_int4_expert(d, i, g)
    x = torch.randn(3, d, generator=g)
    ids = torch.tensor([[0, 0], [0, 0], [0, 0]])
    with pytest.raises(ValueError, match="twice for one token"):
        cpu_int4.int4_grouped_ffn_cpu(x, ids, torch.ones(3, 2), {0: expert})
    with pytest.raises(ValueError, match="shares memory with x"):
        cpu_int4.int4_grouped_ffn_cpu(x, ids[:, :1].contiguous(), torch.ones(3, 1), {0: expert}, out=x)
    with pytest.raises(ValueError, match="positive multiple"):
        cpu_int4.int4_linear_cpu(
            torch.randn(2, 0), torch.zeros(3, 0, dtype=torch.int32), torch.zeros(3, 0, dtype=torch.bfloat16)
        )
