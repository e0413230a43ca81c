"""The native one-call decode attention (kernels/cpu_mla.py) against its NumPy reference on random weights, and in
the model against the torch path it replaces."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from kernels import cpu_ggml
from kernels.cpu_mla import MlaDecoder, MlaDecodeWeights, mla_decode_cpu, mla_decode_ref
from kernels.dequant import StoredWeight
from kernels.ggml_encode import quantize_q8_0
from kernels.ggml_random import random_ggml_blocks

pytestmark = pytest.mark.skipif(cpu_ggml.native_build() is None, reason="the native ggml kernel does not build here")


def _q8(rng: np.random.Generator, rows: int, cols: int, scale: float) -> StoredWeight:
    w = torch.from_numpy(rng.standard_normal((rows, cols)).astype(np.float32) * scale)
    return StoredWeight("q8_0", (rows, cols), {"data": quantize_q8_0(w)})


def _typed(fmt: str, rng: np.random.Generator, rows: int, cols: int, scale: float) -> StoredWeight:
    if fmt == "q8_0":
        return _q8(rng, rows, cols, scale)
    return StoredWeight(fmt, (rows, cols), {"data": torch.from_numpy(random_ggml_blocks(fmt, rows, cols, rng))})


def _weights(
    rng: np.random.Generator, D: int, H: int, nope: int, rope: int, v: int, rank: int, q_rank: int | None,
    interleaved: bool, o_fmt: str = "q8_0",
) -> MlaDecodeWeights:  # fmt: skip
    qk = nope + rope
    norm = lambda n: torch.from_numpy(rng.uniform(0.5, 1.5, n).astype(np.float32))  # noqa: E731
    return MlaDecodeWeights(
        q_a=_q8(rng, q_rank, D, D**-0.5) if q_rank else None,
        q_a_norm=norm(q_rank) if q_rank else None,
        q_b=_q8(rng, H * qk, q_rank or D, (q_rank or D) ** -0.5),
        kv_a=_q8(rng, rank + rope, D, D**-0.5),
        kv_a_norm=norm(rank),
        uk=_q8(rng, H * rank, nope, nope**-0.5),
        uv=_q8(rng, H * v, rank, rank**-0.5),
        o=_typed(o_fmt, rng, D, H * v, (H * v) ** -0.5),
        heads=H,
        nope=nope,
        rope=rope,
        v=v,
        rank=rank,
        interleaved=interleaved,
        eps=1e-6,
        scale=qk**-0.5 * 1.7,
    )


def _bf16_round(a: np.ndarray) -> np.ndarray:
    return torch.from_numpy(a.astype(np.float32)).bfloat16().double().numpy()


@pytest.mark.parametrize(
    ("D", "H", "nope", "rope", "v", "rank", "q_rank", "interleaved", "pos", "cache", "o_fmt"),
    [
        (256, 4, 64, 32, 64, 128, 96, True, 0, torch.bfloat16, "q8_0"),  # the first token: attends to itself only
        (256, 4, 64, 32, 64, 128, 96, True, 6, torch.bfloat16, "q8_0"),
        (512, 3, 32, 16, 32, 64, None, False, 32, torch.float32, "q4_0"),  # plain q_proj, halves rope, odd heads
        (256, 4, 32, 8, 64, 96, 64, True, 40, torch.bfloat16, "q4_k"),
        (256, 1, 32, 4, 256, 32, None, True, 2, torch.float32, "q6_k"),  # one head: one thread has no heads
    ],
)
def test_matches_reference(D, H, nope, rope, v, rank, q_rank, interleaved, pos, cache, o_fmt) -> None:
    rng = np.random.default_rng(pos + H)
    w = _weights(rng, D, H, nope, rope, v, rank, q_rank, interleaved, o_fmt)
    assert w.check() == D
    max_tokens = pos + 3
    lat = torch.from_numpy(rng.standard_normal((max_tokens, rank)).astype(np.float32)).to(cache)
    pe = torch.from_numpy(rng.standard_normal((max_tokens, rope)).astype(np.float32)).to(cache)
    before_lat, before_pe = lat.double().numpy().copy(), pe.double().numpy().copy()
    angles = pos * 10000 ** (-np.arange(rope // 2) / (rope // 2))
    cos, sin = (torch.from_numpy(f(angles).astype(np.float32)) for f in (np.cos, np.sin))
    x = torch.from_numpy(rng.standard_normal((1, D)).astype(np.float32))

    out = mla_decode_cpu(x, w, lat, pe, pos, cos, sin)
    rnd = _bf16_round if cache == torch.bfloat16 else None
    ref, ref_lat, ref_pe = mla_decode_ref(x.numpy()[0], w, before_lat, before_pe, pos, cos.numpy(), sin.numpy(), rnd)

    # the new cache row is the token's latent and k_pe (rounded as the cache stores them); the rest is untouched
    tol_row = 1e-2 if cache == torch.bfloat16 else 1e-5
    np.testing.assert_allclose(lat[pos].double().numpy(), ref_lat, rtol=tol_row, atol=tol_row)
    np.testing.assert_allclose(pe[pos].double().numpy(), ref_pe, rtol=tol_row, atol=tol_row)
    keep = [i for i in range(max_tokens) if i != pos]
    np.testing.assert_array_equal(lat.double().numpy()[keep], before_lat[keep])
    np.testing.assert_array_equal(pe.double().numpy()[keep], before_pe[keep])
    # the output: float32 sums against float64 ones; an int8 code may round the other way where a value sits on
    # a half step, which moves an output by one step of a block (~amax / 127 times a weight): well below 1e-2 of
    # the output's scale, while a wrong head, position or rope moves it by its own size
    scale = np.abs(ref).max()
    err = np.abs(out.numpy()[0] - ref).max()
    assert err <= 1e-2 * scale, (err, scale)


def test_threads_do_not_change_the_result() -> None:
    rng = np.random.default_rng(3)
    w = _weights(rng, 256, 6, 64, 32, 64, 128, 96, True)
    lat = torch.randn(20, 128).bfloat16()
    pe = torch.randn(20, 32).bfloat16()
    cos, sin = torch.rand(16), torch.rand(16)
    x = torch.randn(1, 256)
    outs = []
    n = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(mla_decode_cpu(x, w, lat.clone(), pe.clone(), 11, cos, sin))
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_bad_arguments_are_refused() -> None:
    rng = np.random.default_rng(5)
    w = _weights(rng, 256, 2, 32, 16, 32, 64, None, True)
    lat, pe = torch.zeros(4, 64), torch.zeros(4, 16)
    cos, sin = torch.ones(8), torch.zeros(8)
    x = torch.randn(1, 256)
    with pytest.raises(ValueError, match="outside a cache of 4 rows"):
        mla_decode_cpu(x, w, lat, pe, 4, cos, sin)
    with pytest.raises(ValueError, match="bf16 or float32"):
        mla_decode_cpu(x, w, lat.half(), pe.half(), 1, cos, sin)
    with pytest.raises(ValueError, match="float32"):
        mla_decode_cpu(x.double(), w, lat, pe, 1, cos, sin)
    bad = dataclasses.replace(w, uv=w.uk)
    with pytest.raises(ValueError, match="uv: expected shape"):
        bad.check()
    assert math.isfinite(float(mla_decode_cpu(x, w, lat, pe, 1, cos, sin).abs().sum()))


def test_in_the_model_it_is_as_close_to_float32_as_the_torch_path() -> None:
    """The trained demo model with --cpu-weights int8 (every Linear a Q8_0 QuantLinear), 24 decode steps fed the
    float32 model's greedy tokens: through the native call (every decode step, every layer) the logits are as close
    to the float32 model's as through the torch path it replaces (both round activations to int8; the torch path
    also to bf16 after every op), and pick the same tokens as often."""
    from offload.engine.engine import Engine
    from offload.planner.plan import RuntimeConfig
    from offload.synth.demo import demo_dir
    from tests.harness import PROMPT, greedy

    def forced(model, tokens):  # type: ignore[no-untyped-def]
        cache = model.new_cache(len(PROMPT) + len(tokens) + 1)
        out = [model.forward(torch.tensor(PROMPT), 0, cache, last_only=True)]
        for i, t in enumerate(tokens):
            out.append(model.forward(torch.tensor([t]), len(PROMPT) + i, cache))
        return torch.cat(out)  # [steps + 1, V]

    with Engine(demo_dir(), RuntimeConfig(device="cpu", dtype="float32", context=256)) as engine:
        tokens, _ = greedy(engine.model, steps=24)
        ref = forced(engine.model, tokens)
    with Engine(demo_dir(), RuntimeConfig(device="cpu", cpu_weights="int8", context=256)) as engine:
        model = engine.model
        assert all(b.attn.native is not None for b in model.blocks)
        model.native_decode = False  # the module path (the native layers match it bit for bit: test_cpu_layer.py)
        calls = []
        real = MlaDecoder.__call__

        def counted(*a, **k):  # type: ignore[no-untyped-def]
            calls.append(1)
            return real(*a, **k)

        MlaDecoder.__call__ = counted  # type: ignore[method-assign]
        try:
            native = forced(model, tokens)
        finally:
            MlaDecoder.__call__ = real  # type: ignore[method-assign]
        assert len(calls) == 24 * len(model.blocks)  # every decode step, every layer; never the prompt pass
        for b in model.blocks:
            b.attn.native = None
        torch_path = forced(model, tokens)
    assert torch.equal(native[0], torch_path[0])  # the prompt pass is the same code
    err_native, err_torch = ((x - ref).abs().amax(dim=1) for x in (native, torch_path))  # [25] each
    assert float(err_native.mean()) <= 1.5 * float(err_torch.mean()), (err_native, err_torch)
    assert float(err_native.max()) <= 2.0 * float(err_torch.max()), (err_native, err_torch)
    same = lambda x: int((x.argmax(dim=1) == ref.argmax(dim=1)).sum())  # noqa: E731
    assert same(native) >= same(torch_path) - 1
