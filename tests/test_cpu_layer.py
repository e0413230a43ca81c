"""A decode token's layer in two native calls (kernels/cpu_layer.py): the MLP call against its NumPy reference on
random weights, and the layers in the model against the module path they replace, bit for bit, on GGUF (ggml
types) and INT4 experts, resident and under a RAM budget with prefetch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels.cpu_layer import DecodeLayer, NativeMlp, mlp_int8_ref
from kernels.dequant import StoredWeight
from kernels.ggml_encode import quantize_q8_0
from kernels.ggml_random import random_ggml_blocks
from offload.checkpoint import open_checkpoint
from offload.config import PARTS
from offload.experts.dequantized import DequantizedExperts
from offload.experts.offloaded import OffloadConfig, OffloadedExperts
from offload.experts.store import ExpertStore
from offload.model.loader import load_transformer
from offload.synth.demo import demo_dir
from offload.synth.gguf_export import write_gguf
from tests.harness import PROMPT

pytestmark = pytest.mark.usefixtures("native_ggml")

STEPS = 16


def _typed(fmt: str, rows: int, cols: int, rng: np.random.Generator) -> StoredWeight:
    if fmt == "q8_0":
        w = torch.from_numpy(rng.standard_normal((rows, cols)).astype(np.float32) * cols**-0.5)
        return StoredWeight("q8_0", (rows, cols), {"data": quantize_q8_0(w)})
    return StoredWeight(fmt, (rows, cols), {"data": torch.from_numpy(random_ggml_blocks(fmt, rows, cols, rng))})


# (gate, up, down) types and (D, I): odd widths where the blocks allow (32-blocks), K2.5's mixes of 256-blocks
MLPS = [
    (("q8_0", "q8_0", "q8_0"), (96, 160)),
    (("q4_0", "q4_0", "q8_0"), (160, 96)),
    (("q4_k", "q4_k", "q6_k"), (512, 256)),
    (("q2_k", "q3_k", "iq4_xs"), (256, 512)),
    (("iq2_xxs", "iq1_m", "q5_k"), (256, 256)),
]


@pytest.mark.parametrize("t", [1, 3, 8, 33])
@pytest.mark.parametrize(("types", "shape"), MLPS, ids=["-".join(m[0]) for m in MLPS])
def test_mlp_is_the_int8_reference(types: tuple[str, str, str], shape: tuple[int, int], t: int) -> None:
    d, i = shape
    rng = np.random.default_rng(d + i + t)
    gate, up, down = _typed(types[0], i, d, rng), _typed(types[1], i, d, rng), _typed(types[2], d, i, rng)
    x = torch.from_numpy(rng.standard_normal((t, d)).astype(np.float32))
    y = NativeMlp(gate, up, down)(x).numpy()
    ref = mlp_int8_ref(x.numpy(), gate, up, down)
    # float32 against float64, and an intermediate that may round to the other int8 code at a near-tie
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-3 * float(np.abs(ref).max()))
    assert float(np.abs(y - ref).mean()) < 1e-4 * float(np.abs(ref).max())


def test_mlp_and_layer_refuse_bad_arguments() -> None:
    rng = np.random.default_rng(1)
    gate, up, down = _typed("q8_0", 64, 96, rng), _typed("q8_0", 64, 96, rng), _typed("q8_0", 96, 64, rng)
    with pytest.raises(ValueError, match="down: expected shape"):
        NativeMlp(gate, up, _typed("q8_0", 96, 96, rng))
    mlp = NativeMlp(gate, up, down)
    with pytest.raises(ValueError, match=r"x: expected a contiguous float32 CPU tensor \[T, 96\]"):
        mlp(torch.zeros(2, 64))
    with pytest.raises(ValueError, match="x: expected"):
        mlp(torch.zeros(2, 96, dtype=torch.float64))


@pytest.fixture(scope="module")
def demo_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model as a GGUF file: routed experts Q4_0, shared experts Q4_K (256-blocks), the rest Q8_0."""
    types = {p: "q8_0" for p in PARTS}
    types["routed_experts"] = "q4_0"
    return write_gguf(demo_dir(), tmp_path_factory.mktemp("demo-gguf") / "demo.gguf", types)[0]


def _forced(model, tokens: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Logits of the prompt's last token and of `tokens` fed one by one: [len(tokens) + 1, V]."""
    cache = model.new_cache(len(PROMPT) + len(tokens) + 1)
    out = [model.forward(torch.tensor(PROMPT), 0, cache, last_only=True)]
    for i, t in enumerate(tokens):
        out.append(model.forward(torch.tensor([t]), len(PROMPT) + i, cache))
    return torch.cat(out)


def _greedy_tokens(model, steps: int = STEPS) -> list[int]:  # type: ignore[no-untyped-def]
    cache = model.new_cache(len(PROMPT) + steps + 1)
    tok = int(model.forward(torch.tensor(PROMPT), 0, cache, last_only=True).argmax())
    out = [tok]
    for i in range(steps - 1):
        tok = int(model.forward(torch.tensor([tok]), len(PROMPT) + i, cache).argmax())
        out.append(tok)
    return out


def _native_moe(model) -> bool:  # type: ignore[no-untyped-def]
    return any(b.native is not None and b.native.routing is not None for b in model.blocks)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = DecodeLayer.attend

    def attend(self, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(DecodeLayer, "attend", attend)
    return calls


@pytest.mark.parametrize("source", ["gguf", "int4"])
def test_native_layers_are_the_module_path_bit_for_bit(
    source: str, demo_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every decode step runs every layer natively (the prompt pass never), and the logits are the module
    path's to the bit: the demo model as GGUF (ggml experts) and as released (INT4 experts, --cpu-weights int8)."""
    folder, cpu_weights = (demo_gguf, "bf16") if source == "gguf" else (demo_dir(), "int8")
    with open_checkpoint(folder) as ckpt, OffloadedExperts(ckpt, torch.bfloat16, OffloadConfig()) as runtime:
        model = load_transformer(ckpt, runtime, torch.bfloat16, "cpu", cpu_weights=cpu_weights)
        assert model.native_decode and all(b.native is not None for b in model.blocks)
        kinds = {b.native.routing.expert_kind for b in model.blocks if b.native and b.native.routing}
        assert kinds == {"ggml" if source == "gguf" else "int4"}
        tokens = _greedy_tokens(model)
        calls = _counting(monkeypatch)
        native = _forced(model, tokens)
        assert len(calls) == STEPS * len(model.blocks)
        model.native_decode = False
        module = _forced(model, tokens)
        assert len(calls) == STEPS * len(model.blocks)  # the module path made none
        stats = runtime.stats()
    assert torch.equal(native, module)
    decode = stats.phases["decode"]
    assert decode.tokens == (STEPS - 1) + 2 * STEPS  # the greedy run's and both forced runs' decode tokens
    k, moe_layers = 4, len(model.blocks) - 1  # the demo: top-4, one dense layer
    assert decode.from_ram + decode.from_disk == decode.tokens * k * moe_layers  # each native token booked its experts


def test_native_layers_under_a_budget_match_the_reference_runtime(demo_gguf: Path) -> None:
    """Offloading stays invisible on the native layers: a RAM budget of a few experts over one token's with
    prefetch gives the tokens and logits of the reference runtime (every expert from the mapping, the module path);
    a budget below one token's experts keeps decode on the module path, with the same result."""
    with open_checkpoint(demo_gguf) as ckpt:
        ref_model = load_transformer(ckpt, DequantizedExperts(ckpt, torch.bfloat16), torch.bfloat16, "cpu")
        assert not _native_moe(ref_model)  # the reference runtime keeps MoE layers on the module path
        tokens = _greedy_tokens(ref_model)
        ref = _forced(ref_model, tokens)
        eb, k = ExpertStore(ckpt, None).expert_bytes, ckpt.config.num_experts_per_tok
        for budget, native in ((k + 2, True), (k - 1, False)):
            config = OffloadConfig(budget * eb, 0, True, predict=True)
            with OffloadedExperts(ckpt, torch.bfloat16, config) as runtime:
                model = load_transformer(ckpt, runtime, torch.bfloat16, "cpu")
                assert _native_moe(model) is native
                assert _greedy_tokens(model) == tokens
                assert torch.equal(_forced(model, tokens), ref)
                st = runtime.stats()
                assert st.peak_resident_bytes <= budget * eb
                assert st.released_bytes > 0  # the budget gave experts back (and read them again when chosen)
                assert st.phases["decode"].predicted > 0  # and it guessed the next layers' experts


def test_decode_layer_refuses_bad_arguments(demo_gguf: Path) -> None:
    with open_checkpoint(demo_gguf) as ckpt, OffloadedExperts(ckpt, torch.bfloat16, OffloadConfig()) as runtime:
        model = load_transformer(ckpt, runtime, torch.bfloat16, "cpu")
        moe = next(b for b in model.blocks if b.native is not None and b.native.routing is not None)
        nb = moe.native
        assert nb is not None and nb.routing is not None
        d = nb.hidden
        with pytest.raises(ValueError, match="attn_norm: expected a contiguous bf16 CPU vector"):
            DecodeLayer(moe.attn_norm.float(), moe.mlp_norm, 1e-6, nb.attention, nb.routing, nb.mlp)
        with pytest.raises(ValueError, match="a dense layer needs its MLP"):
            DecodeLayer(moe.attn_norm, moe.mlp_norm, 1e-6, nb.attention, None, None)
        bad = dataclasses.replace(nb.routing, expert_kind="x")
        with pytest.raises(ValueError, match="expert kind 'x'"):
            DecodeLayer(moe.attn_norm, moe.mlp_norm, 1e-6, nb.attention, bad, nb.mlp)
        h = torch.zeros(1, d, dtype=torch.bfloat16)
        with pytest.raises(ValueError, match="h: expected a contiguous bf16 CPU tensor"):
            nb.finish(h.float(), [], [])
        with pytest.raises(ValueError, match="2 routed experts need 6 pointers"):
            nb.finish(h, [1, 2, 3], [0.5, 0.5])
        cache = model.new_cache(4)
        cos, sin = model.rope.cos_sin(torch.tensor([0]))
        with pytest.raises(ValueError, match="outside a cache of 4 rows"):
            nb.attend(h, cache.latent[1], cache.k_pe[1], 4, cos[0], sin[0])
