"""A header-only replica of a real Kimi K2.5 download (64 sparse shards, real names, shapes and dtypes):
the reader validates all 210k tensors and `inspect` describes it from headers alone."""

from __future__ import annotations

from tests.sizes import sizes
import json
import shutil

import pytest
from typer.testing import CliRunner

from offload.checkpoint import Checkpoint, open_checkpoint
from offload.cli import app
from offload.hf_config import HfConfig
from offload.synth.generator import SynthOptions, write_model

from .conftest import DATA


@pytest.fixture(scope="module")
def k25_replica(tmp_path_factory):
    cfg = HfConfig.from_dir(DATA / "kimi-k2.5")
    folder = tmp_path_factory.mktemp("k25") / "Kimi-K2.5"
    if shutil.disk_usage(folder.parent).free < 1 << 30:
        pytest.skip("needs 1 GiB free for the replica's headers")
    write_model(cfg, folder, SynthOptions(max_shard_bytes=9_300_000_000, write_data=False))
    # the real folder's config.json, not our serialisation of it
    shutil.copy(DATA / "kimi-k2.5" / "config.json", folder / "config.json")
    return folder


def test_replica_opens_and_sizes_match_config(k25_replica):
    with open_checkpoint(k25_replica) as ck:
        c = ck.hf
        parts = ck.bytes_by_part()
        assert len(ck.shards) == 64
        assert parts["routed_experts"] == sizes(c).routed_expert_bytes == sizes(c).expert_bytes * 384 * 60
        assert (
            sum(parts.values())
            == json.loads((k25_replica / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
        )
        assert 590e9 < sum(parts.values()) < 600e9  # "about 595 GB"
        ranges = ck.expert_ranges(60, 383)
        assert sum(r.length for r in ranges) == sizes(c).expert_bytes


def test_inspect_on_replica(k25_replica):
    result = CliRunner().invoke(app, ["inspect", "--model", str(k25_replica), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["layout"] == "kimi_k25" and info["routed_experts_stored_as"] == "int4"
    assert info["attention_stored_as"] == "bfloat16" and info["moe_layers"] == 60
    assert info["expert_bytes"] == 24_772_608 + 24 and info["kv_bytes_per_token"] == 70_272
    assert info["shards"] == 64 and info["tokenizer"]["kind"].startswith("none found")
