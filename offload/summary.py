"""What a checkpoint is, from its config and headers alone: the data behind `kimi-offload inspect`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernels.formats import FLOAT_FORMATS, FORMATS
from offload.checkpoint import Checkpoint


def describe(ckpt: Checkpoint) -> dict[str, Any]:
    """A JSON-ready summary of an open checkpoint."""
    c, st = ckpt.config, ckpt.storage
    types = ckpt.types_by_part()
    dtypes: Counter[str] = Counter()
    for _, info in ckpt.all_tensors():
        dtypes[info.dtype] += info.nbytes
    return {
        "folder": str(ckpt.path),
        "layout": ckpt.layout,
        "tensor_prefix": ckpt.tensor_prefix,
        "weight_format": f"routed experts {st.expert_label}: {FORMATS[st.expert_format]}",
        "routed_experts_stored_as": st.expert_format,
        "attention_stored_as": ", ".join(
            FORMATS.get(t, t) if t in FLOAT_FORMATS else t for t in sorted(types["attention"])
        ),
        "layers": c.num_hidden_layers,
        "dense_layers": c.first_k_dense_replace,
        "moe_layers": len(c.moe_layers),
        "hidden_size": c.hidden_size,
        "routed_experts_per_layer": c.n_routed_experts,
        "experts_per_token": c.num_experts_per_tok,
        "shared_experts": c.n_shared_experts,
        "n_group": c.n_group,
        "topk_group": c.topk_group,
        "attention": f"MLA: {c.num_attention_heads} heads, q_lora {c.q_lora_rank}, kv_lora {c.kv_lora_rank}, "
        f"qk {c.qk_nope_head_dim}+{c.qk_rope_head_dim}, v {c.v_head_dim}",
        "rope": (
            f"yarn x{c.rope_scaling.factor:g} (from {c.rope_scaling.original_max_position_embeddings}), "
            f"theta {c.rope_theta:g}"
            if c.rope_scaling
            else f"theta {c.rope_theta:g}"
        ),
        "max_position_embeddings": c.max_position_embeddings,
        "vocab_size": c.vocab_size,
        "expert_bytes": st.expert_bytes,
        "routed_bytes_per_token": st.expert_bytes * c.num_experts_per_tok * len(c.moe_layers),
        "kv_bytes_per_token": c.kv_bytes_per_token(),
        "bytes_by_part": ckpt.bytes_by_part(),
        "types_by_part": {
            part: {
                t: {"tensors": u.tensors, "bytes": u.bytes, "bits_per_weight": round(u.bits_per_weight, 4)}
                for t, u in sorted(by.items(), key=lambda kv: -kv[1].bytes)
            }
            for part, by in types.items()
        },
        "bytes_by_dtype": dict(dtypes),
        "shards": len(ckpt.files),
        "files": sorted(ckpt.files),
        "shard_bytes": sum(f.size for f in ckpt.files.values()),
        "tensors": len(ckpt.all_tensors()),
        "tokenizer": describe_gguf_tokenizer(ckpt.metadata)
        if "tokenizer.ggml.model" in ckpt.metadata
        else describe_tokenizer(ckpt.path),
    }


def describe_tokenizer(folder: Path) -> dict[str, Any]:
    """Which tokenizer files the folder has and what they hold."""
    out: dict[str, Any] = {}
    tk = folder / "tiktoken.model"
    if tk.is_file():
        with open(tk) as f:
            out["kind"] = "tiktoken BPE (Kimi)"
            out["base_tokens"] = sum(1 for line in f if line.strip())
    elif (folder / "tokenizer.json").is_file():
        out["kind"] = "Hugging Face tokenizer.json"
    else:
        out["kind"] = "none found (need tiktoken.model or tokenizer.json)"
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.is_file():
        tc = json.loads(cfg_path.read_text())
        decoder = tc.get("added_tokens_decoder", {})
        out["special_tokens"] = len(decoder)
        if decoder:
            out["first_special_id"] = min(int(k) for k in decoder)
        out["chat_template"] = bool(tc.get("chat_template")) or (folder / "chat_template.jinja").is_file()
    return out


def describe_gguf_tokenizer(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The tokenizer a GGUF header carries."""
    types = meta.get("tokenizer.ggml.token_type") or []
    template = meta.get("tokenizer.chat_template")
    return {
        "kind": f"GGUF {meta.get('tokenizer.ggml.model')} (pre-tokenizer {meta.get('tokenizer.ggml.pre', 'default')})",
        "tokens": len(meta.get("tokenizer.ggml.tokens") or []),
        "merges": len(meta.get("tokenizer.ggml.merges") or []),
        "special_tokens": sum(1 for t in types if t in (3, 4)),  # CONTROL, USER_DEFINED
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "chat_template": f"{len(template):,} characters" if isinstance(template, str) else False,
    }
