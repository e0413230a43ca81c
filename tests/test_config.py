"""HfConfig (architecture + layout, dtype, quantization) from config.json in all layouts; derived sizes against
hand arithmetic; clear errors."""

from __future__ import annotations

import copy
import json

import pytest

from offload.hf_config import HfConfig
from offload.quant import ConfigError
from offload.synth.presets import preset_config
from tests.sizes import sizes

from .conftest import DATA

K25 = json.loads((DATA / "kimi-k2.5" / "config.json").read_text())


def flat(raw: dict, model_type: str) -> dict:
    d = copy.deepcopy(raw["text_config"])
    d["model_type"] = model_type
    return d


def test_k25_nested_layout_reads_text_config_and_prefix():
    h = HfConfig.from_dict(K25)
    c = h.model
    assert h.layout == "kimi_k25" and h.tensor_prefix == "language_model."
    assert (c.hidden_size, c.num_hidden_layers, c.n_routed_experts, c.num_experts_per_tok) == (7168, 61, 384, 8)
    assert h.quant.format == "int4" and h.quant.group_size == 32
    assert c.rope_scaling is not None and c.rope_scaling.factor == 64 and c.rope_scaling.beta_fast == 32
    assert c.rms_norm_eps == 1e-5 and c.routed_scaling_factor == 2.827 and c.eos_token_ids == (163585,)
    assert list(c.moe_layers) == list(range(1, 61))


def test_k25_sizes_against_hand_arithmetic():
    h = HfConfig.from_dict(K25)
    c = h.model
    # packed nibbles of gate+up+down, bf16 scales (gate/up [2048, 224], down [7168, 64]); 24,772,608 in KIMI.md
    payload = 3 * 7168 * 2048 // 2 + (2 * 2048 * 224 + 7168 * 64) * 2
    assert payload == 24_772_608
    assert sizes(h).expert_bytes == payload + 3 * 2 * 4  # plus three int32 weight_shape [2] tensors
    assert sizes(h).routed_expert_bytes == sizes(h).expert_bytes * 384 * 60
    assert sizes(h).routed_bytes_per_token == sizes(h).expert_bytes * 8 * 60  # ~11.89 GB
    assert round(sizes(h).routed_bytes_per_token / 1e9, 2) == 11.89
    assert c.kv_bytes_per_token() == (512 + 64) * 61 * 2 == 70_272
    parts = sizes(h).nonexpert_bytes_by_part
    assert parts["embed"] == parts["lm_head"] == 163840 * 7168 * 2
    attn = 1536 * 7168 + 64 * 192 * 1536 + 576 * 7168 + 64 * 256 * 512 + 7168 * 64 * 128
    assert parts["attention"] == attn * 2 * 61
    assert parts["dense_mlp"] == 3 * 18432 * 7168 * 2
    assert parts["shared_experts"] == 3 * 2048 * 7168 * 2 * 60
    assert parts["router"] == (384 * 7168 * 2 + 384 * 4) * 60
    assert parts["norms"] == (2 * 7168 + 1536 + 512) * 2 * 61 + 7168 * 2


def test_flat_layouts_equal_nested():
    nested = HfConfig.from_dict(K25)
    for mt in ("kimi_k2", "deepseek_v3"):
        h = HfConfig.from_dict(flat(K25, mt))
        assert h.layout == mt and h.tensor_prefix == ""
        assert h.model == nested.model  # the layout is storage: the architecture is the same
        assert (
            sizes(h).expert_bytes == sizes(nested).expert_bytes
            and sizes(h).nonexpert_bytes == sizes(nested).nonexpert_bytes
        )


def test_fp8_deepseek_v3_config():
    d = flat(K25, "deepseek_v3")
    d.update(n_routed_experts=256, n_group=8, topk_group=4, first_k_dense_replace=3, vocab_size=129280)
    d["quantization_config"] = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    }
    h = HfConfig.from_dict(d)
    assert h.quant.format == "fp8" and h.quant.block == (128, 128)
    # FP8 expert: 3 e4m3 matrices + f32 scales [16, 56] (gate, up) and [56, 16] (down)
    assert sizes(h).expert_bytes == 3 * 2048 * 7168 + (16 * 56 * 2 + 56 * 16) * 4
    assert not h.quant.quantizes("lm_head") and h.quant.quantizes("model.layers.0.self_attn.q_a_proj")


def test_int4_ignore_list_quantizes_only_routed_experts():
    h = HfConfig.from_dict(K25)
    q, p = h.quant, h.tensor_prefix
    assert q.quantizes("model.layers.5.mlp.experts.17.down_proj", p)
    for m in (
        "lm_head",
        "model.layers.5.self_attn.kv_b_proj",
        "model.layers.5.mlp.shared_experts.up_proj",
        "model.layers.0.mlp.gate_proj",
    ):
        assert not q.quantizes(m, p), m


def test_transformers5_rope_parameters():
    d = flat(K25, "deepseek_v3")
    del d["rope_scaling"], d["rope_theta"]
    d["rope_parameters"] = {
        "rope_type": "yarn",
        "rope_theta": 50000.0,
        "factor": 64.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1,
        "mscale_all_dim": 1,
    }
    h = HfConfig.from_dict(d)
    c = h.model
    assert c.rope_theta == 50000.0 and c.rope_scaling == HfConfig.from_dict(K25).model.rope_scaling


@pytest.mark.parametrize("layout", ["k2.5", "k2", "deepseek-v3"])
@pytest.mark.parametrize("experts", ["int4", "fp8", "bf16"])
def test_to_dict_round_trips(layout, experts):
    h = preset_config("mini", layout, experts)
    assert HfConfig.from_dict(json.loads(json.dumps(h.to_dict()))) == h


def mutate(path: str, value: object) -> dict:
    d = copy.deepcopy(K25)
    node = d
    *keys, last = path.split(".")
    for k in keys:
        node = node[k]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return d


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("model_type", "llama", r"model_type = 'llama' is not supported"),
        ("text_config", KeyError, r"needs a 'text_config'"),
        ("text_config.scoring_func", "softmax", r"scoring_func = 'softmax'"),
        ("text_config.topk_method", "greedy", r"topk_method = 'greedy'"),
        ("text_config.hidden_act", "gelu", r"hidden_act = 'gelu'"),
        ("text_config.moe_layer_freq", 2, r"moe_layer_freq = 2"),
        ("text_config.hidden_size", KeyError, r"no 'hidden_size'"),
        ("text_config.hidden_size", -5, r"hidden_size = -5"),
        ("text_config.n_group", 5, r"n_routed_experts = 384 is not divisible by n_group = 5"),
        ("text_config.topk_group", 4, r"topk_group = 4 exceeds n_group = 1"),
        ("text_config.num_experts_per_tok", 400, r"num_experts_per_tok = 400"),
        ("text_config.torch_dtype", "int8", r"dtype = 'int8'"),
        ("text_config.rope_scaling.type", "dynamic", r"rope_scaling type 'dynamic'"),
        ("text_config.quantization_config.format", "float-quantized", r"format = 'float-quantized'"),
        ("text_config.quantization_config.quant_method", "gptq", r"quant_method = 'gptq'"),
        ("text_config.quantization_config.config_groups.group_0.weights.num_bits", 8, r"num_bits = 8"),
        ("text_config.quantization_config.config_groups.group_0.weights.symmetric", False, r"symmetric = False"),
        ("text_config.quantization_config.config_groups.group_0.weights.group_size", 12, r"group_size = 12"),
        (
            "text_config.quantization_config.config_groups.group_0.input_activations",
            {"num_bits": 8},
            r"activation quantization",
        ),
        ("text_config.moe_intermediate_size", 2056, r"moe_intermediate_size = 2056 is not a multiple"),
        ("text_config.qk_rope_head_dim", 63, r"qk_rope_head_dim = 63"),
    ],
)
def test_unsupported_values_name_field_and_value(path, value, message):
    with pytest.raises(ConfigError, match=message):
        HfConfig.from_dict(mutate(path, value))


def test_conflicting_quantization_configs():
    d = copy.deepcopy(K25)
    d["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    with pytest.raises(ConfigError, match="both at the top level and in text_config"):
        HfConfig.from_dict(d)


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        HfConfig.from_dir(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"config\.json is missing"):
        HfConfig.from_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        HfConfig.from_dir(tmp_path)


def test_k2_instruct_fp8_config_with_equal_yarn_betas():
    d = flat(K25, "kimi_k2")
    d["rope_scaling"] = {
        "type": "yarn",
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 1.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    }
    d.update(max_position_embeddings=131072, rms_norm_eps=1e-6)
    d["quantization_config"] = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    }
    h = HfConfig.from_dict(d)
    c = h.model
    assert c.rope_scaling is not None and c.rope_scaling.beta_fast == c.rope_scaling.beta_slow == 1.0
    assert h.quant.format == "fp8"


def test_k25_token_ids_fall_back_to_the_top_level():
    d = copy.deepcopy(K25)
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        del d["text_config"][k]
    h = HfConfig.from_dict(d)
    c = h.model
    assert (c.bos_token_id, c.eos_token_ids, c.pad_token_id) == (163584, (163585,), 163839)


def test_fp8_modules_to_not_convert_match_as_substrings():
    d = flat(K25, "deepseek_v3")
    d["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "weight_block_size": [128, 128],
        "modules_to_not_convert": ["model.layers.0.mlp"],
    }
    q = HfConfig.from_dict(d).quant
    assert not q.quantizes("model.layers.0.mlp.down_proj") and not q.quantizes("lm_head")
    assert q.quantizes("model.layers.1.mlp.experts.3.down_proj")
