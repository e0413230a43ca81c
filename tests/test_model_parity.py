"""The forward pass against transformers' DeepseekV3ForCausalLM (an independent implementation), in float32."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from offload.checkpoint import Checkpoint, open_checkpoint
from kernels.dequant import dequantize
from offload.experts.dequantized import DequantizedExperts
from offload.model.loader import load_transformer
from offload.model.transformer import Transformer
from offload.hf_config import HfConfig

transformers = pytest.importorskip("transformers")

BASE = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    q_lora_rank=48,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=16,
    n_shared_experts=1,
    num_experts_per_tok=4,
    n_group=1,
    topk_group=1,
    routed_scaling_factor=2.827,
    norm_topk_prob=True,
    first_k_dense_replace=1,
    rope_theta=50000.0,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
YARN = {"rope_type": "yarn", "original_max_position_embeddings": 16, "beta_slow": 1.0}
CONFIGS = {
    # K2.5's rope: yarn factor 64, beta_fast 32, mscale == mscale_all_dim (softmax rescaled, cos/sin not)
    "kimi-k2.5": dict(rope_scaling={**YARN, "factor": 64.0, "beta_fast": 32.0, "mscale": 1.0, "mscale_all_dim": 1.0}),
    # DeepSeek-V3 routing: 4 groups, 2 kept; eps 1e-6; mscale_all_dim 0 (cos/sin scaled instead)
    "v3-groups": dict(
        n_group=4,
        topk_group=2,
        rms_norm_eps=1e-6,
        rope_scaling={**YARN, "factor": 40.0, "beta_fast": 32.0, "mscale": 1.0, "mscale_all_dim": 0.0},
    ),
    # K2-Instruct's rope: beta_fast == beta_slow == 1
    "k2-instruct": dict(
        rms_norm_eps=1e-6, rope_scaling={**YARN, "factor": 32.0, "beta_fast": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
    ),
    # odd sizes, no q LoRA, v_head_dim != qk_nope_head_dim, halves rope, 2 dense layers, 2 shared, no normalisation
    "odd": dict(
        hidden_size=57,
        intermediate_size=37,
        moe_intermediate_size=19,
        num_hidden_layers=4,
        num_attention_heads=3,
        q_lora_rank=None,
        kv_lora_rank=23,
        qk_nope_head_dim=11,
        qk_rope_head_dim=6,
        v_head_dim=13,
        vocab_size=257,
        n_routed_experts=12,
        num_experts_per_tok=3,
        n_group=3,
        topk_group=2,
        n_shared_experts=2,
        first_k_dense_replace=2,
        norm_topk_prob=False,
        routed_scaling_factor=1.5,
        rope_interleave=False,
    ),
}
PROMPT = 32


def reference_model(name: str, root: Path) -> tuple[Path, object]:
    """A random float32 DeepseekV3ForCausalLM saved to root/name, and the model itself."""
    kw = {**BASE, **CONFIGS[name]}
    cfg = transformers.DeepseekV3Config(**kw, num_key_value_heads=kw["num_attention_heads"])
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"  # grouped_mm needs 16-byte strides; the odd config has none
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(cfg).float().eval()
    g = torch.Generator().manual_seed(len(name))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:  # fan-in scaled, so activations stay O(1) through the layers
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            else:  # norm weights near 1
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        for bname, b in model.named_buffers():
            if bname.endswith("e_score_correction_bias"):  # a real bias, so choice and weights differ
                b.copy_(0.2 * torch.randn(b.shape, generator=g))
    folder = root / name
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder, ref = reference_model(request.param, tmp_path_factory.mktemp("parity"))
    ckpt = open_checkpoint(folder)
    ours = load_transformer(ckpt, DequantizedExperts(ckpt, torch.float32), torch.float32)
    ids = torch.randint(0, ckpt.config.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = ref(ids[None]).logits[0].float()  # type: ignore[operator]
    yield request.param, ours, ids, want
    ckpt.close()


def full(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    return model.forward(ids, 0, model.new_cache(len(ids)))


def test_prefill_matches_transformers(pair, record_property):
    name, ours, ids, want = pair
    got = full(ours, ids)
    diff = (got - want).abs().max().item()
    record_property(f"max_abs_diff_{name}", diff)
    print(f"{name}: prefill max |diff| = {diff:.2e} (logit std {want.std():.3f})")
    assert want.std() > 0.3  # not a degenerate model
    assert diff <= 1e-4


def test_decode_over_latent_cache_matches_one_pass(pair):
    name, ours, ids, want = pair
    cache = ours.new_cache(len(ids))
    steps = torch.cat([ours.forward(ids[i : i + 1], i, cache) for i in range(len(ids))])
    diff = (steps - want).abs().max().item()
    print(f"{name}: token-by-token decode max |diff| = {diff:.2e}")
    assert diff <= 1e-4


def test_chunked_prefill_then_decode(pair):
    """A prompt fed in pieces (prefill over a non-empty cache) gives the same logits."""
    _, ours, ids, want = pair
    cache = ours.new_cache(len(ids))
    parts = [ours.forward(ids[a:b], a, cache) for a, b in ((0, 11), (11, 12), (12, 29), (29, 32))]
    assert (torch.cat(parts) - want).abs().max().item() <= 1e-4


def test_decode_never_expands_the_cache(pair):
    """Single-token steps attend in latent space: the expanded (per-head keys) path is never taken."""
    _, ours, ids, _ = pair
    cache = ours.new_cache(8)
    ours.forward(ids[:4], 0, cache)
    for block in ours.blocks:
        block.attn._expanded = _forbidden  # type: ignore[method-assign]
    try:
        for i in range(4, 8):
            ours.forward(ids[i : i + 1], i, cache)
    finally:
        for block in ours.blocks:
            del block.attn._expanded
    assert cache.latent.shape[-1] + cache.k_pe.shape[-1] == ours.cfg.kv_values_per_token_layer


def _forbidden(*args, **kwargs):
    raise AssertionError("decode materialised per-head keys")


# ---- the project's own checkpoints ------------------------------------------------------------------------------
def load(folder: Path, dtype: torch.dtype = torch.float32) -> tuple[Checkpoint, Transformer]:
    ckpt = open_checkpoint(folder)
    return ckpt, load_transformer(ckpt, DequantizedExperts(ckpt, dtype), dtype)


def dequantized_copy(src: Path, dst: Path) -> Path:
    """The same model as a float32 single-file checkpoint with every weight dequantized (no quantization_config)."""
    ckpt = open_checkpoint(src)
    cfg = HfConfig(ckpt.config, "deepseek_v3", "float32")
    tensors: dict[str, torch.Tensor] = {}
    for _, info in ckpt.all_tensors():
        name = info.name.removeprefix(ckpt.tensor_prefix)
        if not name.startswith(("model.", "lm_head.")):
            continue  # vision tower
        module, _, suffix = name.rpartition(".")
        if suffix in ("weight_scale", "weight_shape", "weight_scale_inv"):
            continue
        if suffix == "weight_packed" or f"{module}.weight_scale_inv" in ckpt:
            tensors[f"{module}.weight"] = dequantize(ckpt.weight(module), torch.float32)
        else:
            tensors[name] = ckpt.tensor(name).float().clone()
    ckpt.close()
    dst.mkdir()
    save_file(tensors, dst / "model.safetensors")
    (dst / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    return dst


@pytest.mark.parametrize("experts", ["int4", "fp8"])
def test_quantized_experts_give_the_logits_of_their_dequantized_weights(tiny_dirs, tmp_path, experts):
    src = tiny_dirs[("k2", experts)]
    ids = torch.arange(3, 3 + PROMPT) * 7 % 300
    ckpt, ours = load(src)
    got = full(ours, ids)
    ckpt.close()
    plain = dequantized_copy(src, tmp_path / "dequantized")
    ckpt, ref_ours = load(plain)
    assert (full(ref_ours, ids) - got).abs().max().item() <= 1e-5
    ckpt.close()
    ref = transformers.DeepseekV3ForCausalLM.from_pretrained(plain, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(ids[None]).logits[0]
    assert (got - want).abs().max().item() <= 1e-4


def test_nested_k25_layout_gives_the_flat_layout_logits(tiny_dirs):
    ids = torch.arange(PROMPT) * 5 % 300
    out = {}
    for layout in ("k2.5", "k2"):
        ckpt, model = load(tiny_dirs[(layout, "int4")])
        out[layout] = full(model, ids)
        ckpt.close()
    assert torch.equal(out["k2.5"], out["k2"])


def test_bf16_compute_stays_close_to_float32(tiny_k25):
    ids = torch.arange(PROMPT) * 5 % 300
    ckpt, f32 = load(tiny_k25)
    _, bf16 = load(tiny_k25, torch.bfloat16)
    a, b = full(f32, ids), full(bf16, ids)
    rel = (a - b).norm(dim=-1) / a.norm(dim=-1)  # per position; a near-tie in routing may flip one expert
    assert rel.median().item() <= 0.02
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    ckpt.close()
