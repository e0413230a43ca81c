"""A header-only replica of Unsloth's Kimi K2.5 UD-TQ1_0 GGUF (real metadata keys, names, shapes and ggml types;
sparse files of the real 243 GB): opening reads headers only, and inspect and plan see the real sizes."""

from __future__ import annotations

import gc
import json
import shutil

import psutil
import pytest
from typer.testing import CliRunner

from offload.checkpoint import open_checkpoint
from offload.cli import app
from offload.hf_config import HfConfig
from offload.planner.gguf_shapes import GGUF_SHAPES, recipe_storage
from offload.synth.gguf_export import write_gguf_headers

from .conftest import DATA

MB = 1 << 20


@pytest.fixture(scope="module")
def ud_tq1(tmp_path_factory):
    cfg = HfConfig.from_dir(DATA / "kimi-k2.5").model
    r = GGUF_SHAPES["kimi-k2.5-ud-tq1_0"]
    types = {
        "gate_up_exps": r.gate_up_exps,
        "down_exps": r.down_exps,
        "kv_b": r.kv_b,
        "attention": r.attention,
        "shared_experts": r.shared,
        "dense_mlp": r.dense,
        "embed": r.embed,
        "lm_head": r.output,
    }
    folder = tmp_path_factory.mktemp("ud") / "UD-TQ1_0"
    if shutil.disk_usage(folder.parent).free < 1 << 30:
        pytest.skip("needs 1 GiB free for the replica's headers")
    files = write_gguf_headers(cfg, types, folder / "Kimi-K2.5-UD-TQ1_0.gguf", max_part_bytes=50_000_000_000)
    return cfg, r, files


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def test_the_replica_opens_from_headers_with_flat_rss(ud_tq1):
    cfg, r, files = ud_tq1
    assert len(files) == 5 and files[0].name == "Kimi-K2.5-UD-TQ1_0-00001-of-00005.gguf"
    assert 235e9 < sum(f.stat().st_size for f in files) < 250e9  # apparent size; the files are sparse
    before = rss()
    with open_checkpoint(files[2]) as ck:  # any part opens the set
        opened = rss()
        assert opened - before < 8 * MB, f"opening grew RSS by {(opened - before) / MB:.1f} MB"
        assert (ck.config.num_hidden_layers, ck.config.n_routed_experts, ck.config.qk_nope_head_dim) == (61, 384, 128)
        want = recipe_storage(cfg, r)
        assert ck.storage.expert_bytes == want.expert_bytes == 10_207_232
        assert dict(ck.storage.part_bytes) == dict(want.part_bytes)  # the recipe's arithmetic = the file's headers
        ranges = ck.expert_ranges(60, 383)
        assert sum(x.length for x in ranges) == want.expert_bytes and len(ranges) == 3
        w = ck.weight("model.layers.60.mlp.experts.383.down_proj")
        assert w.fmt == "iq2_xxs" and w.shape == (7168, 2048) and rss() - before < 8 * MB


def test_inspect_and_plan_on_the_replica(ud_tq1):
    _, _, files = ud_tq1
    out = CliRunner().invoke(app, ["inspect", "--model", str(files[0]), "--json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)
    assert len(info["files"]) == 5 and info["routed_experts_stored_as"] == "iq1_m"
    routed = info["types_by_part"]["routed_experts"]
    assert routed["IQ1_M"]["tensors"] == 120 and routed["IQ2_XXS"]["tensors"] == 60
    assert routed["IQ1_M"]["bits_per_weight"] == 1.75 and routed["IQ2_XXS"]["bits_per_weight"] == 2.0625
    args = ["--profile", "rtx4090-256gb", "--gpu-weights", "int8", "--json"]
    plan = CliRunner().invoke(app, ["plan", "--model", str(files[0]), *args])
    built_in = CliRunner().invoke(app, ["plan", "--model", "kimi-k2.5-ud-tq1_0", *args])
    assert plan.exit_code == built_in.exit_code == 0, plan.output
    a, b = json.loads(plan.stdout), json.loads(built_in.stdout)
    assert a["fits"] and a["n_experts"] == 60 * 384
    assert a["expert_bytes"] == b["expert_bytes"] and a["routed_expert_bytes"] == b["routed_expert_bytes"]
    assert a["decode_tok_s_ceiling"] == b["decode_tok_s_ceiling"] and a["limited_by"] == "DRAM"
