"""The planner against hand arithmetic (Kimi K2.5 and friends on known machines)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from offload.checkpoint.layout import layout_storage
from offload.errors import OffloadError
from offload.hf_config import HfConfig
from offload.planner.plan import GiB, Plan, RuntimeConfig, make_plan
from offload.planner.profile import Profile
from offload.planner.report import plan_sections, summary_lines
from offload.planner.shapes import SHAPES, resolve_model, shape_config

K25 = shape_config("kimi-k2.5")


def plan_for(name: str, hf: HfConfig, profile: Profile, rt: RuntimeConfig, **kw: Any) -> Plan:
    """make_plan with the storage the model's published release has (its config's quantization)."""
    return make_plan(name, hf.model, layout_storage(hf), profile, rt, **kw)


EXPERT = 24_772_608  # KIMI.md §3: one INT4 expert, packed weights and scales
ROUTED = 60 * 384 * EXPERT
PER_TOKEN = 8 * 60 * EXPERT  # 11.89 GB
KV_TOKEN = 70_272  # 61 layers x 576 values x 2 bytes

# non-expert parameters of K2.5, by hand from KIMI.md §1-§2
ATT_LAYER = 1536 * 7168 + 12288 * 1536 + 576 * 7168 + 16384 * 512 + 7168 * 8192  # 101,122,048
ATT_ROWS = 1536 + 12288 + 576 + 16384 + 7168  # output rows of the five projections
SHARED_LAYER = 3 * 7168 * 2048
DENSE = 3 * 7168 * 18432
VOCAB_H = 163840 * 7168
NORMS = 61 * (2 * 7168 + 512 + 1536) + 7168
BF16 = {
    "attention": 61 * ATT_LAYER * 2,  # 12,336,889,856
    "norms": NORMS * 2,
    "dense_mlp": DENSE * 2,
    "router": 60 * 384 * 7168 * 2 + 60 * 384 * 4,  # bf16 weight + float32 bias
    "shared_experts": 60 * SHARED_LAYER * 2,
    "lm_head": VOCAB_H * 2,
}

BOX = Profile(
    name="box",
    description="round numbers",
    gpu_name="G",
    gpu_memory_gib=24,
    gpu_bandwidth_gbs=1000,
    gpu_tflops=100,
    pcie_gbs=25,
    ram_gib=256,
    dram_gbs=80,
    nvme_gbs=5,
    cpu_cores=16,
    cpu_gflops=1000,
)
CPU_BOX = Profile(
    name="cpu",
    description="no gpu",
    gpu_name="",
    gpu_memory_gib=0,
    gpu_bandwidth_gbs=0,
    gpu_tflops=0,
    pcie_gbs=0,
    ram_gib=256,
    dram_gbs=80,
    nvme_gbs=5,
    cpu_cores=16,
    cpu_gflops=1000,
)


def test_k25_sizes_by_hand():
    plan = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig())
    assert plan.expert_bytes == EXPERT and plan.n_experts == 23_040
    assert plan.routed_expert_bytes == ROUTED == 570_760_888_320
    assert plan.routed_bytes_per_token == PER_TOKEN == 11_890_851_840
    assert plan.kv_bytes_per_token == KV_TOKEN
    gpu = {p.part: p.nbytes for p in plan.placements if p.where == "gpu" and p.part != "kv_cache"}
    assert gpu == BF16
    assert BF16["attention"] == 12_336_889_856
    ram = {p.part: p.nbytes for p in plan.placements if p.where == "ram"}
    assert ram == {"embed": VOCAB_H * 2}  # one row a token: the embedding stays in RAM


def test_int8_gpu_weights_by_hand():
    plan = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(gpu_weights="int8"))
    gpu = {p.part: p.nbytes for p in plan.placements if p.where == "gpu" and p.part != "kv_cache"}
    assert gpu["attention"] == 61 * (ATT_LAYER + 2 * ATT_ROWS)  # 1 byte a weight + a bf16 scale a row
    assert gpu["lm_head"] == VOCAB_H + 2 * 163840
    assert gpu["norms"] == BF16["norms"] and gpu["router"] == BF16["router"]  # not Linear weights: unchanged


# K2.5's workspace for a 4096-token prefill chunk (bf16 activations), by phase, by hand
STREAM = 3 * 4096 * 7168 * 2  # residual stream, its norm, a sublayer's output
ATTN_WS_32K = (
    2 * 4096 * 1536 * 2  # q_a and its norm
    + 4096 * 64 * (2 * 192 + 64) * 2  # q, its roped half, the catted query
    + 4096 * (2 * 512 + 2 * 64) * 2  # kv_a, latent, k_pe
    + 9 * 32768 * 896  # a head group: 2**28 // (32768 keys x 896 bytes) = 9 heads of expanded k and v
    + 64 * 32 * 32768 * 4  # a query block: 2**28 // (4 x 64 x 32768) = 32 rows of float32 scores
    + 32 * 32768  # and its mask
    + 2 * 4096 * 64 * 128 * 2  # the heads' outputs and their copy
)
MOE_BASE = 2 * 4096 * 384 * 4 + 3 * 4096 * 2048 * 2 + 4096 * 7168 * 2  # router, shared expert, the sum in bf16
CPU_EXPERTS_WS = 4096 * 7168 * 10 + 4096 * 8 * (2 * 2048 + 7168) * 4  # routed_scratch: all 32,768 pairs
WS_GPU = STREAM + ATTN_WS_32K  # attention is the largest phase on the GPU (no routed pairs there)
WS_CPU = STREAM + MOE_BASE + CPU_EXPERTS_WS  # on the CPU the routed experts' scratch is


def test_workspace_by_hand():
    from offload.planner.sizes import routed_scratch, workspace, workspace_peak

    assert ATTN_WS_32K == 937_426_944 and WS_GPU == 1_113_587_712  # 1.04 GiB
    assert CPU_EXPERTS_WS == 1_769_996_288 and WS_CPU == 2_067_791_872  # 1.65 and 1.93 GiB
    phases = workspace(K25.model, 4096, 32768, 2, 0)
    assert phases == {
        "stream": STREAM,
        "attention": ATTN_WS_32K,
        "mlp": 3 * 4096 * 18432 * 2,
        "moe": MOE_BASE,
        "logits": 163840 * 6,
    }
    assert workspace_peak(phases) == WS_GPU
    assert routed_scratch(K25.model, 4096, 32768) == CPU_EXPERTS_WS and routed_scratch(K25.model, 4096, 0) == 0
    # 8K keys: 36 heads a group, 128 rows a block: the same bytes; 256K keys: one head, and 16 rows at the least
    assert workspace(K25.model, 4096, 8192, 2, 0)["attention"] == ATTN_WS_32K
    at_256k = ATTN_WS_32K - 9 * 32768 * 896 - 64 * 32 * 32768 * 4 - 32 * 32768
    assert (
        workspace(K25.model, 4096, 262144, 2, 0)["attention"]
        == at_256k + 262144 * 896 + 64 * 16 * 262144 * 4 + 16 * 262144
    )
    # float32 doubles every compute-dtype buffer; a one-token pass is small
    assert workspace(K25.model, 4096, 32768, 4, 0)["stream"] == 2 * STREAM
    assert workspace_peak(workspace(K25.model, 1, 1, 2, 8)) < 4 << 20
    plan = plan_for("kimi-k2.5", K25, CPU_BOX, RuntimeConfig(context=8192))
    assert plan.ram_budget["workspace"] == WS_CPU
    fixed = plan_for("kimi-k2.5", K25, CPU_BOX, RuntimeConfig(context=8192, workspace_gib=1.5))
    assert fixed.ram_budget["workspace"] == 1.5 * GiB  # a figure of the runtime's own replaces the derived one
    short = plan_for("kimi-k2.5", K25, CPU_BOX, RuntimeConfig(context=100))  # a chunk is at most the context
    assert short.ram_budget["workspace"] == workspace_peak(workspace(K25.model, 100, 100, 2, 800))


def test_gpu_budget_slots_and_ram_by_hand():
    rt = RuntimeConfig(context=32768)
    plan = plan_for("kimi-k2.5", K25, BOX, rt)
    kv = 32768 * KV_TOKEN
    fixed = sum(BF16.values()) + kv + WS_GPU + 1 * GiB  # weights, KV, workspace, reserve
    assert fixed == 21_095_653_376 + kv + WS_GPU + GiB
    slots = (24 * GiB - fixed) // EXPERT  # 7 slots serve ceil(32768 x 7 / 23040) = 10 pairs: the MoE phase
    assert plan.gpu_expert_slots == slots == 7 and plan.gpu_bytes == fixed + slots * EXPERT  # stays under attention
    assert plan.gpu_budget["workspace"] == WS_GPU
    assert plan.fits
    pinned = 2 * 8 * EXPERT
    ram_experts = 256 * GiB - 8 * GiB - VOCAB_H * 2 - pinned - CPU_EXPERTS_WS
    assert plan.ram_expert_bytes == ram_experts
    assert plan.ram_budget == {
        "reserve": 8 * GiB,
        "embed": VOCAB_H * 2,
        "pinned_staging": pinned,
        "workspace": CPU_EXPERTS_WS,
        "expert_page_cache": ram_experts,
    }
    g = slots * EXPERT / ROUTED
    r = ram_experts / ROUTED
    assert plan.shares == pytest.approx({"gpu": g, "ram": r, "disk": 1 - g - r})


SLOTS_BOX = 7  # (24 GiB - weights - KV at 32K - workspace - 1 GiB) // EXPERT: test_gpu_budget_slots_and_ram_by_hand
PAGE_CACHE_BOX = 256 * GiB - 8 * GiB - VOCAB_H * 2 - 2 * 8 * EXPERT - CPU_EXPERTS_WS
ATTN_32K = 2 * 61 * 64 * (512 + 64 + 512) * 32768  # absorbed decode over 32K cached tokens


def test_decode_ceiling_by_hand():
    plan = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(context=32768))
    g = SLOTS_BOX * EXPERT / ROUTED
    r = PAGE_CACHE_BOX / ROUTED
    d = 1 - g - r
    gpu_read = sum(BF16.values()) + 32768 * KV_TOKEN + round(g * PER_TOKEN)
    dram_read = 2 * 7168 + round((r + d) * PER_TOKEN)  # one embedding row + CPU experts
    nvme_read = round(d * PER_TOKEN)
    assert plan.per_token_bytes == {"gpu": gpu_read, "dram": dram_read, "nvme": nvme_read, "pcie": 2 * 2 * 7168 * 60}
    secs = plan.seconds_per_token
    assert secs["GPU"] == pytest.approx(gpu_read / 1000e9 + ATTN_32K / 100e12)
    assert secs["DRAM"] == pytest.approx(dram_read / 80e9)
    assert secs["NVMe"] == pytest.approx(nvme_read / 5e9)
    assert secs["CPU"] == pytest.approx(2 * 3 * 7168 * 2048 * 8 * 60 * (r + d) / 1000e9)
    assert plan.limited_by == "NVMe"  # 531.6 GiB of experts cannot all sit in 256 GiB of RAM
    assert plan.decode_tok_s_ceiling == pytest.approx(5e9 / nvme_read)
    assert plan.decode_tok_s_serial == pytest.approx(1 / sum(secs.values()))


def test_all_resident_is_dram_bound_at_the_kimi_md_figure():
    """KIMI.md §6: 89.6 GB/s / 11.89 GB = 7.5 tok/s when every expert is in RAM."""
    big = Profile(**{**_fields(BOX), "ram_gib": 1024, "dram_gbs": 89.6, "cpu_gflops": 1e5})
    plan = plan_for("kimi-k2.5", K25, big, RuntimeConfig(context=4096))
    assert plan.shares["disk"] == 0 and plan.limited_by == "DRAM"
    assert plan.decode_tok_s_ceiling == pytest.approx(89.6e9 / plan.per_token_bytes["dram"])
    assert 7.4 < plan.decode_tok_s_ceiling < 7.6


def test_cpu_only_keeps_everything_in_ram():
    plan = plan_for("kimi-k2.5", K25, CPU_BOX, RuntimeConfig(context=8192))
    assert not plan.on_gpu and plan.gpu_budget == {} and plan.gpu_expert_slots == 0
    ram = {p.part: p.nbytes for p in plan.placements if p.where == "ram"}
    kv = 8192 * KV_TOKEN
    assert ram == {**BF16, "embed": VOCAB_H * 2, "kv_cache": kv}  # K2.5 stores them in bf16: zero-copy
    fixed = 8 * GiB + sum(BF16.values()) + VOCAB_H * 2 + kv + WS_CPU
    assert plan.ram_budget["expert_page_cache"] == 256 * GiB - fixed
    assert plan.ram_expert_bytes == 256 * GiB - fixed  # less than all experts: all of it is used
    assert plan.per_token_bytes["dram"] == sum(BF16.values()) + 2 * 7168 + kv + PER_TOKEN
    active = sum(v // 2 for v in BF16.values()) - 60 * 384  # parameters (the f32 bias counted once)
    flops = 2 * 3 * 7168 * 2048 * 8 * 60 + 2 * active + 2 * 61 * 64 * 1088 * 8192
    assert plan.seconds_per_token["CPU"] == pytest.approx(flops / 1000e9)
    assert plan.max_context == min(262144, (256 * GiB - (fixed - kv)) // KV_TOKEN)


def test_fp8_weights_on_the_cpu_are_budgeted_as_converted():
    cfg = shape_config("kimi-k2-instruct")
    plan = plan_for("k2", cfg, CPU_BOX, RuntimeConfig(context=4096))
    ram = {p.part: p for p in plan.placements if p.where == "ram"}
    assert ram["attention"].fmt == "bf16" and ram["attention"].nbytes == BF16["attention"]  # not the FP8 bytes
    f32 = plan_for("k2", cfg, CPU_BOX, RuntimeConfig(context=4096, dtype="float32"))
    assert {p.part: p.nbytes for p in f32.placements}["attention"] == 2 * BF16["attention"]


def test_cpu_weights_int8_is_q8_0_but_kv_b_by_hand():
    """--cpu-weights int8 on the CPU: 34 bytes per 32 Linear weights, kv_b (16384 x 512 a layer) kept bf16; parts
    without Linears unchanged; the decode reads drop by the same bytes."""
    base = plan_for("kimi-k2.5", K25, CPU_BOX, RuntimeConfig(context=8192))
    plan = plan_for("kimi-k2.5", K25, CPU_BOX, RuntimeConfig(context=8192, cpu_weights="int8"))
    ram = {p.part: p for p in plan.placements if p.where == "ram"}
    kv_b = 61 * 16384 * 512
    assert ram["attention"].fmt == "q8_0"
    assert ram["attention"].nbytes == (61 * ATT_LAYER - kv_b) // 32 * 34 + 2 * kv_b
    assert ram["shared_experts"].nbytes == 60 * SHARED_LAYER // 32 * 34
    assert ram["dense_mlp"].nbytes == DENSE // 32 * 34 and ram["lm_head"].nbytes == VOCAB_H // 32 * 34
    assert ram["norms"].fmt == "bf16" and ram["norms"].nbytes == BF16["norms"]
    assert ram["router"].nbytes == BF16["router"]
    saved = sum(BF16[p] - ram[p].nbytes for p in ("attention", "shared_experts", "dense_mlp", "lm_head"))
    assert base.per_token_bytes["dram"] - plan.per_token_bytes["dram"] == saved
    with pytest.raises(OffloadError, match="--cpu-weights 'int4': choose bf16 or int8"):
        RuntimeConfig(cpu_weights="int4")  # type: ignore[arg-type]


def test_a_ggufs_quantized_linears_are_planned_as_stored():
    """A GGUF's ggml-typed parts stay as stored on the CPU (the native kernel reads them in place); kv_b is the
    exception, made dense in bf16; at float32 they are converted like any other format."""
    cfg = K25.model
    storage = layout_storage(K25)
    stored = dict(storage.part_bytes, attention=1_000_000_000, dense_mlp=123_456)
    gguf = dataclasses.replace(storage, part_bytes=stored, ggml_parts=frozenset({"attention", "dense_mlp"}))
    plan = make_plan("k", cfg, gguf, CPU_BOX, RuntimeConfig(context=8192))
    ram = {p.part: p for p in plan.placements if p.where == "ram"}
    assert ram["attention"].fmt == "as stored" and ram["attention"].nbytes == 1_000_000_000 + 2 * 61 * 16384 * 512
    assert ram["dense_mlp"].nbytes == 123_456 and ram["lm_head"].fmt == "bf16"
    f32 = make_plan("k", cfg, gguf, CPU_BOX, RuntimeConfig(context=8192, dtype="float32"))
    assert {p.part: p.nbytes for p in f32.placements}["attention"] == 2 * BF16["attention"]


def test_context_beyond_the_model_is_refused():
    plan = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(context=300_000))
    assert not plan.fits and "exceeds the model's max_position_embeddings 262,144" in plan.refusal()


def test_too_small_gpu_says_what_fits():
    small = Profile(**{**_fields(BOX), "gpu_memory_gib": 16})
    plan = plan_for("kimi-k2.5", K25, small, RuntimeConfig(context=32768))
    assert not plan.fits
    msg = plan.refusal()
    need = (sum(BF16.values()) + 32768 * KV_TOKEN + WS_GPU + GiB) / GiB
    assert f"needs {need:.1f} GiB of GPU memory" in msg and "the profile has 16 GiB" in msg
    assert plan.suggestions[0] == "--gpu-weights int8" and "--context" not in msg  # weights alone are > 16 GiB
    fixed = plan_for("kimi-k2.5", K25, small, RuntimeConfig(context=32768, gpu_weights="int8"))
    assert fixed.fits and fixed.gpu_expert_slots > 0


def test_context_suggestion_is_the_largest_that_fits():
    plan = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(context=262144))
    ws_256k = plan.gpu_budget["workspace"]  # planned at 262,144 keys: one head a group, 16 rows a block
    assert ws_256k == STREAM + ATTN_WS_32K - 9 * 32768 * 896 - 64 * 32 * 32768 * 4 - 32 * 32768 + 262144 * (
        896 + 64 * 16 * 4 + 16
    )
    free = 24 * GiB - (sum(BF16.values()) + GiB)  # for the KV cache and the workspace
    m = plan.max_context  # the longest context whose own workspace fits beside its KV cache
    # at 37,038 keys: 2**28 // (37038 x 896) = 8 heads a group; 2**28 // (4 x 64 x 37038) = 28 -> 16 rows a block
    ws_m = STREAM + ATTN_WS_32K - 9 * 32768 * 896 - 64 * 32 * 32768 * 4 - 32 * 32768 + m * (8 * 896 + 64 * 16 * 4 + 16)
    assert m == 37038 and m * KV_TOKEN + ws_m <= free < (m + 1) * KV_TOKEN + ws_m
    assert not plan.fits and f"--context {m // 1024 * 1024}" in plan.suggestions
    ok = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(context=m // 1024 * 1024))
    assert ok.fits


def test_too_small_ram_is_refused():
    tiny = Profile(**{**_fields(CPU_BOX), "ram_gib": 16})
    plan = plan_for("kimi-k2.5", K25, tiny, RuntimeConfig(context=4096))
    assert not plan.fits and "GiB of RAM before any expert is cached" in plan.refusal()


def test_prefill_estimate_by_hand():
    fast_disk = Profile(**{**_fields(BOX), "nvme_gbs": 1e4, "pcie_gbs": 1e4, "dram_gbs": 1e4})  # the GPU's FLOPs decide
    plan = plan_for("kimi-k2.5", K25, fast_disk, RuntimeConfig(context=32768, prefill_chunk=4096))
    active = sum(v // 2 for v in BF16.values()) - 60 * 384 + 8 * 60 * 3 * 7168 * 2048
    attn = 2 * 61 * 64 * (192 + 128) * 4096 * 4096 // 2  # causal, first chunk
    assert plan.prefill_limited_by == "GPU"
    assert plan.prefill_tok_s == pytest.approx(4096 / ((2 * active * 4096 + attn) / 100e12))
    slow = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(context=32768, prefill_chunk=4096))
    used = 1 - (1 - 8 / 384) ** 4096  # a 4096-token chunk uses essentially every expert of a layer
    d = 1 - SLOTS_BOX * EXPERT / ROUTED - PAGE_CACHE_BOX / ROUTED
    assert slow.prefill_limited_by == "NVMe"
    assert slow.prefill_tok_s == pytest.approx(4096 / (d * ROUTED * used / 5e9))
    big = Profile(**{**_fields(CPU_BOX), "ram_gib": 1024, "dram_gbs": 1e4})
    cpu = plan_for("kimi-k2.5", K25, big, RuntimeConfig(context=8192))
    assert cpu.prefill_limited_by == "CPU"
    assert cpu.prefill_tok_s == pytest.approx(4096 / ((2 * active * 4096 + attn) / 1000e9))


def test_full_context_prefill_counts_attention_squared_and_every_chunk():
    fast_disk = Profile(**{**_fields(BOX), "nvme_gbs": 1e4, "pcie_gbs": 1e4, "dram_gbs": 1e4})
    plan = plan_for("kimi-k2.5", K25, fast_disk, RuntimeConfig(context=32768, prefill_chunk=4096))
    active = sum(v // 2 for v in BF16.values()) - 60 * 384 + 8 * 60 * 3 * 7168 * 2048
    attn = 2 * 61 * 64 * (192 + 128) * 32768 * 32768 // 2  # the whole prompt's causal pairs, however chunked
    assert plan.prefill_full_tok_s == pytest.approx(32768 / ((2 * active * 32768 + attn) / 100e12))
    assert plan.prefill_attention_share == pytest.approx(attn / (2 * active * 32768 + attn))
    assert plan.prefill_full_tok_s < plan.prefill_tok_s  # 8x the tokens, 64x the attention
    slow = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(context=32768, prefill_chunk=4096))
    used = 1 - (1 - 8 / 384) ** 4096
    d = 1 - SLOTS_BOX * EXPERT / ROUTED - PAGE_CACHE_BOX / ROUTED
    # eight chunks, each reads the experts it uses again: the disk-bound rate is the one-chunk rate
    assert slow.prefill_full_tok_s == pytest.approx(32768 / (8 * d * ROUTED * used / 5e9))
    odd = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(context=10000, prefill_chunk=4096))
    used_odd = 2 * used + 1 - (1 - 8 / 384) ** (10000 - 2 * 4096)  # two full chunks and one of 1808 tokens
    d_odd = odd.shares["disk"]  # a shorter context's smaller cache leaves more page cache (tested above)
    assert odd.prefill_full_tok_s == pytest.approx(10000 / (d_odd * ROUTED * used_odd / 5e9))


def test_expert_bpw_what_if():
    plan = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(expert_bpw=2.5))
    assert plan.expert_bytes == math.ceil(3 * 7168 * 2048 * 2.5 / 8)
    assert any("what-if" in w for w in plan.warnings)


def test_builtin_shapes_pin_their_published_values():
    k2 = shape_config("kimi-k2-instruct")
    assert k2.quant.format == "fp8" and k2.quant.block == (128, 128) and k2.model.max_position_embeddings == 131072
    assert k2.model.rms_norm_eps == 1e-6 and k2.model.n_routed_experts == 384 and k2.layout == "kimi_k2"
    thinking = shape_config("kimi-k2-thinking")
    assert thinking.quant.format == "int4" and thinking.quant.group_size == 32
    assert thinking.model.max_position_embeddings == 262144
    v3 = shape_config("deepseek-v3").model
    assert (v3.n_routed_experts, v3.n_group, v3.topk_group, v3.first_k_dense_replace) == (256, 8, 4, 3)
    assert (v3.num_attention_heads, v3.vocab_size, v3.routed_scaling_factor) == (128, 129280, 2.5)
    assert K25.layout == "kimi_k25" and K25.model.rms_norm_eps == 1e-5 and K25.model.max_position_embeddings == 262144


@pytest.mark.parametrize("name", SHAPES)
def test_builtin_shapes(name):
    cfg = shape_config(name)
    assert cfg.model.hidden_size == 7168 and cfg.model.num_hidden_layers == 61
    assert resolve_model(name)[1] == cfg.model
    plan = plan_for(name, cfg, BOX, RuntimeConfig(context=4096, gpu_weights="int8"))
    assert plan.routed_expert_bytes == plan.expert_bytes * plan.n_experts
    if name == "deepseek-v3":
        assert plan.n_experts == 58 * 256 and plan.expert_bytes == 3 * 7168 * 2048 + 3 * 16 * 56 * 4  # FP8 + scales


def test_a_checkpoint_folder_works_too(tiny_k25):
    name, cfg, storage = resolve_model(str(tiny_k25))
    plan = make_plan(name, cfg, storage, CPU_BOX, RuntimeConfig(context=512))
    # tiny preset: hidden 64, expert 32 wide, INT4 group 32: packed 4 bits + a bf16 scale per 32 weights
    h, i = cfg.hidden_size, cfg.moe_intermediate_size
    one = 3 * h * i // 2 + 2 * (i * h // 32) * 2 + 2 * (h * i // 32)
    assert plan.fits and plan.expert_bytes == one
    assert plan.routed_expert_bytes == one * cfg.n_routed_experts * len(cfg.moe_layers)


def test_tied_embeddings_and_plain_q_proj():
    raw = K25.to_dict()
    raw["text_config"].update(tie_word_embeddings=True, q_lora_rank=None)
    raw["tie_word_embeddings"] = True
    cfg = HfConfig.from_dict(raw)
    plan = plan_for("tied", cfg, BOX, RuntimeConfig(context=4096, gpu_weights="int8"))
    gpu = {p.part: p.nbytes for p in plan.placements if p.where == "gpu"}
    assert gpu["lm_head"] == VOCAB_H + 2 * 163840  # the tied head still runs on the GPU: a copy there
    q_proj = 12288 * 7168  # no q LoRA: one [H * 192, hidden] projection
    att = q_proj + 576 * 7168 + 16384 * 512 + 7168 * 8192
    assert gpu["attention"] == 61 * (att + 2 * (12288 + 576 + 16384 + 7168))
    cpu = plan_for("tied", cfg, CPU_BOX, RuntimeConfig(context=4096, lm_head="cpu"))
    ram = {p.part: p.nbytes for p in cpu.placements if p.where == "ram"}
    assert ram["lm_head"] == 0 and ram["embed"] == VOCAB_H * 2  # one tensor serves both
    assert cpu.per_token_bytes["dram"] >= VOCAB_H * 2  # but the head reads all of it every token


@pytest.mark.parametrize("model", SHAPES)
def test_every_suggestion_fits_when_applied(model):
    """Apply each suggested flag set and plan again: it must fit (the review's 47-of-274 check, kept)."""
    cfg = shape_config(model)
    from offload.planner.profile import list_profiles

    for prof in list_profiles():
        for context in (4096, 32768, 131072, 262144, 400_000):
            for kw in ({}, {"gpu_weights": "int8"}, {"lm_head": "cpu"}):
                rt = RuntimeConfig(context=context, **kw)  # type: ignore[arg-type]
                plan = plan_for(model, cfg, prof, rt)
                for flags in plan.suggestions:
                    change = _parse_flags(flags)
                    fixed = plan_for(model, cfg, prof, RuntimeConfig(**{**_fields(rt), **change}))
                    assert fixed.fits, (model, prof.name, context, kw, flags, fixed.problems)


def _parse_flags(flags: str) -> dict:
    words = flags.split()
    names = {"--context": "context", "--gpu-weights": "gpu_weights", "--lm-head": "lm_head", "--device": "device"}
    out: dict = {}
    for key, value in zip(words[::2], words[1::2], strict=True):
        out[names[key]] = int(value) if key == "--context" else value
    return out


def test_printed_numbers_come_from_the_plan():
    plan = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(context=32768))
    text = "\n".join(f"{k}: {v}" for _, rows in plan_sections(plan) for k, v in rows)
    assert "23,040 x 24,772,608 B = 570.76 GB (531.56 GiB)" in text
    assert "480 experts = 11.89 GB" in text
    assert "70,272 B per token x 32,768 tokens = 2.14 GiB" in text
    assert f"slots: {plan.gpu_expert_slots:,} experts" in text
    assert f"{plan.decode_tok_s_ceiling:,.2f} tok/s, limited by NVMe" in text
    assert summary_lines(plan)[0].startswith("plan: kimi-k2.5 on box (GPU + CPU), context 32,768 tokens")


def _fields(p: Profile) -> dict:
    return {f: getattr(p, f) for f in p.__dataclass_fields__}


def test_gpu_slots_and_ram_budget_overrides_by_hand():
    plan = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(gpu_slots=4, ram_budget_gb=100))
    assert plan.gpu_expert_slots == 4 and plan.gpu_budget["expert_slots"] == 4 * EXPERT and plan.fits
    assert plan.ram_budget["expert_page_cache"] == 100 * 10**9 == plan.ram_expert_bytes
    assert plan.shares == pytest.approx(
        {"gpu": 4 * EXPERT / ROUTED, "ram": 100e9 / ROUTED, "disk": 1 - (4 * EXPERT + 100e9) / ROUTED}
    )
    too_many = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(gpu_slots=SLOTS_BOX + 1))
    assert not too_many.fits
    assert f"{SLOTS_BOX + 1} GPU expert slots need" in too_many.problems[0]
    assert f"--gpu-slots {SLOTS_BOX} fits" in too_many.problems[0]
    over = plan_for("kimi-k2.5", K25, BOX, RuntimeConfig(ram_budget_gb=300))
    assert over.fits and any("--ram-budget 300 GB is more than" in w for w in over.warnings)
    no_gpu = plan_for("kimi-k2.5", K25, CPU_BOX, RuntimeConfig(device="cuda"))
    assert not no_gpu.fits and "--device cuda, but the profile cpu has no GPU" in no_gpu.problems
    with pytest.raises(ValueError, match="gpu_slots = -1"):
        RuntimeConfig(gpu_slots=-1)
    with pytest.raises(ValueError, match="ram_budget_gb = 0"):
        RuntimeConfig(ram_budget_gb=0)


def test_cpu_max_context_counts_one_layers_pairs_by_hand():
    """With no GPU the longest context leaves room for its KV cache and a chunk's workspace, whose routed scratch
    is one layer's 4096 x 8 pairs (the layers run one after another), not every layer's."""
    box = Profile(**{**_fields(CPU_BOX), "ram_gib": 40})
    plan = plan_for("kimi-k2.5", K25, box, RuntimeConfig(context=8192))
    free = 40 * GiB - 4 * GiB - sum(BF16.values()) - VOCAB_H * 2  # less the reserve (10%) and the weights
    m = (free - WS_CPU) // KV_TOKEN  # the MoE phase stays the largest at these key counts
    assert plan.max_context == m == 187_022  # (40 - 4 - 21.83 GiB - 2.07 GB) // 70,272
