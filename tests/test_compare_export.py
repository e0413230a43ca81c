"""benchmarks/compare.py's export: the peers get the same weights and the same tokenizer as kimi-offload."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from offload.checkpoint import Checkpoint, open_checkpoint
from offload.engine.tokenizer import Tokenizer
from offload.experts.dequantized import DequantizedExperts
from offload.model.loader import load_transformer

transformers = pytest.importorskip("transformers")
SPEC = importlib.util.spec_from_file_location("compare", Path(__file__).parent.parent / "benchmarks" / "compare.py")
assert SPEC is not None and SPEC.loader is not None
compare = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(compare)


def test_export_gives_transformers_our_logits_and_tokens(tiny_k25, tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "SHARD_BYTES", 200_000)  # several shards and an index, as for a large model
    hf = compare.export_hf(tiny_k25, tmp_path / "hf", torch.float32)
    assert len(list(hf.glob("model-*.safetensors"))) > 1
    ids = torch.tensor([5, 17, 99, 3, 250, 7, 41, 8])
    ref = transformers.DeepseekV3ForCausalLM.from_pretrained(
        hf, dtype=torch.float32, experts_implementation="eager"
    ).eval()
    with torch.inference_mode():
        theirs = ref(ids[None]).logits[0].float()
    with open_checkpoint(tiny_k25) as ckpt:
        model = load_transformer(ckpt, DequantizedExperts(ckpt, torch.float32), torch.float32)
        ours = model.forward(ids, 0, model.new_cache(len(ids)))
    assert float((ours - theirs).abs().max()) < 1e-4
    text = "The Moon is Earth's only natural satellite, 384,400 km away. 日本語も。"
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(hf)
    assert fast.encode(text, add_special_tokens=False) == Tokenizer.from_dir(tiny_k25).encode(text)
