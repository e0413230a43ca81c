"""Expert FFN and its grouped form, per weight format, against the NumPy definition on random odd-sized inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.dequant import StoredWeight, dequantize
from kernels.ffn import (
    bf16_to_float_ref,
    expert_ffn,
    expert_ffn_ref,
    grouped_ffn,
    grouped_ffn_ref,
)
from kernels.fp8 import dequantize_fp8_ref, quantize_fp8
from kernels.int4 import dequantize_int4_ref, quantize_int4

# tolerances, once per dtype, relative to the output's scale
RTOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


def _stored(fmt: str, out_f: int, in_f: int, g: torch.Generator) -> StoredWeight:
    """One Linear in a checkpoint format, from random weights (never zeros)."""
    w = torch.randn(out_f, in_f, generator=g) / in_f**0.5 + 1e-3
    if fmt == "int4":
        packed, scale = quantize_int4(w, 32)
        return StoredWeight("int4", (out_f, in_f), {"packed": packed, "scale": scale}, (32,))
    if fmt == "fp8":
        q, s = quantize_fp8(w, (128, 128))
        return StoredWeight("fp8", (out_f, in_f), {"weight": q, "scale_inv": s}, (128, 128))
    return StoredWeight("bf16", (out_f, in_f), {"weight": w.to(torch.bfloat16)})


def _dense_ref(w: StoredWeight) -> np.ndarray:
    """The NumPy definition of each format's dequantization."""
    t = w.parts
    if w.fmt == "int4":
        return dequantize_int4_ref(t["packed"].numpy(), t["scale"].float().numpy(), w.shape[1], 32)
    if w.fmt == "fp8":
        return dequantize_fp8_ref(t["weight"].view(torch.uint8).numpy(), t["scale_inv"].numpy())
    return bf16_to_float_ref(t["weight"].view(torch.int16).numpy().view(np.uint16))


def _expert(fmt: str, d: int, i: int, g: torch.Generator) -> tuple[StoredWeight, StoredWeight, StoredWeight]:
    return _stored(fmt, i, d, g), _stored(fmt, i, d, g), _stored(fmt, d, i, g)


def _close(got: torch.Tensor, want: np.ndarray, dtype: torch.dtype) -> None:
    scale = float(np.abs(want).max()) + 1e-12
    err = float(np.abs(got.float().numpy() - want).max())
    assert err <= RTOL[dtype] * scale, f"max error {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("fmt", ["int4", "fp8", "bf16"])
@pytest.mark.parametrize(("tokens", "d", "i"), [(1, 64, 32), (3, 96, 160), (8, 160, 96), (33, 64, 224)])
def test_dequantize_and_expert_ffn_match_the_definition(fmt, tokens, d, i):
    g = torch.Generator().manual_seed(tokens * 1000 + d + i)
    stored = _expert(fmt, d, i, g)
    dense = [dequantize(s, torch.float32) for s in stored]
    refs = [_dense_ref(s) for s in stored]
    for got, want in zip(dense, refs, strict=True):
        assert np.array_equal(got.numpy(), want)  # dequantization is exact in float32
    x = torch.randn(tokens, d, generator=g)
    _close(expert_ffn(x, *dense), expert_ffn_ref(x.numpy(), *refs), torch.float32)
    _close(expert_ffn(x.bfloat16(), *dense), expert_ffn_ref(x.numpy(), *refs), torch.bfloat16)


@pytest.mark.parametrize("fmt", ["int4", "fp8", "bf16"])
def test_grouped_ffn_matches_the_token_by_token_definition(fmt):
    g = torch.Generator().manual_seed(5)
    d, i, n_experts, tokens, k = 96, 64, 6, 9, 3
    stored = {e: _expert(fmt, d, i, g) for e in range(n_experts)}
    dense = {e: tuple(dequantize(s) for s in stored[e]) for e in stored}
    refs = {e: tuple(_dense_ref(s) for s in stored[e]) for e in stored}
    x = torch.randn(tokens, d, generator=g)
    ids = torch.stack([torch.randperm(n_experts - 1, generator=g)[:k] for _ in range(tokens)])  # expert 5 unused
    weights = torch.rand(tokens, k, generator=g) + 0.1
    out = torch.full((tokens, d), float("nan"))  # poisoned: every element must be written
    got = grouped_ffn(x, ids, weights, dense, out=out)
    assert got is out and torch.isfinite(out).all()
    _close(got, grouped_ffn_ref(x.numpy(), ids.numpy(), weights.numpy(), refs), torch.float32)
    fetched: list[int] = []
    by_call = grouped_ffn(x, ids, weights, lambda e: (fetched.append(e), dense[e])[1])
    assert torch.equal(by_call, got) and sorted(fetched) == sorted(set(ids.flatten().tolist()))  # each once


def test_zero_tokens():
    g = torch.Generator().manual_seed(1)
    dense = tuple(dequantize(s) for s in _expert("int4", 64, 32, g))
    assert expert_ffn(torch.empty(0, 64), *dense).shape == (0, 64)
    out = grouped_ffn(torch.empty(0, 64), torch.empty(0, 2, dtype=torch.long), torch.empty(0, 2), {0: dense})
    assert out.shape == (0, 64)


def test_bad_shapes_and_dtypes_say_what_is_wrong():
    g = torch.Generator().manual_seed(2)
    gate, up, down = (dequantize(s) for s in _expert("bf16", 64, 32, g))
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match=r"down is \(32, 64\); expected \[64, 32\]"):
        expert_ffn(x, gate, up, down.T)
    with pytest.raises(ValueError, match="must both be"):
        expert_ffn(torch.randn(2, 48), gate, up, down)
    with pytest.raises(ValueError, match="int64"):
        grouped_ffn(x, torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, 1), {0: (gate, up, down)})
    with pytest.raises(ValueError, match=r"must both be \[2, k\]"):
        grouped_ffn(x, torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 1), {0: (gate, up, down)})
    with pytest.raises(ValueError, match="weight format 'q9' is unknown"):
        StoredWeight("q9", (2, 2), {"weight": torch.ones(2, 2)})


@pytest.mark.parametrize("t", [1, 3, 8, 9])
def test_sorted_pairs_small_path_equals_the_tensor_path(t: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernels import ffn

    g = torch.Generator().manual_seed(t)
    ids = torch.stack([torch.randperm(12, generator=g)[:8] for _ in range(t)])  # [T, 8]
    wts = torch.rand(t, 8, generator=g)
    present = {0, 2, 3, 5, 7, 8, 11}
    small = ffn.sorted_pairs(ids, wts, t, present)
    monkeypatch.setattr(ffn, "SMALL_PAIRS", -1)
    big = ffn.sorted_pairs(ids, wts, t, present)
    assert small[0] == big[0] and torch.equal(small[1], big[1]) and torch.equal(small[2], big[2])
    assert [e for e, _, _ in small[0]] == sorted(set(ids.flatten().tolist()) & present)
    for e, b, end in small[0]:  # each run lists exactly the tokens routed to e, with their weights
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        assert torch.equal(small[1][b:end], tok) and torch.equal(small[2][b:end], wts[tok, slot])
    with pytest.raises(ValueError, match="twice"):
        ffn.sorted_pairs(torch.zeros(t, 2, dtype=torch.int64), wts[:, :2].contiguous(), t, present)
