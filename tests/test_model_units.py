"""Model pieces against hand arithmetic: YaRN, softmax scale, router, cache bounds, expert access."""

from __future__ import annotations

from tests.sizes import sizes
import math

import pytest
import torch

from offload.checkpoint import Checkpoint, open_checkpoint
from offload.hf_config import HfConfig
from offload.experts.dequantized import DequantizedExperts
from offload.model.cache import CacheFullError, LatentCache
from offload.model.loader import compute_dtype, load_transformer
from offload.model.mlp import MoE
from offload.model.rope import Rope, cos_sin_factor, inv_freq, softmax_scale
from offload.model.router import Router
from tests.conftest import DATA

K25_HF = HfConfig.from_dir(DATA / "kimi-k2.5")
K25 = K25_HF.model


def test_yarn_frequencies_for_k25_by_hand():
    rs = K25.rope_scaling
    assert rs is not None
    f = inv_freq(64, 50000.0, rs)
    base = 50000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    # correction range for d = 64, L = 4096: low = floor(8.x) = 8, high = ceil(19.x) = 20
    low = 64 * math.log(4096 / (32 * 2 * math.pi)) / (2 * math.log(50000))
    high = 64 * math.log(4096 / (1 * 2 * math.pi)) / (2 * math.log(50000))
    assert math.floor(low) == 8 and math.ceil(high) == 20
    assert torch.allclose(f[:9].double(), base[:9], rtol=1e-6)  # i <= 8: original frequencies
    assert torch.allclose(f[20:].double(), base[20:] / 64, rtol=1e-6)  # i >= 20: interpolated by the factor
    ramp = (14 - 8) / (20 - 8)
    assert math.isclose(f[14].item(), base[14].item() / 64 * ramp + base[14].item() * (1 - ramp), rel_tol=1e-6)


def test_softmax_scale_and_cos_sin_factor_for_k25():
    m = 0.1 * 1.0 * math.log(64) + 1  # mscale_all_dim = 1
    assert math.isclose(m, 1.41589, rel_tol=1e-5)
    assert math.isclose(softmax_scale(K25), 192**-0.5 * m * m, rel_tol=1e-12)
    assert math.isclose(softmax_scale(K25), 0.14468, rel_tol=1e-4)
    assert cos_sin_factor(K25.rope_scaling) == 1.0  # mscale == mscale_all_dim: cos/sin unscaled


def test_rope_rotates_adjacent_pairs():
    rope = Rope(K25)
    x = torch.zeros(1, 64)
    x[0, 0] = 1.0  # the pair (x0, x1) rotates by pos * inv_freq[0] = pos
    cos, sin = rope.cos_sin(torch.tensor([3]))
    y = rope.apply(x, cos, sin)
    assert torch.allclose(y[0, :2], torch.tensor([math.cos(3), math.sin(3)]), atol=1e-6)
    assert y[0, 2:].abs().max() == 0  # a halves pairing would have moved x0 into x32


def test_k25_latent_cache_is_576_values_per_token_and_layer():
    cache = LatentCache(K25, max_tokens=2, dtype=torch.bfloat16)
    assert cache.latent.shape[-1] + cache.k_pe.shape[-1] == 576
    assert cache.nbytes == 2 * 70_272  # 61 layers x 576 x 2 bytes per token


def _router(**kw) -> Router:
    args = dict(
        weight=torch.eye(4), bias=torch.zeros(4), top_k=2, n_group=1, topk_group=1, norm_topk_prob=True, scaling=2.0
    )
    return Router(**{**args, **kw})  # type: ignore[arg-type]


def test_router_bias_steers_choice_but_not_weights():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])  # scores sigmoid(x): expert 3 > 2 > 1 > 0
    ids, w = _router()(x)
    assert sorted(ids[0].tolist()) == [2, 3]
    ids, w = _router(bias=torch.tensor([5.0, 0, 0, 0]))(x)  # the bias pulls expert 0 in ...
    chosen = dict(zip(ids[0].tolist(), w[0].tolist(), strict=True))
    s = torch.sigmoid(x[0])
    assert sorted(chosen) == [0, 3]
    assert math.isclose(chosen[0], 2.0 * s[0].item() / (s[0] + s[3]).item(), rel_tol=1e-6)  # ... but weighs unbiased


def test_router_without_normalisation_scales_raw_scores():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    _, w = _router(norm_topk_prob=False)(x)
    assert torch.allclose(w.sort().values, 2.0 * torch.sigmoid(torch.tensor([[2.0, 3.0]])))


def test_group_limited_routing_by_hand():
    # 8 experts in 4 groups of 2; keep 2 groups by the sum of their best two scores
    x = torch.tensor([[3.0, -4.0, 2.0, 2.0, 0.0, 0.0, 2.9, -5.0]])
    ids, _ = _router(weight=torch.eye(8), bias=torch.zeros(8), top_k=2, n_group=4, topk_group=2)(x)
    # group sums of sigmoid: g0 = s(3)+s(-4) = 0.971, g1 = 2 s(2) = 1.762, g2 = 2 s(0) = 1.0, g3 = s(2.9)+s(-5) = 0.955
    # groups 1 and 2 stay; their best experts are 2 and 3 (0.881 each), ahead of 4 and 5 (0.5)
    assert sorted(ids[0].tolist()) == [2, 3]  # plain top-2 would take experts 0 and 6
    ids_flat, _ = _router(weight=torch.eye(8), bias=torch.zeros(8), top_k=2)(x)
    assert sorted(ids_flat[0].tolist()) == [0, 6]


def test_cache_overflow_is_a_clear_error():
    cache = LatentCache(K25, max_tokens=4, dtype=torch.float32)
    with pytest.raises(CacheFullError, match="does not fit a cache of 4 tokens"):
        cache.write(0, 3, torch.zeros(2, 512), torch.zeros(2, 64))


def test_compute_dtype_names():
    assert compute_dtype("float32") is torch.float32 and compute_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="choose one of bfloat16, float32"):
        compute_dtype("fp16")


class Recording(DequantizedExperts):
    """Counts which experts the MoE layers ask for."""

    def __init__(self, ckpt: Checkpoint) -> None:
        super().__init__(ckpt, torch.float32)
        self.asked: list[tuple[int, int]] = []

    def weights(self, layer: int, expert: int):
        self.asked.append((layer, expert))
        return super().weights(layer, expert)

    def packed(self, layer: int, expert: int):
        self.asked.append((layer, expert))
        return super().packed(layer, expert)


def test_experts_come_only_through_the_runtime(tiny_k25):
    with open_checkpoint(tiny_k25) as ckpt:
        runtime = Recording(ckpt)
        model = load_transformer(ckpt, runtime, torch.float32)
        assert runtime.asked == []  # loading reads no routed expert
        moes = [b.mlp for b in model.blocks if isinstance(b.mlp, MoE)]
        assert len(moes) == len(ckpt.config.moe_layers) and all(m.experts is runtime for m in moes)
        assert not [t for m in moes for t in vars(m).values() if isinstance(t, torch.Tensor)]  # no expert tensors
        model.forward(torch.tensor([1, 2, 3]), 0, model.new_cache(3))
        cfg = ckpt.config
        moe_layers = cfg.num_hidden_layers - cfg.first_k_dense_replace
        assert runtime.calls == moe_layers  # one call per MoE layer per forward
        assert {layer for layer, _ in runtime.asked} == set(cfg.moe_layers)
        assert len(runtime.asked) <= moe_layers * 3 * cfg.num_experts_per_tok


@pytest.mark.parametrize(
    "rope",
    [
        {"factor": 64.0, "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},  # K2.5
        {"factor": 64.0, "beta_fast": 32.0, "beta_slow": 1.0, "mscale_all_dim": 1.0},  # mscale omitted
        {"factor": 40.0, "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.0},
        {"factor": 32.0, "beta_fast": 1.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},  # K2-Instruct
        {"factor": 8.0, "attention_factor": 1.3},
        {"factor": 16.0, "beta_fast": 24.0, "beta_slow": 2.0, "truncate": False},
    ],
)
def test_yarn_matches_transformers(rope):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_type": "yarn", "rope_theta": 50000.0, "original_max_position_embeddings": 4096, **rope}
    hf = transformers.DeepseekV3Config(rope_parameters=params, max_position_embeddings=262144)
    want_freq, want_factor = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    raw = K25_HF.to_dict()
    raw["text_config"]["rope_scaling"] = {"type": "yarn", **params}
    cfg = HfConfig.from_dict(raw).model
    assert torch.allclose(inv_freq(64, 50000.0, cfg.rope_scaling), want_freq, rtol=1e-6, atol=0)
    assert math.isclose(cos_sin_factor(cfg.rope_scaling), want_factor, rel_tol=1e-9)


def test_loading_reports_every_non_expert_byte(tiny_dirs):
    for key in (("k2.5", "int4"), ("deepseek-v3", "fp8")):
        with open_checkpoint(tiny_dirs[key]) as ckpt:
            seen: list[int] = []
            load_transformer(ckpt, DequantizedExperts(ckpt), torch.float32, on_bytes=seen.append)
            assert sum(seen) == sizes(ckpt.hf).nonexpert_bytes


def test_native_int4_kernel_gives_the_dequantized_logits(tiny_k25, native):
    """The runtime's two paths for INT4 experts: the native kernel on the packed bytes, and dequantize + matmul."""
    ids = torch.arange(16) * 7 % 300
    with open_checkpoint(tiny_k25) as ckpt:
        fast = DequantizedExperts(ckpt, torch.float32)
        slow = DequantizedExperts(ckpt, torch.float32, native=False)
        assert fast.native and not slow.native
        a = load_transformer(ckpt, fast, torch.float32)
        b = load_transformer(ckpt, slow, torch.float32)
        la, lb = a.forward(ids, 0, a.new_cache(16)), b.forward(ids, 0, b.new_cache(16))
        assert (la - lb).abs().max().item() <= 1e-4
        assert fast.expert_runs == slow.expert_runs > 0


def test_native_kernel_refuses_other_formats(tiny_dirs):
    with open_checkpoint(tiny_dirs[("k2", "fp8")]) as ckpt, pytest.raises(ValueError, match="stores fp8"):
        DequantizedExperts(ckpt, native=True)
