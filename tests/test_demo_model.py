"""The built-in demo model: trained by the project, in K2.5's format, small enough to ship, and its INT4 copy
within 2% of the float model's held-out loss."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

import offload
from offload.checkpoint import Checkpoint, open_checkpoint
from offload.engine.engine import Engine
from offload.engine.sampling import SamplingParams
from offload.planner.plan import RuntimeConfig
from offload.experts.dequantized import DequantizedExperts
from offload.model.loader import load_transformer
from offload.synth.demo import demo_dir, ensure_demo_model


def test_demo_is_a_k25_int4_checkpoint_of_at_most_40_mb():
    folder, made = ensure_demo_model()
    assert not made and folder == Path(offload.__file__).parent / "demo_model"  # inside the package, as shipped
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 40_000_000
    with open_checkpoint(folder) as ckpt:
        cfg = ckpt.config
        hf = ckpt.hf
        assert hf.layout == "kimi_k25" and hf.quant.format == "int4" and hf.quant.group_size == 32
        assert cfg.n_routed_experts == 64 and cfg.first_k_dense_replace == 1 and cfg.n_shared_experts == 1
        assert "weight_packed" in ckpt.linear("model.layers.1.mlp.experts.0.up_proj")


def test_int4_demo_held_out_loss_is_within_2_percent_of_the_float_model():
    folder = demo_dir()
    subset = json.loads((folder / "training.json").read_text())["test_subset"]
    total, n = 0.0, 0
    with open_checkpoint(folder) as ckpt:
        model = load_transformer(ckpt, DequantizedExperts(ckpt, torch.float32), torch.float32)
        for ids, start in zip(subset["ids"], subset["starts"], strict=True):
            logits = model.forward(torch.tensor(ids), 0, model.new_cache(len(ids)))  # [S, V]
            # position t predicts token t + 1; the answer's tokens are ids[start:]
            total += float(F.cross_entropy(logits[start - 1 : -1], torch.tensor(ids[start:]), reduction="sum"))
            n += len(ids) - start
    assert n == subset["tokens"]
    loss = total / n
    assert abs(loss - subset["loss_float"]) / subset["loss_float"] <= 0.02, (loss, subset["loss_float"])


def test_demo_answers_in_the_chat_format_and_stops():
    with Engine(demo_dir(), RuntimeConfig(context=1024, dtype="float32", device="cpu")) as engine:
        turn = engine.chat(
            [{"role": "user", "content": "Explain lists."}],
            thinking=False,
            max_tokens=400,
            sampling=SamplingParams(temperature=0.0),
        )
        text = "".join(c for _, c in turn)
        assert turn.result.finish_reason == "stop" and len(text) > 20, (turn.result.finish_reason, text)
