"""A safetensors checkpoint written as a GGUF file (arch `deepseek2`), as llama.cpp's converter lays it out: for tests
and comparisons. Metadata keys and tensor names follow ../shared/reference/GGUF.md; routed experts are stacked per
layer; `kv_b_proj` is split per head into `attn_k_b` (transposed) and `attn_v_b`, or kept as `attn_kv_b`.

Each part gets a ggml type. Types gguf can quantize (Q4_0, Q8_0, ...) quantize the checkpoint's own weights; the
others (K and i-quants) get random valid blocks instead, so the model changes: `dequantized=True` writes the same
file with every tensor as the F32 values the quantized one dequantizes to, the reference a test compares with.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np
import torch

from kernels.dequant import dequantize
from kernels.formats import GGML_BLOCKS
from kernels.ggml import dequantize_ggml_ref
from kernels.ggml_random import random_ggml_blocks
from offload.checkpoint import Checkpoint, open_checkpoint
from offload.checkpoint.gguf_names import F32_KINDS, gguf_tensors, module_gguf_name
from offload.config import ModelConfig
from offload.parts import Module, expert_module, model_modules
from offload.synth.gguf_tokenizer import add_tokenizer

log = logging.getLogger(__name__)

GGUF_QUANTIZES = {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "tq1_0", "tq2_0", "mxfp4"}  # gguf.quants.quantize
PROJS = ("gate_proj", "up_proj", "down_proj")
SHORT = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


def write_metadata(w: gguf.GGUFWriter, cfg: ModelConfig) -> None:
    """The `deepseek2.*` keys of a ModelConfig, in llama.cpp's MQA form."""
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(1)
    w.add_key_length(cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    w.add_value_length(cfg.kv_lora_rank)
    w.add_key_length_mla(cfg.qk_head_dim)
    w.add_value_length_mla(cfg.v_head_dim)
    if cfg.q_lora_rank is not None:
        w.add_q_lora_rank(cfg.q_lora_rank)
    w.add_kv_lora_rank(cfg.kv_lora_rank)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.qk_rope_head_dim)
    rs = cfg.rope_scaling
    if rs is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs.factor)
        w.add_rope_scaling_orig_ctx_len(rs.original_max_position_embeddings)
        w.add_rope_scaling_yarn_log_mul(0.1 * rs.mscale_all_dim)
        w.add_rope_scaling_yarn_beta_fast(rs.beta_fast)
        w.add_rope_scaling_yarn_beta_slow(rs.beta_slow)
    w.add_leading_dense_block_count(cfg.first_k_dense_replace)
    w.add_vocab_size(cfg.vocab_size)
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_expert_count(cfg.n_routed_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_expert_shared_count(cfg.n_shared_experts)
    w.add_expert_weights_scale(cfg.routed_scaling_factor)
    if cfg.norm_topk_prob:
        w.add_expert_weights_norm(True)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_expert_group_count(cfg.n_group)
    w.add_expert_group_used_count(cfg.topk_group)


class _Encoder:
    """Float32 [..., in] -> the stored array of one ggml type (and, with dequantized, its F32 values)."""

    def __init__(self, seed: int, dequantized: bool) -> None:
        self.rng = np.random.default_rng(seed)
        self.dequantized = dequantized

    def __call__(self, x: np.ndarray, tag: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
        if tag in GGML_BLOCKS and x.shape[-1] % GGML_BLOCKS[tag][0]:
            tag = "f16"  # rows narrower than the type's block: F16, as llama-quantize falls back
        qtype = gguf.GGMLQuantizationType[tag.upper()]
        if tag in ("f32", "f16", "bf16") or tag in GGUF_QUANTIZES:
            data = gguf.quants.quantize(x, qtype)
        else:  # gguf cannot quantize K and i-quants: random valid blocks in their place
            rows = int(np.prod(x.shape[:-1]))
            data = random_ggml_blocks(tag, rows, x.shape[-1], self.rng).reshape(*x.shape[:-1], -1)
        if self.dequantized and tag in ("f16", "bf16"):
            return gguf.quants.dequantize(data, qtype).astype(np.float32), gguf.GGMLQuantizationType.F32
        if self.dequantized and tag != "f32":  # our reference decodes the blocks (bit-exact with gguf's)
            blocks = data.reshape(-1, data.shape[-1]).view(np.uint8)
            back = dequantize_ggml_ref(blocks, tag, x.shape[-1]).reshape(x.shape)
            return np.ascontiguousarray(back, dtype=np.float32), gguf.GGMLQuantizationType.F32
        return data, qtype


def write_gguf(
    src: str | Path,
    out: str | Path,
    types: Mapping[str, str] | None = None,
    *,
    split_kv_b: bool = True,
    fused_gate_up: bool = False,
    max_tensors_per_file: int = 0,
    dequantized: bool = False,
    seed: int = 0,
    tokenizer: bool = True,
) -> list[Path]:
    """Write the checkpoint at `src` as GGUF at `out` (`NAME.gguf`; split into `NAME-0000k-of-0000n.gguf` parts of
    at most `max_tensors_per_file` tensors when given). `types`: model part -> ggml tag ("f32", "q8_0", "iq1_s", ...)
    for the Linears of that part (default f32; norms, router and bias stay F32). `tokenizer`: write the folder's
    tokenizer and chat template into the metadata, as llama.cpp's converter does. Returns the files written."""
    types = dict(types or {})
    enc = _Encoder(seed, dequantized)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open_checkpoint(src) as ck:
        cfg = ck.config
        w = gguf.GGUFWriter(out, "deepseek2", split_max_tensors=max_tensors_per_file)
        w.add_name(Path(src).name)
        write_metadata(w, cfg)
        if tokenizer:
            add_tokenizer(w, Path(src))
        for m in model_modules(cfg, routed=False):
            _add_module(w, ck, m, types, enc, split_kv_b)
        for layer in cfg.moe_layers:
            _add_experts(w, ck, cfg, layer, types.get("routed_experts", "f32"), enc, fused_gate_up)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    if max_tensors_per_file:
        files = sorted(out.parent.glob(f"{out.stem}-*-of-*.gguf"))
        return files
    return [out]


def _dense(ck: Checkpoint, m: Module) -> np.ndarray:
    if m.kind == "linear":
        return dequantize(ck.weight(m.name), torch.float32).numpy()
    name = f"{m.name}.e_score_correction_bias" if m.kind == "router_bias" else f"{m.name}.weight"
    return ck.tensor(name).float().numpy()


def _add_module(
    w: gguf.GGUFWriter, ck: Checkpoint, m: Module, types: Mapping[str, str], enc: _Encoder, split_kv_b: bool
) -> None:
    x = np.ascontiguousarray(_dense(ck, m), dtype=np.float32)
    tag = "f32" if m.kind in F32_KINDS else types.get(m.part, "f32")
    if m.name.endswith("self_attn.kv_b_proj") and split_kv_b:
        cfg = ck.config
        n, nope, v = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
        per_head = x.reshape(n, nope + v, cfg.kv_lora_rank)
        k_b = np.ascontiguousarray(per_head[:, :nope].transpose(0, 2, 1))  # [n, kv_lora, nope]
        v_b = np.ascontiguousarray(per_head[:, nope:])  # [n, v, kv_lora]
        kv_tag = types.get("kv_b", "q8_0" if tag not in ("f32", "f16", "bf16") else tag)
        for name, arr in ((f"blk.{m.layer}.attn_k_b.weight", k_b), (f"blk.{m.layer}.attn_v_b.weight", v_b)):
            data, qtype = enc(arr, kv_tag)
            w.add_tensor(name, data, raw_dtype=qtype)
        return
    data, qtype = enc(x, tag)
    w.add_tensor(module_gguf_name(m), data, raw_dtype=qtype)


def _add_experts(
    w: gguf.GGUFWriter, ck: Checkpoint, cfg: ModelConfig, layer: int, tag: str, enc: _Encoder, fused: bool
) -> None:
    stacked = {
        proj: np.stack(
            [
                dequantize(ck.weight(expert_module(layer, e, proj)), torch.float32).numpy()
                for e in range(cfg.n_routed_experts)
            ]
        )
        for proj in PROJS
    }  # [E, out, in]
    if fused:
        gate_up = np.concatenate([stacked["gate_proj"], stacked["up_proj"]], axis=1)  # gate rows, then up rows
        data, qtype = enc(gate_up, tag)
        w.add_tensor(f"blk.{layer}.ffn_gate_up_exps.weight", data, raw_dtype=qtype)
        projs: tuple[str, ...] = ("down_proj",)
    else:
        projs = PROJS
    for proj in projs:
        data, qtype = enc(stacked[proj], tag)
        w.add_tensor(f"blk.{layer}.ffn_{SHORT[proj]}_exps.weight", data, raw_dtype=qtype)


def write_gguf_headers(
    cfg: ModelConfig, types: Mapping[str, str], out: str | Path, max_part_bytes: int = 0
) -> list[Path]:
    """A header-only GGUF of `cfg` (sparse files of the real size, no data written): every tensor's name, shape and
    type as llama.cpp lays out deepseek2, for tests on real shapes (K2.5's 240 GB in a few MB of disk). `types`: role
    -> ggml tag, roles "gate_up_exps", "down_exps", "kv_b" and the model parts ("attention", "embed", ...)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(out, "deepseek2", split_max_size=max_part_bytes)
    w.add_name(out.stem)
    write_metadata(w, cfg)
    specs = [(t.name, t.shape, "f32" if t.role == "f32" else types.get(t.role, "f32")) for t in gguf_tensors(cfg)]
    sizes: dict[str, int] = {}
    for name, shape, tag in specs:
        qtype = gguf.GGMLQuantizationType[tag.upper()]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(shape[:-1])) * (shape[-1] // block) * size
        sizes[name] = nbytes
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    parts = list(w.tensors)
    w.close()
    files = sorted(out.parent.glob(f"{out.stem}-*-of-*.gguf")) if len(parts) > 1 else [out]
    align = gguf.GGUF_DEFAULT_ALIGNMENT
    for path, tensors in zip(files, parts, strict=True):
        end = -(-path.stat().st_size // align) * align + sum(-(-sizes[t] // align) * align for t in tensors)
        os.truncate(path, end)  # sparse: the data reads as zeros and takes no disk
    return files
