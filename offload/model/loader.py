"""Build a Transformer from an open checkpoint: every non-expert weight as a tensor, experts through a runtime."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch

from kernels import cpu_ggml
from kernels.cpu_layer import DecodeLayer, LayerRouting
from kernels.dequant import StoredWeight, dequantize
from kernels.formats import FLOAT_FORMATS, GGML_BLOCKS
from kernels.ggml_encode import quantize_q8_0
from offload.checkpoint import Checkpoint
from offload.config import ModelConfig
from offload.experts.runtime import ExpertRuntime
from offload.model.attention import MLA, MLAWeights
from offload.model.linear import QuantLinear, Weight
from offload.model.mlp import MLP, Lookahead, MoE
from offload.model.rope import Rope
from offload.model.router import Router
from offload.model.transformer import Block, Transformer

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def compute_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not supported; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_transformer(
    ckpt: Checkpoint,
    experts: ExpertRuntime,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    on_bytes: Callable[[int], None] | None = None,
    cpu_weights: str = "bf16",
) -> Transformer:
    """Weights already in `dtype` on the CPU stay zero-copy views of the mapped shards; on the CPU at bfloat16, a
    GGUF's ggml-typed Linears stay as stored too (QuantLinear: the native kernel, int8 activations), where that
    kernel builds; `cpu_weights="int8"` encodes the float ones as Q8_0 for that kernel too (kernels/ggml_encode.py).
    `on_bytes` hears the stored size of each weight as it is prepared (for a progress bar)."""
    if cpu_weights not in ("bf16", "int8"):
        raise ValueError(f"cpu_weights = {cpu_weights!r}; choose bf16 or int8")
    cfg = ckpt.config
    report = on_bytes or (lambda n: None)
    on_cuda = torch.device(device).type == "cuda"
    keep_ggml = not on_cuda and dtype != torch.float32 and cpu_ggml.native_build() is not None
    # decode's absorbed attention matrices in Q8_0 too, where the Linears are int8 already (a GGUF's, or by choice)
    absorb_int8 = keep_ggml and (cpu_weights == "int8" or "attention" in ckpt.storage.ggml_parts)

    def stored_weight(module: str) -> StoredWeight:
        stored = ckpt.weight(module)
        report(stored.nbytes)
        return stored

    def linear(module: str) -> Weight:
        stored = stored_weight(module)
        if keep_ggml and stored.fmt in GGML_BLOCKS and stored.shape[1] % 32 == 0:
            return QuantLinear(stored)
        if keep_ggml and cpu_weights == "int8" and stored.shape[1] % 32 == 0:
            data = quantize_q8_0(dequantize(stored, torch.float32) if stored.fmt not in FLOAT_FORMATS else
                                 stored.parts["weight"])  # fmt: skip
            return QuantLinear(StoredWeight("q8_0", stored.shape, {"data": data}))
        return dense(stored)

    def dense(stored: StoredWeight) -> torch.Tensor:
        if on_cuda:  # the stored (smaller) form crosses PCIe; FP8 dequantizes there in one Triton pass
            return dequantize(stored.to(device), dtype)
        return dequantize(stored, dtype).to(device)

    def raw(name: str) -> torch.Tensor:  # kept in its stored dtype (the router casts to float32 itself)
        t = ckpt.tensor(name)
        report(t.nbytes)
        return t.to(device)

    def vector(name: str) -> torch.Tensor:
        return raw(name).to(dtype)

    rope = Rope(cfg, device)
    blocks = []
    moes: list[MoE] = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        a = f"{p}.self_attn"
        lora = cfg.q_lora_rank is not None
        w = MLAWeights(
            q_a=linear(f"{a}.q_a_proj") if lora else None,
            q_a_norm=vector(f"{a}.q_a_layernorm.weight") if lora else None,
            q_b=linear(f"{a}.q_b_proj" if lora else f"{a}.q_proj"),
            kv_a=linear(f"{a}.kv_a_proj_with_mqa"),
            kv_a_norm=vector(f"{a}.kv_a_layernorm.weight"),
            kv_b=dense(stored_weight(f"{a}.kv_b_proj")),  # absorbed into the query and output: dense
            o=linear(f"{a}.o_proj"),
        )
        mlp: MLP | MoE
        if cfg.is_moe_layer(i):
            router = Router.build(cfg, raw(f"{p}.mlp.gate.weight"), raw(f"{p}.mlp.gate.e_score_correction_bias"))
            s = f"{p}.mlp.shared_experts"
            shared = (
                MLP.of(linear(f"{s}.gate_proj"), linear(f"{s}.up_proj"), linear(f"{s}.down_proj"))
                if cfg.n_shared_experts
                else None
            )
            mlp = MoE(i, router, shared, experts)
            moes.append(mlp)
        else:
            mlp = MLP.of(linear(f"{p}.mlp.gate_proj"), linear(f"{p}.mlp.up_proj"), linear(f"{p}.mlp.down_proj"))
        attn_norm, attn = vector(f"{p}.input_layernorm.weight"), MLA(cfg, i, w, rope, absorb_int8=absorb_int8)
        mlp_norm = vector(f"{p}.post_attention_layernorm.weight")
        native = decode_layer(cfg, attn_norm, attn, mlp_norm, mlp, experts) if dtype == torch.bfloat16 else None
        blocks.append(Block(attn_norm, attn, mlp_norm, mlp, native))
    for moe, nxt in pairwise(moes):  # each MoE layer can guess the next one's experts
        moe.lookahead = Lookahead(nxt.layer, blocks[nxt.layer].mlp_norm, cfg.rms_norm_eps, nxt.router)
    embed = ckpt.embedding()  # stays on the CPU as stored, zero-copy: the rows a batch needs are read
    report(embed.nbytes)
    lm_head = dequantize(embed, dtype).to(device) if cfg.tie_word_embeddings else linear("lm_head")
    return Transformer(cfg, embed, blocks, vector("model.norm.weight"), lm_head, rope, dtype)


def decode_layer(
    cfg: ModelConfig, attn_norm: torch.Tensor, attn: MLA, mlp_norm: torch.Tensor, mlp: MLP | MoE, experts: ExpertRuntime
) -> DecodeLayer | None:
    """A decode token's layer in two native calls (kernels/cpu_layer.py) where every part has its native form: the
    attention's (MLA.native), the norms on the CPU in bf16, the router's (Router.native_fits), the shared expert's or
    dense MLP's (MLP.native), and the experts' (the runtime's native_experts); else None (the module path)."""
    if attn.native is None or attn_norm.dtype != torch.bfloat16 or not attn_norm.is_cpu:
        return None
    eps = cfg.rms_norm_eps
    if isinstance(mlp, MLP):
        return None if mlp.native is None else DecodeLayer(attn_norm, mlp_norm, eps, attn.native, None, mlp.native)
    r, shared = mlp.router, mlp.shared
    kind = experts.native_experts(mlp.layer)
    if kind is None or not r.native_fits or not r.weight.is_cpu or (shared is not None and shared.native is None):
        return None
    routing = LayerRouting(r.weight, r.bias, r.top_k, r.n_group, r.topk_group, r.norm_topk_prob, r.scaling, *kind)
    return DecodeLayer(attn_norm, mlp_norm, eps, attn.native, routing, None if shared is None else shared.native)
