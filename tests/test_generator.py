"""The synthetic checkpoint generator: deterministic, the real format (checked by transformers and
compressed-tensors loading it), numerically healthy weights, non-degenerate routing, Kimi's tokenizer format."""

from __future__ import annotations

from tests.sizes import sizes
import base64
import json
import warnings

import numpy as np
import pytest
import torch

from kernels.fp8 import dequantize_fp8
from kernels.int4 import dequantize_int4, unpack_int4
from offload.checkpoint import Checkpoint, open_checkpoint
from offload.synth.presets import PRESETS, preset_config
from offload.synth.tokenizer import SPECIAL_OFFSETS, read_tiktoken_model

from .conftest import make


def raw_bytes(ck: Checkpoint) -> dict[str, bytes]:
    return {i.name: s.view(i.name).contiguous().view(torch.uint8).numpy().tobytes() for s, i in ck.all_tensors()}


def test_same_seed_same_bytes_other_seed_different(tmp_path, tiny_k25):
    again = make(tmp_path, "tiny", "k2.5", "int4", seed=0)
    other = make(tmp_path, "tiny", "k2.5", "int4", seed=1)
    for f in ("config.json", "tiktoken.model", "tokenizer_config.json", "model.safetensors.index.json"):
        assert (again / f).read_bytes() == (tiny_k25 / f).read_bytes()
    for shard in tiny_k25.glob("model-*.safetensors"):
        assert (again / shard.name).read_bytes() == shard.read_bytes()
    with open_checkpoint(tiny_k25) as a, open_checkpoint(other) as b:
        ra, rb = raw_bytes(a), raw_bytes(b)
        changed = [n for n in ra if n.endswith("weight_packed") and ra[n] != rb[n]]
        assert len(changed) == sum(n.endswith("weight_packed") for n in ra)


def test_layouts_hold_the_same_weights(tiny_dirs):
    with (
        open_checkpoint(tiny_dirs[("k2.5", "int4")]) as nested,
        open_checkpoint(tiny_dirs[("deepseek-v3", "int4")]) as flat,
    ):
        rn = {n.removeprefix("language_model."): b for n, b in raw_bytes(nested).items()}
        rf = raw_bytes(flat)
        assert set(rf) <= set(rn)
        assert all(rn[n] == rf[n] for n in rf)


def test_transformers_loads_bf16_checkpoint_with_no_missing_keys(tiny_dirs):
    transformers = pytest.importorskip("transformers")
    folder = tiny_dirs[("deepseek-v3", "bf16")]
    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with open_checkpoint(folder) as ck:
        assert torch.equal(model.model.layers[1].mlp.gate.weight.data, ck.tensor("model.layers.1.mlp.gate.weight"))
        ids = torch.arange(1, 17)[None]
        logits = model(ids).logits.float()
    # healthy numerics: finite, neither collapsed nor exploding, after all layers
    assert torch.isfinite(logits).all() and 0.2 < logits.std().item() < 5


def test_compressed_tensors_decompresses_our_int4_experts_to_our_dequantization(tiny_dirs):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("compressed_tensors")
    folder = tiny_dirs[("deepseek-v3", "int4")]
    cfg = transformers.utils.quantization_config.CompressedTensorsConfig(run_compressed=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            folder, output_loading_info=True, quantization_config=cfg
        )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with open_checkpoint(folder) as ck:
        c = ck.config
        layer = 2
        experts = model.model.layers[layer].mlp.experts
        gate_up = experts.gate_up_proj.detach().float()  # [E, 2I, H], gate rows first
        down = experts.down_proj.detach().float()  # [E, H, I]
        for e in range(c.n_routed_experts):
            w = {}
            for proj in ("gate_proj", "up_proj", "down_proj"):
                t = ck.linear(f"model.layers.{layer}.mlp.experts.{e}.{proj}")
                w[proj] = dequantize_int4(t["weight_packed"], t["weight_scale"], int(t["weight_shape"][1]))
            i = c.moe_intermediate_size
            assert torch.equal(gate_up[e, :i], w["gate_proj"].to(torch.bfloat16).float())
            assert torch.equal(gate_up[e, i:], w["up_proj"].to(torch.bfloat16).float())
            assert torch.equal(down[e], w["down_proj"].to(torch.bfloat16).float())


def test_int4_experts_are_symmetric_and_scaled_to_fan_in(tmp_path):
    folder = make(tmp_path, "mini", "k2.5", "int4")
    with open_checkpoint(folder) as ck:
        c = ck.config
        t = ck.linear("model.layers.2.mlp.experts.100.gate_proj")
        q = unpack_int4(t["weight_packed"], c.hidden_size).to(torch.int32)
        assert q.min().item() >= -7 and q.max().item() <= 7 and abs(q.float().mean().item()) < 0.05
        w = dequantize_int4(t["weight_packed"], t["weight_scale"], c.hidden_size)
        assert w.std().item() == pytest.approx(c.hidden_size**-0.5, rel=0.1)


def test_fp8_weights_and_scales(tiny_dirs):
    with open_checkpoint(tiny_dirs[("k2", "fp8")]) as ck:
        c = ck.config
        t = ck.linear("model.layers.1.self_attn.kv_b_proj")
        assert t["weight"].dtype == torch.float8_e4m3fn and t["weight_scale_inv"].dtype == torch.float32
        w = dequantize_fp8(t["weight"], t["weight_scale_inv"], ck.hf.quant.block)
        assert torch.isfinite(w).all() and w.std().item() == pytest.approx(c.kv_lora_rank**-0.5, rel=0.25)
        assert ck.tensor("lm_head.weight").dtype == torch.bfloat16  # lm_head and router stay bf16
        assert ck.tensor("model.layers.1.mlp.gate.weight").dtype == torch.bfloat16


def route(ck: Checkpoint, layer: int, tokens: int = 2000) -> np.ndarray:
    """Expert counts when random unit-RMS hidden states go through layer's router (sigmoid + bias choice)."""
    c = ck.config
    g = ck.tensor(f"model.layers.{layer}.mlp.gate.weight").float()
    bias = ck.tensor(f"model.layers.{layer}.mlp.gate.e_score_correction_bias").float()
    x = torch.randn(tokens, c.hidden_size, generator=torch.Generator().manual_seed(0))
    scores = torch.sigmoid(x @ g.T) + bias
    top = scores.topk(c.num_experts_per_tok, dim=-1).indices
    return np.bincount(top.flatten().numpy(), minlength=c.n_routed_experts)


def test_routing_is_not_degenerate_and_skew_skews(tmp_path):
    flat = make(tmp_path, "mini", "k2", "int4", seed=3)
    skewed = make(tmp_path, "mini", "k2", "int4", seed=3, skew=0.1)
    with open_checkpoint(flat) as a, open_checkpoint(skewed) as b:
        ca, cb = route(a, 1), route(b, 1)
    n = a.config.n_routed_experts
    assert (ca > 0).mean() > 0.95 and ca.max() < 4 * ca.mean()  # every expert gets used, none dominates
    top_share = lambda c: np.sort(c)[::-1][: n // 10].sum() / c.sum()  # noqa: E731
    assert top_share(cb) > top_share(ca) + 0.1  # the 10% most popular experts take a clearly larger share


def test_tokenizer_in_kimi_format(tiny_k25):
    vocab = read_tiktoken_model(tiny_k25 / "tiktoken.model")
    assert vocab[:256] == [bytes([b]) for b in range(256)]
    known = set(vocab[:256])
    for tok in vocab[256:]:  # every merge is two earlier tokens
        assert any(tok[:k] in known and tok[k:] in known for k in range(1, len(tok))), tok
        known.add(tok)
    line = (tiny_k25 / "tiktoken.model").read_text().splitlines()[300]
    assert base64.b64decode(line.split()[0]) == vocab[300] and line.split()[1] == "300"
    tc = json.loads((tiny_k25 / "tokenizer_config.json").read_text())
    cfg = open_checkpoint(tiny_k25).config
    base = len(vocab)
    assert cfg.vocab_size == base + 256 and cfg.bos_token_id == base and cfg.eos_token_ids == (base + 1,)
    assert cfg.pad_token_id == base + 255
    decoder = {int(k): v["content"] for k, v in tc["added_tokens_decoder"].items()}
    assert decoder == {base + k: name for k, name in SPECIAL_OFFSETS.items()}
    assert decoder[base + 2] == "<|im_end|>" and decoder[base + 22] == "<think>"
    assert tc["bos_token"] == "[BOS]" and tc["eos_token"] == "[EOS]" and tc["pad_token"] == "[PAD]"


def test_chat_template_renders_kimi_turns(tiny_k25):
    jinja2 = pytest.importorskip("jinja2")
    template = json.loads((tiny_k25 / "tokenizer_config.json").read_text())["chat_template"]
    env = jinja2.Environment()
    env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False)
    t = env.from_string(template)
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "r"},
        {"role": "user", "content": "Bye"},
    ]
    out = t.render(messages=msgs, add_generation_prompt=True)
    assert out == (
        "<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI.<|im_end|>"
        "<|im_user|>user<|im_middle|>Hi<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><think></think>Hello!<|im_end|>"
        "<|im_user|>user<|im_middle|>Bye<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><think>"
    )
    off = t.render(
        messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        add_generation_prompt=True,
        thinking=False,
    )
    assert (
        off == "<|im_system|>system<|im_middle|>S<|im_end|><|im_user|>user<|im_middle|>Q<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><think></think>"
    )


def test_preset_sizes():
    mini = preset_config("mini")
    m = mini.model
    assert m.n_routed_experts == 384 and m.num_experts_per_tok == 8 and m.first_k_dense_replace == 1
    assert 150e6 < sizes(mini).total_bytes < 250e6
    bench = preset_config("bench")
    assert 100e6 < sizes(bench).routed_bytes_per_token < 1e9 and 2e9 < sizes(bench).total_bytes < 10e9
    assert sizes(preset_config("tiny")).total_bytes < 5e6
    assert set(PRESETS) == {"tiny", "mini", "bench"}
