"""Opening a checkpoint reads headers only: a multi-GB checkpoint opens without the process growing."""

from __future__ import annotations

import dataclasses
import gc
import shutil

import psutil
import pytest

from offload.checkpoint import Checkpoint, open_checkpoint
from offload.synth.generator import SynthOptions, data_bytes, write_model
from offload.synth.presets import preset_config

MB = 1 << 20


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


@pytest.mark.slow
def test_opening_a_multi_gb_checkpoint_reads_headers_only(tmp_path):
    # Kimi's topology with K2.5-like 4096 x 2048 experts, few enough layers to write quickly: ~2 GB
    tiny = preset_config("tiny")
    big = dataclasses.replace(
        tiny.model,
        hidden_size=4096,
        moe_intermediate_size=2048,
        intermediate_size=4096,
        n_routed_experts=64,
        num_experts_per_tok=8,
    )
    cfg = dataclasses.replace(tiny, model=big)
    assert data_bytes(cfg) > 1.8e9
    folder = write_model(cfg, tmp_path / "big", SynthOptions(max_shard_bytes=512 * MB))
    before = rss()
    ck = open_checkpoint(folder)
    views = {f"e{e}": ck.tensor(f"model.layers.2.mlp.experts.{e}.down_proj.weight_packed") for e in range(64)}
    opened = rss()
    assert opened - before < 4 * MB, f"opening grew RSS by {(opened - before) / MB:.1f} MB"
    # the measurement can see data being read: touching one expert's packed weights faults them in
    touched = views["e5"]
    nbytes = touched.numel() * 4
    assert int(touched.sum()) != 0
    assert rss() - opened > 0.9 * nbytes
    del views, touched
    ck.close()
    shutil.rmtree(folder)  # 2 GB: do not leave it in pytest's kept temp folders
