"""The native ggml CPU kernel (kernels/cpu_ggml.py, csrc/ggml_cpu.cpp) against its NumPy references, every type,
both builds this CPU runs (AVX2, AVX-512 VNNI), odd shapes, T in {1, 3, 8, 33}.

Three checks per result: the kernel's decoding equals the reference dequantization bit for bit; its output equals
the reference computation on int8-rounded activations (`*_int8_ref`) to float rounding; and it is within the
error int8 activations can cause at most (`activation_error_bound`) of the float computation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels import cpu_ggml
from kernels.cpu_ggml import (
    activation_error_bound,
    ggml_decode_native,
    ggml_grouped_ffn_cpu,
    ggml_grouped_ffn_int8_ref,
    ggml_linear_cpu,
    ggml_linear_int8_ref,
    ggml_linear_ref,
)
from kernels.dequant import StoredWeight
from kernels.formats import GGML_BLOCKS
from kernels.ggml import dequantize_ggml_ref
from kernels.ggml_random import random_ggml_blocks
from kernels.native import best_isa, cpu_flags
from tests.conftest import REQUIRE_NATIVE

TYPES = sorted(GGML_BLOCKS)
ISAS = ["avx2"] + (["avx512vnni"] if best_isa(cpu_flags()) == "avx512vnni" else [])
TOKENS = [1, 3, 8, 33]


@pytest.fixture(scope="module", params=ISAS)
def isa(request: pytest.FixtureRequest) -> str:
    if cpu_ggml.native_build(request.param) is None:
        if __import__("os").environ.get(REQUIRE_NATIVE) == "1":
            pytest.fail(f"{REQUIRE_NATIVE}=1 but the ggml CPU kernel ({request.param}) did not build")
        pytest.skip("the ggml CPU kernel is not available here (no C++ compiler, or no AVX2/FMA/F16C)")
    return str(request.param)


def width(fmt: str, blocks: int) -> int:
    """An input width of `blocks` blocks of `fmt` (odd counts exercise the kernel's 32-wide tail)."""
    return GGML_BLOCKS[fmt][0] * blocks


def weight(fmt: str, rows: int, in_f: int, seed: int) -> tuple[StoredWeight, np.ndarray]:
    data = random_ggml_blocks(fmt, rows, in_f, np.random.default_rng(seed))
    return StoredWeight(fmt, (rows, in_f), {"data": torch.from_numpy(data)}), data


def activations(t: int, in_f: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, in_f, generator=g) * torch.exp(torch.randn(t, 1, generator=g))  # rows of different scales
    x[0, :32] = 0.0  # an all-zero block: scale 0
    return x


@pytest.mark.parametrize("fmt", TYPES)
def test_decoding_is_the_reference_dequantization(isa: str, fmt: str) -> None:
    """Codes, scales and minimums give the reference's weights: exactly for signed codes (w = scale * q), to one
    float32 rounding where an offset is folded into the minimum (w = scale * q - min, q unsigned)."""
    w, data = weight(fmt, 7, width(fmt, 3), seed=1)
    got = ggml_decode_native(w, isa).numpy()
    ref = dequantize_ggml_ref(data, fmt, w.shape[1])
    np.testing.assert_allclose(got, ref, rtol=0, atol=2.0**-22 * float(np.abs(ref).max()))
    if fmt in ("q8_0", "mxfp4") or fmt.startswith("iq"):
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("t", TOKENS)
@pytest.mark.parametrize("fmt", TYPES)
def test_linear_is_the_int8_reference_and_within_the_activation_bound(isa: str, fmt: str, t: int) -> None:
    blocks = 3 if GGML_BLOCKS[fmt][0] == 256 else 9
    w, data = weight(fmt, 37, width(fmt, blocks), seed=2)  # 37 rows: whole 4-row tiles and a tail of 1
    x = activations(t, w.shape[1], seed=3)
    y = ggml_linear_cpu(x, w, out=torch.full((t, 37), float("nan")), isa=isa).numpy().astype(np.float64)
    dense = dequantize_ggml_ref(data, fmt, w.shape[1]).astype(np.float64)
    block = cpu_ggml.activation_block(fmt)  # the K- and IQ-types meet activations per 256, the others per 32
    scale = np.abs(cpu_ggml.quantize_activations_ref(x.numpy(), block)) @ np.abs(dense).T  # sum |x_i w_i| [T, out]
    np.testing.assert_array_less(
        np.abs(y - ggml_linear_int8_ref(x.numpy(), data, fmt, w.shape[1])), 1e-5 * scale + 1e-30
    )
    exact = ggml_linear_ref(x.numpy(), data, fmt, w.shape[1]).astype(np.float64)
    bound = activation_error_bound(x.numpy(), dense, block)
    np.testing.assert_array_less(np.abs(y - exact), bound * (1 + 1e-4) + 1e-5 * scale + 1e-30)


def test_the_bound_is_not_vacuous(isa: str) -> None:
    """A weight decoded with a wrong scale fails the checks above: the int8 error is far below the signal."""
    w, data = weight("q4_0", 64, 1024, seed=4)
    x = activations(8, 1024, seed=5)
    exact = ggml_linear_ref(x.numpy(), data, "q4_0", 1024)
    bound = activation_error_bound(x.numpy(), dequantize_ggml_ref(data, "q4_0", 1024))
    y = ggml_linear_cpu(x, w, isa=isa).numpy()
    assert float(np.median(bound / np.abs(exact).clip(1e-30))) < 0.25
    assert float(np.abs(y - exact).max()) < 0.1 * float(np.abs(exact).max())


def test_builds_agree_bit_for_bit() -> None:
    """AVX2 and AVX-512 VNNI sum the same integers: their results differ by float summation order only."""
    if len(ISAS) < 2 or None in (cpu_ggml.native_build(i) for i in ISAS):
        pytest.skip("this CPU runs one build only")
    w, _ = weight("q6_k", 21, 768, seed=6)
    x = activations(5, 768, seed=7)
    a, b = (ggml_linear_cpu(x, w, isa=i) for i in ISAS)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max()))


def test_thread_count_does_not_change_the_result(isa: str) -> None:
    w, _ = weight("q4_k", 50, 512, seed=8)
    x = activations(33, 512, seed=9)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ggml_linear_cpu(x, w, isa=isa)
        torch.set_num_threads(2)
        two = ggml_linear_cpu(x, w, isa=isa)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


# ---- a MoE layer in one call ---------------------------------------------------------------------------------------
# (gate, up, down) types as llama.cpp's mixes put them: Q4_K_M keeps down a size up, the IQ mixes do the reverse
MIXES = [
    ("q4_0", "q4_0", "q4_0"),
    ("q4_k", "q4_k", "q6_k"),
    ("q2_k", "q2_k", "q3_k"),
    ("iq1_m", "iq1_m", "iq2_xxs"),
    ("q8_0", "q8_0", "q8_0"),
    ("iq4_xs", "iq3_s", "iq2_s"),
]


def experts(mix: tuple[str, str, str], n: int, d: int, i: int, seed: int) -> dict[int, cpu_ggml.GgmlExpert]:
    rng = np.random.default_rng(seed)
    out = {}
    for e in range(n):
        g, u, dn = (
            StoredWeight(f, shape, {"data": torch.from_numpy(random_ggml_blocks(f, shape[0], shape[1], rng))})
            for f, shape in zip(mix, ((i, d), (i, d), (d, i)), strict=True)
        )
        out[e] = (g, u, dn)
    return out


def dense(ex: cpu_ggml.GgmlExpert) -> tuple[np.ndarray, ...]:
    return tuple(dequantize_ggml_ref(w.parts["data"].numpy(), w.fmt, w.shape[1]) for w in ex)


@pytest.mark.parametrize("t", TOKENS)
@pytest.mark.parametrize("mix", MIXES, ids=["-".join(m) for m in MIXES])
def test_grouped_ffn_is_the_int8_reference(isa: str, mix: tuple[str, str, str], t: int) -> None:
    d, i, n = 512, 256, 6
    bank = experts(mix, n, d, i, seed=10)
    present = {e: bank[e] for e in (0, 1, 2, 4, 5)}  # expert 3 runs elsewhere
    g = torch.Generator().manual_seed(11)
    x = torch.randn(t, d, generator=g) * 0.05
    ids = torch.stack([torch.randperm(n, generator=g)[:3] for _ in range(t)])  # [T, 3] distinct
    wts = torch.rand(t, 3, generator=g)
    y = ggml_grouped_ffn_cpu(x, ids, wts, present, out=torch.full((t, d), float("nan")), isa=isa).numpy()
    blocks = tuple(cpu_ggml.activation_block(f) for f in mix)
    ref = ggml_grouped_ffn_int8_ref(
        x.numpy(), ids.numpy(), wts.numpy(), {e: dense(ex) for e, ex in present.items()}, blocks  # type: ignore[arg-type]
    )
    # float32 against float64, and an intermediate that may round to the other int8 code at a near-tie
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-3 * float(np.abs(ref).max()))
    assert float(np.abs(y - ref).mean()) < 1e-4 * float(np.abs(ref).max())


@pytest.mark.parametrize("mix", MIXES, ids=["-".join(m) for m in MIXES])
def test_decode_token_with_checked_experts_takes_the_same_sums(isa: str, mix: tuple[str, str, str]) -> None:
    """One token with checked experts (a decode step's call: its arguments go over as ctypes arrays) gives what the
    general path gives, bit for bit, and the int8 reference; absent experts and bad ids are handled the same."""
    d, i, n = 512, 256, 6
    bank = experts(mix, n, d, i, seed=13)
    present = {e: bank[e] for e in (0, 2, 3, 5)}
    checked = {e: cpu_ggml.check_expert(ex, d) for e, ex in present.items()}
    g = torch.Generator().manual_seed(14)
    x = torch.randn(1, d, generator=g) * 0.05
    ids = torch.tensor([[5, 1, 0, 3]])  # 1 runs elsewhere
    wts = torch.rand(1, 4, generator=g)
    fast = ggml_grouped_ffn_cpu(x, ids, wts, checked, isa=isa)
    general = ggml_grouped_ffn_cpu(x, ids, wts, present, isa=isa)
    assert torch.equal(fast, general)
    blocks = tuple(cpu_ggml.activation_block(f) for f in mix)
    ref = ggml_grouped_ffn_int8_ref(
        x.numpy(), ids.numpy(), wts.numpy(), {e: dense(ex) for e, ex in present.items()}, blocks  # type: ignore[arg-type]
    )
    np.testing.assert_allclose(fast.numpy(), ref, rtol=0, atol=2e-3 * float(np.abs(ref).max()))
    out = torch.full((1, d), float("nan"))
    assert ggml_grouped_ffn_cpu(x, ids, wts, checked, out=out, isa=isa) is out and torch.equal(out, fast)
    assert torch.equal(ggml_grouped_ffn_cpu(x, torch.tensor([[1, 4]]), wts[:, :2], checked, isa=isa), torch.zeros(1, d))
    with pytest.raises(ValueError, match="ids lists an expert twice"):
        ggml_grouped_ffn_cpu(x, torch.tensor([[0, 0]]), wts[:, :2], checked, isa=isa)
    with pytest.raises(ValueError, match="out shares memory with x"):
        ggml_grouped_ffn_cpu(x, ids, wts, checked, out=x, isa=isa)
    other = "q8_0" if mix[0] != "q8_0" else "q4_0"  # one expert of other types: the general path's error
    odd = cpu_ggml.check_expert(experts((other, other, other), 1, d, i, seed=15)[0], d)
    with pytest.raises(ValueError, match="differ from"):
        ggml_grouped_ffn_cpu(x, ids, wts, {**checked, 3: odd}, isa=isa)


def test_grouped_ffn_edge_cases_and_errors(isa: str) -> None:
    bank = experts(("q4_k", "q4_k", "q6_k"), 3, 256, 256, seed=12)
    x = torch.randn(4, 256) * 0.1
    ids = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 2]])
    wts = torch.rand(4, 2)
    assert torch.equal(ggml_grouped_ffn_cpu(x, ids, wts, {}, isa=isa), torch.zeros(4, 256))  # all elsewhere
    assert ggml_grouped_ffn_cpu(x[:0], ids[:0], wts[:0], bank, isa=isa).shape == (0, 256)
    with pytest.raises(ValueError, match="ids lists an expert twice"):
        ggml_grouped_ffn_cpu(x, torch.tensor([[0, 0]] * 4), wts, bank, isa=isa)
    with pytest.raises(ValueError, match="ids: expected a torch.int64"):
        ggml_grouped_ffn_cpu(x, ids.int(), wts, bank, isa=isa)
    with pytest.raises(ValueError, match="out shares memory with x"):
        ggml_grouped_ffn_cpu(x, ids, wts, bank, out=x, isa=isa)
    other = dict(bank)
    other[2] = experts(("q4_0", "q4_0", "q4_0"), 1, 256, 256, seed=13)[0]
    with pytest.raises(ValueError, match=r"experts\[2\]: types \['q4_0', 'q4_0', 'q4_0'\] differ"):
        ggml_grouped_ffn_cpu(x, ids, wts, other, isa=isa)
    narrow = dict(bank)
    narrow[1] = experts(("q4_k", "q4_k", "q6_k"), 1, 512, 256, seed=14)[0]
    with pytest.raises(ValueError, match=r"experts\[1\] gate: expected 256 input features"):
        ggml_grouped_ffn_cpu(x, ids, wts, narrow, isa=isa)


def test_checked_experts_are_the_same_experts(isa: str) -> None:
    """Experts checked once (as the CPU executor caches them) give the same output as plain tuples, and a checked
    expert of another width or type is still refused."""
    d, i = 256, 256
    bank = experts(("q4_k", "q4_k", "q6_k"), 3, d, i, seed=30)
    checked = {e: cpu_ggml.check_expert(ex, d) for e, ex in bank.items()}
    x = torch.randn(2, d) * 0.1
    ids, wts = torch.tensor([[0, 2], [1, 0]]), torch.rand(2, 2)
    assert torch.equal(
        ggml_grouped_ffn_cpu(x, ids, wts, checked, isa=isa), ggml_grouped_ffn_cpu(x, ids, wts, bank, isa=isa)
    )
    wide = experts(("q4_k", "q4_k", "q6_k"), 1, 512, i, seed=31)[0]
    with pytest.raises(ValueError, match=r"experts\[1\]: hidden size 512, x has 256"):
        ggml_grouped_ffn_cpu(x, ids, wts, {**checked, 1: cpu_ggml.check_expert(wide, 512)}, isa=isa)
    other = cpu_ggml.check_expert(experts(("q4_0", "q4_0", "q4_0"), 1, d, i, seed=32)[0], d)
    with pytest.raises(ValueError, match=r"experts\[2\]: types \['q4_0', 'q4_0', 'q4_0'\] differ"):
        ggml_grouped_ffn_cpu(x, ids, wts, {**checked, 2: other}, isa=isa)
    with pytest.raises(ValueError, match=r"layer 3 expert 7 down: expected shape \(256, 256\)"):
        cpu_ggml.check_expert((bank[0][0], bank[0][1], wide[2]), d, "layer 3 expert 7")


def test_linear_errors(isa: str) -> None:
    w, _ = weight("q4_k", 8, 256, seed=15)
    with pytest.raises(ValueError, match=r"x: expected a contiguous float32 CPU tensor \[\*, 256\]"):
        ggml_linear_cpu(torch.randn(2, 256, dtype=torch.bfloat16), w, isa=isa)
    with pytest.raises(ValueError, match=r"x: expected a contiguous float32 CPU tensor \[\*, 256\], got .* \[2, 128\]"):
        ggml_linear_cpu(torch.randn(2, 128), w, isa=isa)
    cut = StoredWeight("q4_k", (8, 256), {"data": w.parts["data"][:, :100]})
    with pytest.raises(
        ValueError, match=r"w: q4_k data must be uint8 \[8, 144\] on the CPU, got torch.uint8 \[8, 100\]"
    ):
        ggml_linear_cpu(torch.randn(2, 256), cut, isa=isa)
    with pytest.raises(ValueError, match="the ggml kernel reads ggml types; this weight is bf16"):
        ggml_linear_cpu(torch.randn(2, 256), StoredWeight("bf16", (8, 256), {"weight": torch.zeros(8, 256)}), isa=isa)


# ---- the fallback ---------------------------------------------------------------------------------------------------
def test_fallback_without_compiler(no_compiler: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kernels.cpu_ggml"):
        assert cpu_ggml.native_build() is None
    assert "using the slower torch path" in caplog.text
    w, data = weight("q5_k", 9, 256, seed=16)
    x = activations(3, 256, seed=17)
    np.testing.assert_allclose(
        ggml_linear_cpu(x, w).numpy(),
        ggml_linear_ref(x.numpy(), data, "q5_k", 256),
        rtol=1e-4,
        atol=1e-4 * float(np.abs(x.numpy()).max()),
    )
    bank = experts(("q4_k", "q4_k", "q6_k"), 2, 256, 256, seed=18)
    ids, wts = torch.tensor([[0, 1], [1, 0]]), torch.rand(2, 2)
    xs = x[:2] * 0.05
    from kernels.ffn import grouped_ffn_ref

    ref = grouped_ffn_ref(xs.numpy(), ids.numpy(), wts.numpy(), {e: dense(ex) for e, ex in bank.items()})
    np.testing.assert_allclose(
        ggml_grouped_ffn_cpu(xs, ids, wts, bank).numpy(), ref, rtol=1e-3, atol=1e-4 * float(np.abs(ref).max())
    )


def test_one_openmp_runtime_in_the_process(isa: str) -> None:
    """torch's libgomp is the kernels' too: one thread pool, no two runtimes spinning against each other."""
    from kernels import cpu_int4
    from kernels.native import openmp_runtimes

    cpu_int4.native_build()
    w, _ = weight("q4_0", 8, 256, seed=19)
    ggml_linear_cpu(activations(2, 256, seed=20), w, isa=isa)
    torch.randn(64, 64) @ torch.randn(64, 64)
    runtimes = openmp_runtimes()
    assert len(runtimes) == 1 and "libgomp" in runtimes[0], runtimes


# ---- --cpu-weights int8: float Linears encoded as Q8_0 ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_q8_0_encoding_is_ggmls(dtype: torch.dtype) -> None:
    """Bit for bit what gguf.quants.quantize (ggml's quantize_row_q8_0) makes, zero blocks and ties included."""
    import gguf

    from kernels.ggml_encode import quantize_q8_0

    g = torch.Generator().manual_seed(21)
    w = (torch.randn(67, 192, generator=g) * torch.exp(torch.randn(67, 1, generator=g))).to(dtype)
    w[3, :32] = 0.0
    w[4, :32] = torch.arange(32) - 15.5  # x / d lands on halves
    got = quantize_q8_0(w).numpy()
    want = gguf.quants.quantize(w.float().numpy(), gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(got, want.reshape(got.shape))
    with pytest.raises(ValueError, match=r"Q8_0 encodes float \[out, in\] with in a multiple of 32"):
        quantize_q8_0(w[:, :40])


def test_cpu_weights_int8_runs_the_linears_through_the_kernel(mini_k25: Path, isa: str) -> None:
    """An INT4 safetensors checkpoint with --cpu-weights int8: its bf16 Linears (but kv_b) become Q8_0 QuantLinears.
    Against the float32 model, the prompt pass picks the same token and its logits move at most 3x as far as bf16
    alone moves them (random weights: bf16 moves them ~7% of the largest logit, int8 ~14%)."""
    from offload.engine.engine import Engine
    from offload.model.linear import QuantLinear
    from offload.planner.plan import RuntimeConfig

    out = {}
    for name, rt in (
        ("f32", RuntimeConfig(device="cpu", dtype="float32", context=256)),
        ("bf16", RuntimeConfig(device="cpu", context=256)),
        ("int8", RuntimeConfig(device="cpu", cpu_weights="int8", context=256)),
    ):
        with Engine(mini_k25, rt) as engine:
            m = engine.model
            assert isinstance(m.blocks[0].attn.w.o, QuantLinear) == (name == "int8")
            assert isinstance(m.blocks[0].attn.w.kv_b, torch.Tensor)
            out[name] = m.forward(torch.tensor([5, 6, 7, 8, 9]), 0, m.new_cache(32), last_only=True)[0].float()
    ref = out["f32"]
    assert int(out["int8"].argmax()) == int(out["bf16"].argmax()) == int(ref.argmax())
    assert float((out["int8"] - ref).abs().max()) <= 3 * float((out["bf16"] - ref).abs().max())
