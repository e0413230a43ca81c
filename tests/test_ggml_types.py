"""The ggml types of GGUF files against gguf-py (llama.cpp's own package): our NumPy references equal
gguf.quants.dequantize bit for bit on random valid blocks, the torch path equals the references, and the format
table, the dispatch by tag and the error messages hold.

Random blocks (kernels.ggml_random) are random bytes with the scale fields (f16 d / dmin, IQ1_M's split f16,
MXFP4's e8m0 exponent, subnormal scales included) overwritten by finite, moderate values of both signs. Rows are
odd in number; 256-weight types have 2 blocks a row, 32-weight types 3.
"""

from __future__ import annotations

import re

import gguf
import numpy as np
import pytest
import torch
from gguf import quants

from kernels import ggml
from kernels.dequant import StoredWeight, dequantize
from kernels.formats import (
    FORMATS,
    GGML_BLOCKS,
    fused_expert_format,
    ggml_bits_per_weight,
    ggml_row_bytes,
    label,
)
from kernels.ggml import dequantize_ggml, dequantize_ggml_ref
from kernels.ggml_random import random_ggml_blocks
from kernels.ggml_tables import gguf_tables

TYPES = list(GGML_BLOCKS)
# the types gguf.quants can quantize
QUANTIZABLE = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "tq1_0", "tq2_0", "mxfp4")


def qtype(fmt: str) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType[fmt.upper()]


def in_features(fmt: str) -> int:
    block_size = GGML_BLOCKS[fmt][0]
    return block_size * (2 if block_size == 256 else 3)


def random_blocks(fmt: str, rows: int, seed: int) -> np.ndarray:
    return random_ggml_blocks(fmt, rows, in_features(fmt), np.random.default_rng(seed))


def bits_equal(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> None:
    """Bit-exact equality: -0.0 != 0.0."""
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    b = b.numpy() if isinstance(b, torch.Tensor) else b
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
    uint = np.dtype(f"u{a.dtype.itemsize}")
    assert np.array_equal(a.view(uint), b.view(uint)), f"{int((a.view(uint) != b.view(uint)).sum())} differ"


def as_bf16_bits(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    return t.to(torch.bfloat16).view(torch.int16)


# ---- the format table ----------------------------------------------------------------------------------------
def test_format_table_matches_gguf() -> None:
    sizes = {fmt: gguf.GGML_QUANT_SIZES[qtype(fmt)] for fmt in GGML_BLOCKS}
    assert sizes == GGML_BLOCKS
    assert len(GGML_BLOCKS) == 22
    assert ggml.REFERENCES.keys() == ggml.KERNELS.keys() == GGML_BLOCKS.keys()
    for fmt in GGML_BLOCKS:
        assert FORMATS[fmt].startswith(f"ggml {fmt.upper()}:")
        assert label(fmt, ()) == fmt
        assert not fused_expert_format(fmt, ())
    assert ggml_bits_per_weight("q4_0") == 4.5
    assert ggml_bits_per_weight("iq1_s") == 1.5625
    assert ggml_bits_per_weight("mxfp4") == 4.25
    assert ggml_row_bytes("q4_k", 7168) == 28 * 144


def test_tables_from_gguf() -> None:
    t = gguf_tables()
    shapes = [g.shape for g in (t.iq1s_grid, t.iq2xxs_grid, t.iq2xs_grid, t.iq2s_grid, t.iq3xxs_grid, t.iq3s_grid)]
    assert shapes == [(2048, 8), (256, 8), (512, 8), (1024, 8), (256, 4), (512, 4)]
    # ksigns: 7 sign bits and their parity, so an even number of weights is negated
    idx = np.arange(128)
    parity = np.array([bin(i).count("1") & 1 for i in idx])
    bits_equal(t.ksigns, (idx | parity << 7).astype(np.uint8))
    assert t.iq4nl_values.tolist()[:3] == [-127, -104, -83]
    assert not t.iq1s_grid.flags.writeable


def test_hand_built_q4_0_and_mxfp4_blocks() -> None:
    # Q4_0: d = 0.5, byte j = (j, 15 - j): weight j (low nibble) = (j - 8) / 2, weight 16 + j = (7 - j) / 2
    j = np.arange(16)
    block = np.concatenate([np.array([0.5], "<f2").view(np.uint8), (j | (15 - j) << 4).astype(np.uint8)])
    want = np.concatenate([(j - 8) / 2, (7 - j) / 2]).astype(np.float32)[None]
    bits_equal(dequantize_ggml_ref(block[None], "q4_0", 32), want)
    bits_equal(dequantize_ggml(torch.from_numpy(block[None]), "q4_0", 32), want)
    # MXFP4: e = 0 scales the doubled e2m1 values by 2^-128 (a float32 subnormal); nibble 15 is -12
    block = np.concatenate([[0], np.full(16, 0xF7)]).astype(np.uint8)[None]
    want = np.concatenate([np.full(16, 12.0), np.full(16, -12.0)]).astype(np.float32)[None] * np.float32(2.0**-128)
    bits_equal(dequantize_ggml_ref(block, "mxfp4", 32), want)
    bits_equal(dequantize_ggml(torch.from_numpy(block), "mxfp4", 32), want)


# ---- NumPy references against gguf ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", TYPES)
@pytest.mark.parametrize("rows", [3, 5])
def test_reference_matches_gguf(fmt: str, rows: int) -> None:
    data = random_blocks(fmt, rows, seed=rows * 100 + TYPES.index(fmt))
    want = quants.dequantize(data, qtype(fmt))
    got = dequantize_ggml_ref(data, fmt, in_features(fmt))
    assert got.dtype == np.float32 and got.shape == (rows, in_features(fmt))
    assert np.isfinite(got).all()
    bits_equal(got, want)


# ---- the torch path against the references --------------------------------------------------------------------
@pytest.mark.parametrize("fmt", TYPES)
def test_torch_matches_reference(fmt: str) -> None:
    data = random_blocks(fmt, 5, seed=7 + TYPES.index(fmt))
    ref = dequantize_ggml_ref(data, fmt, in_features(fmt))
    t = torch.from_numpy(data)
    got = dequantize_ggml(t, fmt, in_features(fmt))
    assert got.dtype == torch.float32
    bits_equal(got, ref)
    bf16 = dequantize_ggml(t, fmt, in_features(fmt), torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert torch.equal(bf16.view(torch.int16), as_bf16_bits(ref))
    # a non-contiguous input (every other row of a larger array) gives the same rows
    wide = np.repeat(data, 2, axis=0)
    bits_equal(dequantize_ggml(torch.from_numpy(wide)[::2], fmt, in_features(fmt)), ref)


@pytest.mark.parametrize("fmt", TYPES)
def test_out_buffer_is_written_and_reused(fmt: str) -> None:
    n_in = in_features(fmt)
    first, second = (random_blocks(fmt, 3, seed=s + TYPES.index(fmt)) for s in (11, 12))
    for dtype in (torch.float32, torch.bfloat16):
        out = torch.full((3, n_in), float("nan"), dtype=dtype)
        ptr = out.data_ptr()
        for data in (first, second):
            got = dequantize_ggml(torch.from_numpy(data), fmt, n_in, dtype, out=out)
            assert got is out and out.data_ptr() == ptr
            ref = dequantize_ggml_ref(data, fmt, n_in)
            if dtype == torch.float32:
                bits_equal(out, ref)
            else:
                assert torch.equal(out.view(torch.int16), as_bf16_bits(ref))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fmt", TYPES)
def test_cuda_matches_reference(fmt: str) -> None:
    data = random_blocks(fmt, 5, seed=41 + TYPES.index(fmt))
    ref = dequantize_ggml_ref(data, fmt, in_features(fmt))
    t = torch.from_numpy(data).cuda()
    got = dequantize_ggml(t, fmt, in_features(fmt))
    assert got.is_cuda
    bits_equal(got.cpu(), ref)
    bf16 = dequantize_ggml(t, fmt, in_features(fmt), torch.bfloat16)
    assert torch.equal(bf16.cpu().view(torch.int16), as_bf16_bits(ref))


# ---- quantize with gguf, dequantize with ours ------------------------------------------------------------------
@pytest.mark.parametrize("fmt", QUANTIZABLE)
def test_gguf_quantize_round_trip(fmt: str) -> None:
    rng = np.random.default_rng(21 + QUANTIZABLE.index(fmt))
    n_in = in_features(fmt)
    w = (rng.standard_normal((5, n_in)) * np.exp2(rng.integers(-6, 1, (5, 1)))).astype(np.float32)
    data = quants.quantize(w, qtype(fmt))
    assert data.dtype == np.uint8 and data.shape == (5, ggml_row_bytes(fmt, n_in))
    want = quants.dequantize(data, qtype(fmt))
    bits_equal(dequantize_ggml_ref(data, fmt, n_in), want)
    bits_equal(dequantize_ggml(torch.from_numpy(data), fmt, n_in), want)
    assert np.abs(want - w).max() <= np.abs(w).max()  # a sanity bound: the quantization is not garbage


# ---- dispatch by tag ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", TYPES)
def test_dispatch_by_tag(fmt: str) -> None:
    data = random_blocks(fmt, 3, seed=31 + TYPES.index(fmt))
    w = StoredWeight(fmt, (3, in_features(fmt)), {"data": torch.from_numpy(data)})
    ref = dequantize_ggml_ref(data, fmt, in_features(fmt))
    bits_equal(dequantize(w), ref)
    assert torch.equal(dequantize(w, torch.bfloat16).view(torch.int16), as_bf16_bits(ref))
    assert w.nbytes == data.nbytes


# ---- errors ----------------------------------------------------------------------------------------------------
def test_errors_name_the_problem() -> None:
    data = random_blocks("q4_k", 3, seed=1)  # [3, 288]: 512 weights a row
    t = torch.from_numpy(data)

    partial = re.escape("a q4_k row holds whole blocks of 256 weights; in_features 384 is not a positive multiple")
    with pytest.raises(ValueError, match=partial):
        dequantize_ggml(t, "q4_k", 384)
    with pytest.raises(ValueError, match=partial):
        dequantize_ggml_ref(data, "q4_k", 384)
    with pytest.raises(ValueError, match="in_features 0 is not a positive multiple"):
        ggml_row_bytes("q8_0", 0)

    length = re.escape("q4_k data has shape (3, 287); rows of 512 weights take 288 bytes each (2 blocks of 144)")
    with pytest.raises(ValueError, match=length):
        dequantize_ggml(t[:, :287], "q4_k", 512)
    with pytest.raises(ValueError, match=length):
        dequantize_ggml_ref(data[:, :287], "q4_k", 512)
    with pytest.raises(ValueError, match=re.escape("q4_k data has shape (864,)")):
        dequantize_ggml(t.flatten(), "q4_k", 512)
    with pytest.raises(ValueError, match=re.escape("rows of 768 weights take 432 bytes each")):
        dequantize_ggml(t, "q4_k", 768)

    with pytest.raises(ValueError, match=re.escape("q4_k data must be torch.uint8 bytes, got torch.int8")):
        dequantize_ggml(t.view(torch.int8), "q4_k", 512)
    with pytest.raises(ValueError, match="q4_k data must be uint8 bytes, got float32"):
        dequantize_ggml_ref(data.view(np.float32), "q4_k", 512)
    with pytest.raises(ValueError, match="'q4_z' is not a ggml quantized type; known: q4_0, q4_1"):
        dequantize_ggml(t, "q4_z", 512)

    bad_out = re.escape("out must be a contiguous torch.bfloat16 tensor of shape (3, 512) on cpu; got torch.float32")
    with pytest.raises(ValueError, match=bad_out):
        dequantize_ggml(t, "q4_k", 512, torch.bfloat16, out=torch.empty(3, 512))
    with pytest.raises(ValueError, match=re.escape("(3, 512) on cpu; got torch.float32 (512, 3) on cpu")):
        dequantize_ggml(t, "q4_k", 512, out=torch.empty(512, 3))
    with pytest.raises(ValueError, match="not contiguous"):
        dequantize_ggml(t, "q4_k", 512, out=torch.empty(512, 3).T)

    with pytest.raises(ValueError, match=re.escape("q4_k data has shape (3, 288); a (4, 512) weight stores 4 rows")):
        dequantize(StoredWeight("q4_k", (4, 512), {"data": t}))
    with pytest.raises(ValueError, match=re.escape("rows of 256 weights take 144 bytes each")):
        dequantize(StoredWeight("q4_k", (3, 256), {"data": t}))
