"""Weight formats against the compressed-tensors library and hand-built words: INT4 pack-quantized, FP8 block.

INT4: weight_packed int32 [out, in/8], column c in word c // 8 at bits 4*(c % 8).. (least significant nibble
first), nibble n encodes q = n - 8, W[r, c] = q[r, c] * weight_scale[r, c // group].
FP8: float8_e4m3fn weight, float32 weight_scale_inv [ceil(out/B0), ceil(in/B1)],
W = float(w) * scale_inv[r // B0, c // B1].

Everything is compared bit-exactly except the FP8 quantize -> dequantize round trip, bounded by the tolerances
below. Random inputs use fixed seeds and never contain zeros.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize
from compressed_tensors.quantization.utils import calculate_qparams

from kernels.fp8 import E4M3_MAX, dequantize_fp8, dequantize_fp8_ref, e4m3_to_float_ref, quantize_fp8
from kernels.int4 import (
    dequantize_int4,
    dequantize_int4_ref,
    pack_int4,
    pack_int4_ref,
    quantize_int4,
    quantize_int4_ref,
    unpack_int4,
    unpack_int4_ref,
)

# e4m3 keeps 3 mantissa bits: round-to-nearest is within 2^-4 of |x| for normal values ...
FP8_REL_TOL = 2.0**-4
# ... and within half the subnormal spacing (2^-9 / 2) in units of the block scale for subnormal ones.
FP8_SUBNORMAL_ABS_TOL = 2.0**-10

GROUP = 32
OUT_SIZES = (3, 5, 129)
IN_SIZES = (32, 96, 160)  # multiples of GROUP (and of 8) with an odd number of groups / words
SHAPES = [(o, i) for o in OUT_SIZES for i in IN_SIZES]
# (out, in, block): partial edge blocks in both dimensions, non-square blocks, a weight smaller than one block
FP8_CASES = [
    (130, 200, (128, 128)),
    (64, 96, (32, 64)),
    (3, 5, (128, 128)),
    (129, 160, (128, 128)),
    (5, 96, (2, 32)),
]


def bits_equal(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> None:
    """Bit-exact equality of two float32 (or integer) arrays: -0.0 != 0.0 and NaN payloads count."""
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    b = b.numpy() if isinstance(b, torch.Tensor) else b
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
    if a.dtype.kind == "f":
        a, b = a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}")
    np.testing.assert_array_equal(a, b)


def random_q(out_f: int, in_f: int, seed: int) -> torch.Tensor:
    """Random int8 q in [-8, 7] with both extremes present in every row."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-8, 8, size=(out_f, in_f), dtype=np.int8)
    q[:, 0], q[:, -1] = -8, 7
    q[-1, 1::2] = -8
    q[0, 1::3] = 7
    return torch.from_numpy(q)


def random_weight(out_f: int, in_f: int, seed: int) -> torch.Tensor:
    """float32 weight with values representable in bf16 (the checkpoints' source dtype) and no zeros."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.02
    w = torch.where(w == 0, torch.full_like(w, 1e-3), w)
    return w.to(torch.bfloat16).to(torch.float32)


def random_bf16_scale(out_f: int, n_groups: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(out_f, n_groups, generator=g) * 0.01 + 1e-4).to(torch.bfloat16)


def int4_scheme() -> QuantizationScheme:
    args = QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=GROUP, symmetric=True)
    return QuantizationScheme(targets=["Linear"], weights=args)


# ---- INT4: packing against compressed-tensors' pack_to_int32 / unpack_from_int32 ---------------------------
@pytest.mark.parametrize(("out_f", "in_f"), SHAPES)
def test_int4_unpack_matches_library_packing(out_f: int, in_f: int) -> None:
    q = random_q(out_f, in_f, seed=out_f * 1000 + in_f)
    packed = pack_to_int32(q, 4)
    assert packed.dtype == torch.int32 and packed.shape == (out_f, in_f // 8)
    bits_equal(unpack_int4(packed, in_f), q)
    bits_equal(unpack_int4_ref(packed.numpy(), in_f), q.numpy())


@pytest.mark.parametrize(("out_f", "in_f"), SHAPES)
def test_int4_pack_matches_library_words(out_f: int, in_f: int) -> None:
    q = random_q(out_f, in_f, seed=7 + out_f * 1000 + in_f)
    want = pack_to_int32(q, 4)
    got = pack_int4(q)
    got_ref = pack_int4_ref(q.numpy())
    assert got.dtype == torch.int32 and got.shape == (out_f, in_f // 8)
    bits_equal(got, want)
    bits_equal(got_ref, want.numpy())
    # and the library decodes the project's packing
    bits_equal(unpack_from_int32(got, 4, torch.Size([out_f, in_f])), q)
    bits_equal(unpack_from_int32(torch.from_numpy(got_ref), 4, torch.Size([out_f, in_f])), q)


def test_int4_pack_of_non_contiguous_input() -> None:
    q = random_q(96, 5, seed=11).t()  # [5, 96], a transposed view
    assert not q.is_contiguous()
    bits_equal(pack_int4(q), pack_to_int32(q.contiguous(), 4))
    bits_equal(unpack_int4(pack_int4(q), 96), q.contiguous())


# ---- INT4: full dequantization / quantization against PackedQuantizationCompressor -------------------------
@pytest.mark.parametrize(("out_f", "in_f"), SHAPES)
def test_int4_dequantize_matches_library_decompress(out_f: int, in_f: int) -> None:
    scheme = int4_scheme()
    w = random_weight(out_f, in_f, seed=out_f * 1000 + in_f)
    scale = random_bf16_scale(out_f, in_f // GROUP, seed=1 + out_f * 1000 + in_f)
    comp = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, scheme)
    packed = comp["weight_packed"]
    assert packed.dtype == torch.int32 and packed.shape == (out_f, in_f // 8)
    assert comp["weight_shape"].tolist() == [out_f, in_f]

    ours = dequantize_int4(packed, scale, in_f, GROUP)
    ours_ref = dequantize_int4_ref(packed.numpy(), scale.float().numpy(), in_f, GROUP)
    assert ours.dtype == torch.float32 and ours.shape == (out_f, in_f)
    bits_equal(ours, ours_ref)

    # The library dequantizes in the scale's dtype: with a bf16 scale, q.to(bf16) * scale rounds the (exact,
    # <= 11 significant bits) product once to bf16. Our float32 product is exact, so the same single rounding
    # (.to(bf16)) must give the library's bits; asking dequantize_int4 for bf16 must too.
    lib_bf16 = PackedQuantizationCompressor.decompress(comp, scheme)["weight"]
    assert lib_bf16.dtype == torch.bfloat16
    bits_equal(ours.to(torch.bfloat16).view(torch.int16), lib_bf16.view(torch.int16))
    bits_equal(
        dequantize_int4(packed, scale, in_f, GROUP, dtype=torch.bfloat16).view(torch.int16), lib_bf16.view(torch.int16)
    )

    # With the same scale values held in float32 the library's product is exact too: equal in float32.
    comp_f32 = {**comp, "weight_scale": scale.float()}
    lib_f32 = PackedQuantizationCompressor.decompress(comp_f32, scheme)["weight"]
    assert lib_f32.dtype == torch.float32
    bits_equal(ours, lib_f32)


@pytest.mark.parametrize(("out_f", "in_f"), SHAPES)
def test_int4_quantize_then_library_decompress(out_f: int, in_f: int) -> None:
    scheme = int4_scheme()
    w = random_weight(out_f, in_f, seed=3 + out_f * 1000 + in_f)
    packed, scale = quantize_int4(w, GROUP)
    assert packed.dtype == torch.int32 and packed.shape == (out_f, in_f // 8)
    assert scale.dtype == torch.bfloat16 and scale.shape == (out_f, in_f // GROUP)
    assert bool((scale > 0).all())

    state = {"weight_packed": packed, "weight_scale": scale, "weight_shape": torch.tensor([out_f, in_f])}
    lib_bf16 = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
    ours = dequantize_int4(packed, scale, in_f, GROUP)
    bits_equal(ours.to(torch.bfloat16).view(torch.int16), lib_bf16.view(torch.int16))
    state_f32 = {**state, "weight_scale": scale.float()}
    lib_f32 = PackedQuantizationCompressor.decompress(state_f32, scheme)["weight"]
    bits_equal(ours, lib_f32)

    # Re-compressing w with our scale through the library gives our words (same rounding and clamping rule).
    comp = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, scheme)
    bits_equal(comp["weight_packed"], packed)

    # Our scale is the library's symmetric rule (absmax / 7.5, computed in float32) rounded to bf16.
    g = w.view(out_f, -1, GROUP)
    lib_scale, _ = calculate_qparams(g.amin(dim=-1), g.amax(dim=-1), scheme.weights)
    bits_equal(scale.view(torch.int16), lib_scale.to(torch.bfloat16).view(torch.int16))

    # Round trip: within half a step of the group's scale, except near +absmax (about 7.5 steps, rounded up
    # to 8 and clamped to 7), which stays within one step.
    err = (ours - w).abs().view(out_f, -1, GROUP)
    assert bool((err <= scale.float()[..., None]).all())


@pytest.mark.parametrize(("out_f", "in_f"), SHAPES)
def test_int4_quantize_ref_matches_library_quantize(out_f: int, in_f: int) -> None:
    # compressed_tensors' quantize(x, scale, zero_point, args, dtype) is reachable with a plain scale tensor.
    # The weight is float32 so x / scale is a float32 division on both sides (a bf16 weight would make the
    # library divide in bf16, rounding the quotient before round-half-even).
    scheme = int4_scheme()
    w = random_weight(out_f, in_f, seed=5 + out_f * 1000 + in_f)
    # scales small enough that some quotients exceed [-8, 7] and get clamped
    scale = random_bf16_scale(out_f, in_f // GROUP, seed=6 + out_f * 1000 + in_f) * 0.5
    lib_q = ct_quantize(x=w, scale=scale, zero_point=None, args=scheme.weights, dtype=torch.int8)
    ours = quantize_int4_ref(w.numpy(), scale.float().numpy(), GROUP)
    assert ours.dtype == np.int8 and ours.shape == (out_f, in_f)
    bits_equal(ours, lib_q.numpy())
    assert ours.min() == -8 and ours.max() == 7


def test_int4_quantize_ref_rounds_half_to_even() -> None:
    # Exact ties (w / scale = k + 0.5) go to the even neighbour, like torch.round in compressed-tensors.
    scale = np.full((1, 1), 0.5, dtype=np.float32)
    w = np.tile(np.array([0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 3.25, -3.75], dtype=np.float32), 4)[None, :]
    want = np.tile(np.array([0, 2, 2, 0, -2, -2, 6, -8], dtype=np.int8), 4)[None, :]
    bits_equal(quantize_int4_ref(w, scale, GROUP), want)
    lib_q = ct_quantize(
        x=torch.from_numpy(w),
        scale=torch.from_numpy(scale),
        zero_point=None,
        args=int4_scheme().weights,
        dtype=torch.int8,
    )
    bits_equal(lib_q.numpy(), want)


# ---- INT4: hand-built words pin the layout -----------------------------------------------------------------
def test_int4_hand_built_words() -> None:
    # row 0: q = -8..-1 -> nibbles 0..7 -> 0x76543210; q = 0..7 -> nibbles 8..15 -> 0xFEDCBA98
    # row 1: a single 7 at column 3 of word 0 (nibble 15 at bits 12..15), zeros elsewhere (nibble 8)
    q = np.zeros((2, 16), dtype=np.int8)
    q[0, :8] = np.arange(-8, 0)
    q[0, 8:] = np.arange(0, 8)
    q[1, 3] = 7
    q[1, 15] = -8  # nibble 0 in the top nibble of word 1
    want_u32 = np.array([[0x76543210, 0xFEDCBA98], [0x8888F888, 0x08888888]], dtype=np.uint32)
    want = want_u32.view(np.int32)
    assert want[0, 1] == 0xFEDCBA98 - 2**32  # a negative int32
    bits_equal(pack_int4_ref(q), want)
    bits_equal(pack_int4(torch.from_numpy(q)), torch.from_numpy(want))
    bits_equal(pack_to_int32(torch.from_numpy(q), 4), torch.from_numpy(want))
    bits_equal(unpack_int4(torch.from_numpy(want), 16), torch.from_numpy(q))
    bits_equal(unpack_int4_ref(want, 16), q)

    scale = torch.tensor([[0.5], [2.0]], dtype=torch.bfloat16)
    w = dequantize_int4(torch.from_numpy(want), scale, 16, group=16)
    bits_equal(w, torch.from_numpy(q.astype(np.float32)) * torch.tensor([[0.5], [2.0]]))


def test_int4_all_zero_weight_packs_to_0x88888888() -> None:
    zero_word = np.int32(-2004318072)
    assert np.uint32(0x88888888).view(np.int32) == zero_word
    q = np.zeros((3, 32), dtype=np.int8)
    bits_equal(pack_int4_ref(q), np.full((3, 4), zero_word, dtype=np.int32))
    bits_equal(pack_int4(torch.from_numpy(q)), torch.full((3, 4), int(zero_word), dtype=torch.int32))
    packed, scale = quantize_int4(torch.zeros(3, 64), GROUP)
    bits_equal(packed, torch.full((3, 8), int(zero_word), dtype=torch.int32))
    assert scale.dtype == torch.bfloat16 and bool((scale == 0).all())
    bits_equal(dequantize_int4(packed, scale, 64, GROUP), torch.zeros(3, 64))


# ---- FP8 block ---------------------------------------------------------------------------------------------
def test_e4m3_ref_decodes_all_256_patterns_like_torch() -> None:
    bits = np.arange(256, dtype=np.uint8)
    got = e4m3_to_float_ref(bits)
    want = torch.from_numpy(bits).view(torch.float8_e4m3fn).float().numpy()
    assert got.dtype == np.float32
    nan = np.isnan(want)
    assert np.flatnonzero(nan).tolist() == [0x7F, 0xFF]
    np.testing.assert_array_equal(np.isnan(got), nan)
    bits_equal(got[~nan], want[~nan])  # includes +0 (0x00) and -0 (0x80) with their signs
    assert got[0x7E] == E4M3_MAX and got[0xFE] == -E4M3_MAX
    assert got[0x01] == 2.0**-9 and got[0x08] == 2.0**-6


def random_fp8_bits(out_f: int, in_f: int, seed: int) -> np.ndarray:
    """Random e4m3 bit patterns, excluding zeros (0x00, 0x80) and NaNs (0x7F, 0xFF)."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 256, size=(out_f, in_f), dtype=np.uint8)
    bad = ((bits & 0x7F) == 0) | ((bits & 0x7F) == 0x7F)
    bits[bad] = np.uint8(0x3C)  # 1.5
    bits[0, 0], bits[-1, -1] = 0x7E, 0x81  # 448 and the smallest negative subnormal
    return bits


@pytest.mark.parametrize(
    ("out_f", "in_f", "block"),
    FP8_CASES,
)
def test_dequantize_fp8_matches_ref(out_f: int, in_f: int, block: tuple[int, int]) -> None:
    bits = random_fp8_bits(out_f, in_f, seed=out_f * 1000 + in_f)
    nb = (-(-out_f // block[0]), -(-in_f // block[1]))
    rng = np.random.default_rng(seed=1 + out_f * 1000 + in_f)
    scale_inv = (rng.uniform(0.5, 2.0, size=nb) * np.exp2(rng.integers(-12, -4, size=nb))).astype(np.float32)

    w = torch.from_numpy(bits).view(torch.float8_e4m3fn)
    got = dequantize_fp8(w, torch.from_numpy(scale_inv), block)
    want = dequantize_fp8_ref(bits, scale_inv, block)
    assert got.dtype == torch.float32 and got.shape == (out_f, in_f)
    bits_equal(got, want)

    # and the definition, element by element: W[r, c] = float(w[r, c]) * scale_inv[r // B0, c // B1]
    rows = np.arange(out_f)[:, None] // block[0]
    cols = np.arange(in_f)[None, :] // block[1]
    bits_equal(want, e4m3_to_float_ref(bits) * scale_inv[rows, cols])

    got_bf16 = dequantize_fp8(w, torch.from_numpy(scale_inv), block, dtype=torch.bfloat16)
    bits_equal(got_bf16.view(torch.int16), got.to(torch.bfloat16).view(torch.int16))


@pytest.mark.parametrize(
    ("out_f", "in_f", "block"),
    FP8_CASES,
)
def test_quantize_fp8_round_trip(out_f: int, in_f: int, block: tuple[int, int]) -> None:
    torch.manual_seed(out_f * 1000 + in_f)
    w = torch.randn(out_f, in_f) * torch.exp2(torch.randint(-8, 2, (out_f, 1)).float())
    w = torch.where(w == 0, torch.full_like(w, 1e-3), w)
    q, scale_inv = quantize_fp8(w, block)
    nb = (-(-out_f // block[0]), -(-in_f // block[1]))
    assert q.dtype == torch.float8_e4m3fn and q.shape == (out_f, in_f)
    assert scale_inv.dtype == torch.float32 and scale_inv.shape == nb

    # scale_inv = block absmax / 448 (in float32), over the real (unpadded) elements of each block
    for i in range(nb[0]):
        for j in range(nb[1]):
            blk = w[i * block[0] : (i + 1) * block[0], j * block[1] : (j + 1) * block[1]]
            assert scale_inv[i, j].item() == (blk.abs().max() / E4M3_MAX).item()

    deq = dequantize_fp8(q, scale_inv, block)
    s = scale_inv.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:out_f, :in_f]
    err = (deq - w).abs()
    # relative error 2^-4 for normals, half a subnormal step (in block-scale units) below 2^-6; a little
    # float32 slack for the division and the product
    bound = FP8_REL_TOL * w.abs() + FP8_SUBNORMAL_ABS_TOL * s
    assert bool((err <= bound * (1 + 2.0**-20)).all()), float((err / bound).max())
    # relative to the block absmax the error is at most 2^-4 of it
    assert bool((err <= FP8_REL_TOL * s * E4M3_MAX).all())
    assert not torch.isnan(deq).any()


# ---- errors ------------------------------------------------------------------------------------------------
def test_int4_errors_name_the_problem() -> None:
    packed = pack_int4(random_q(3, 96, seed=1))
    scale = random_bf16_scale(3, 3, seed=2)

    with pytest.raises(ValueError, match=re.escape("weight_packed must be torch.int32, got torch.float32")):
        unpack_int4(packed.float(), 96)
    with pytest.raises(ValueError, match="weight_packed must be int32, got float32"):
        unpack_int4_ref(packed.float().numpy(), 96)
    with pytest.raises(ValueError, match=re.escape("weight_packed must be torch.int32, got torch.float32")):
        dequantize_int4(packed.float(), scale, 96)

    width = re.escape("weight_packed shape (3, 12) does not hold 128 input features (expected [out, 16]")
    with pytest.raises(ValueError, match=width):
        unpack_int4(packed, 128)
    with pytest.raises(ValueError, match=width):
        unpack_int4_ref(packed.numpy(), 128)
    with pytest.raises(ValueError, match=width):
        dequantize_int4(packed, scale, 128)
    with pytest.raises(ValueError, match="does not hold 95 input features"):
        unpack_int4(packed, 95)
    with pytest.raises(ValueError, match=re.escape("weight_packed must be 2-D [out, in/8], got shape (36,)")):
        unpack_int4(packed.flatten(), 96)

    bad_scale = re.escape("weight_scale shape (3, 2); expected (3, 3) for group_size 32")
    with pytest.raises(ValueError, match=bad_scale):
        dequantize_int4(packed, scale[:, :2], 96)
    with pytest.raises(ValueError, match=bad_scale):
        dequantize_int4_ref(packed.numpy(), scale[:, :2].float().numpy(), 96)
    group16 = re.escape("weight_scale shape (3, 3); expected (3, 6) for group_size 16")
    with pytest.raises(ValueError, match=group16):
        dequantize_int4(packed, scale, 96, group=16)
    with pytest.raises(ValueError, match="in_features 96 is not a multiple of group_size 64"):
        dequantize_int4(packed, scale, 96, group=64)

    with pytest.raises(ValueError, match=r"expected torch\.int8 .* got torch\.int32"):
        pack_int4(random_q(3, 96, seed=3).to(torch.int32))
    with pytest.raises(ValueError, match=re.escape("in a multiple of 8, got torch.int8 (3, 12)")):
        pack_int4(random_q(3, 12, seed=3))
    with pytest.raises(ValueError, match=r"expected int8 .* got int16"):
        pack_int4_ref(random_q(3, 96, seed=3).numpy().astype(np.int16))
    out_of_range = random_q(3, 96, seed=3).numpy()
    out_of_range[1, 5] = 8
    with pytest.raises(ValueError, match=re.escape("values outside [-8, 7]: min -8, max 8")):
        pack_int4_ref(out_of_range)
    not_group_multiple = re.escape("expected [out, in] with in a multiple of 32, got (3, 48)")
    with pytest.raises(ValueError, match=not_group_multiple):
        quantize_int4(torch.randn(3, 48))


def test_fp8_errors_name_the_problem() -> None:
    bits = random_fp8_bits(130, 200, seed=1)
    w = torch.from_numpy(bits).view(torch.float8_e4m3fn)
    scale_inv = torch.rand(2, 2) + 0.5

    not_fp8 = re.escape("FP8 weight must be torch.float8_e4m3fn, got torch.")
    with pytest.raises(ValueError, match=not_fp8 + "float32"):
        dequantize_fp8(w.float(), scale_inv)
    with pytest.raises(ValueError, match=not_fp8 + "bfloat16"):
        dequantize_fp8(w.float().bfloat16(), scale_inv)

    bad = re.escape("weight_scale_inv shape (1, 2); expected (2, 2) for weight (130, 200) and block (128, 128)")
    with pytest.raises(ValueError, match=bad):
        dequantize_fp8(w, scale_inv[:1])
    with pytest.raises(ValueError, match=bad):
        dequantize_fp8_ref(bits, scale_inv[:1].numpy())
    with pytest.raises(ValueError, match=re.escape("weight_scale_inv shape (2, 2); expected (5, 4)")):
        dequantize_fp8(w, scale_inv, (32, 64))
    with pytest.raises(ValueError, match="FP8 weight must be 2-D"):
        dequantize_fp8(w.reshape(2, 65, 200), scale_inv)
    with pytest.raises(ValueError, match="expected uint8 bit patterns, got int8"):
        e4m3_to_float_ref(bits.view(np.int8))
    with pytest.raises(ValueError, match=re.escape("expected [out, in], got (2, 65, 200)")):
        quantize_fp8(torch.randn(2, 65, 200))
