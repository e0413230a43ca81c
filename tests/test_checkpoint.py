"""The checkpoint reader: views, expert byte ranges, agreement with the safetensors library, and clear errors."""

from __future__ import annotations

from tests.sizes import sizes
import ctypes
import json
import shutil
import struct

import pytest
import torch
from safetensors import safe_open

from offload.checkpoint import Checkpoint, open_checkpoint, CheckpointError
from offload.checkpoint.layout import expert_tensors
from offload.quant import ConfigError
from offload.synth.generator import write_model
from offload.synth.presets import preset_config

from .conftest import make


def test_every_layout_and_format_opens_and_matches_safetensors(tiny_dirs):
    for (_layout, experts), folder in tiny_dirs.items():
        with open_checkpoint(folder) as ck:
            assert ck.hf.quant.format == experts
            for shard, info in ck.all_tensors():
                with safe_open(shard.path, framework="pt") as f:
                    ref = f.get_tensor(info.name)
                mine = shard.view(info.name)
                assert mine.dtype == ref.dtype and mine.shape == ref.shape, info.name
                assert torch.equal(mine.view(torch.uint8), ref.view(torch.uint8)), info.name


def test_index_total_size_and_weight_map(tiny_k25):
    index = json.loads((tiny_k25 / "model.safetensors.index.json").read_text())
    with open_checkpoint(tiny_k25) as ck:
        assert len(ck.shards) > 1
        assert index["metadata"]["total_size"] == sum(info.nbytes for _, info in ck.all_tensors())
        assert set(index["weight_map"]) == {info.name for _, info in ck.all_tensors()}
        assert sum(ck.bytes_by_part().values()) == index["metadata"]["total_size"]


def test_config_sizes_match_the_files(tiny_dirs):
    for folder in tiny_dirs.values():
        with open_checkpoint(folder) as ck:
            parts = ck.bytes_by_part()
            c = ck.hf
            assert parts["routed_experts"] == sizes(c).routed_expert_bytes
            for part, n in sizes(c).nonexpert_bytes_by_part.items():
                assert parts.get(part, 0) == n, (folder.name, part)


def test_views_are_zero_copy(tiny_k25):
    with open_checkpoint(tiny_k25) as ck:
        t = ck.tensor("model.norm.weight")
        shard, info = next((s, i) for s, i in ck.all_tensors() if i.name.endswith("model.norm.weight"))
        anchor = ctypes.c_char.from_buffer(shard.mapping)  # the mapping's first byte
        assert t.data_ptr() == ctypes.addressof(anchor) + info.start  # the view points into the mapping: no copy
        del anchor
        assert t.dtype == torch.bfloat16 and tuple(t.shape) == (ck.config.hidden_size,)
        lin = ck.linear("model.layers.1.mlp.experts.3.up_proj")
        assert set(lin) == {"weight_packed", "weight_scale", "weight_shape"}
        assert lin["weight_shape"].tolist() == [ck.config.moe_intermediate_size, ck.config.hidden_size]
        del t, lin


def test_expert_ranges_cover_exactly_the_expert_tensors(tiny_k25):
    with open_checkpoint(tiny_k25) as ck:
        c = ck.hf
        for layer in c.model.moe_layers:
            for e in (0, 7, c.model.n_routed_experts - 1):
                ranges = ck.expert_ranges(layer, e)
                assert sum(r.length for r in ranges) == sizes(c).expert_bytes
                # packed weights and shapes (int32) are adjacent, scales (bf16) elsewhere: two runs per expert
                assert len(ranges) == 2
                for spec in expert_tensors(c, layer, e):
                    info = ck.info(spec.name[len(c.tensor_prefix) :])
                    assert any(r.start <= info.start and info.end <= r.end for r in ranges)
                with open(ranges[0].path, "rb") as f:
                    f.seek(ranges[0].start)
                    first = f.read(16)
                packed = ck.tensor(f"model.layers.{layer}.mlp.experts.{e}.down_proj.weight_packed")
                assert first == packed.contiguous().view(torch.uint8).numpy().tobytes()[:16]


def test_k25_vision_tensors_are_ignored(tiny_k25):
    with open_checkpoint(tiny_k25) as ck:
        assert ck.bytes_by_part()["other"] > 0
        assert "vision_tower.patch_embed.proj.weight" in {i.name for _, i in ck.all_tensors()}


def test_single_file_checkpoint(tmp_path, tiny_dirs):
    src = tiny_dirs[("k2", "bf16")]
    dst = tmp_path / "single"
    dst.mkdir()
    shutil.copy(src / "config.json", dst)
    tensors = {}
    with open_checkpoint(src) as ck:
        for shard, info in ck.all_tensors():
            tensors[info.name] = shard.view(info.name).clone()
    from safetensors.torch import save_file

    save_file(tensors, dst / "model.safetensors")
    with open_checkpoint(dst) as ck:
        assert torch.equal(ck.tensor("lm_head.weight"), tensors["lm_head.weight"])


# ---- errors: each names the file, the tensor and what was expected -------------------------------------------
@pytest.fixture
def victim(tmp_path):
    return make(tmp_path, "tiny", "k2.5", "int4", seed=1)


def first_shard(folder):
    return sorted(folder.glob("model-*.safetensors"))[0]


def test_missing_folder_or_config(tmp_path, victim):
    with pytest.raises(ConfigError, match="does not exist"):
        open_checkpoint(tmp_path / "absent")
    (victim / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"config\.json is missing"):
        open_checkpoint(victim)


def test_index_names_a_missing_shard(victim):
    shard = first_shard(victim)
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"to shard {shard.name}, but .* does not exist"):
        open_checkpoint(victim)


def test_truncated_shard(victim):
    shard = first_shard(victim)
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(
        CheckpointError,
        match=rf"shard .*{shard.name} is truncated: tensor '.*' ends at byte "
        rf"{len(data)} but the file has {len(data) - 100} bytes",
    ):
        open_checkpoint(victim)


def test_absurd_header_length(victim):
    shard = first_shard(victim)
    data = bytearray(shard.read_bytes())
    data[:8] = struct.pack("<Q", 1 << 40)
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{shard.name}: header length 1099511627776 is absurd"):
        open_checkpoint(victim)


def test_corrupt_header_json(victim):
    shard = first_shard(victim)
    data = bytearray(shard.read_bytes())
    data[8:12] = b"!!!!"
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{shard.name}: header JSON is corrupt"):
        open_checkpoint(victim)


def test_corrupt_index(victim):
    (victim / "model.safetensors.index.json").write_text("{]")
    with pytest.raises(CheckpointError, match=r"index\.json is corrupt"):
        open_checkpoint(victim)


def test_no_weights_at_all(victim):
    for p in victim.glob("model*"):
        p.unlink()
    with pytest.raises(CheckpointError, match=r"neither model\.safetensors\.index\.json nor model\.safetensors"):
        open_checkpoint(victim)


def rewrite_header(shard, edit):
    data = shard.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    shard.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_required_tensor_missing(victim):
    index_path = victim / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "language_model.model.layers.2.mlp.experts.5.gate_proj.weight_scale"
    del index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError,
        match=rf"tensor '{name}' \(shape \[32, 2\], BF16\) is required by .*"
        r"config\.json but is in no shard",
    ):
        open_checkpoint(victim)


def test_index_names_tensor_absent_from_shard(victim):
    index_path = victim / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["language_model.model.extra.weight"] = first_shard(victim).name
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"maps tensor 'language_model.model.extra.weight' to .* header lacks it"):
        open_checkpoint(victim)


def shard_holding(folder, name):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return folder / index["weight_map"][name]


def test_shape_disagrees_with_config(victim):
    name = "language_model.model.norm.weight"

    def edit(h):
        h[name]["shape"] = [h[name]["shape"][0] // 2, 2]

    rewrite_header(shard_holding(victim, name), edit)
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' has shape \[32, 2\]; config.json implies \[64\]"):
        open_checkpoint(victim)


def test_dtype_disagrees_with_config(victim):
    name = "language_model.model.layers.1.mlp.experts.0.up_proj.weight_scale"

    def edit(h):
        h[name]["dtype"] = "F16"

    rewrite_header(shard_holding(victim, name), edit)
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' is F16; config.json implies BF16"):
        open_checkpoint(victim)


def test_offsets_disagree_with_shape(victim):
    name = "language_model.model.norm.weight"

    def edit(h):
        h[name]["dtype"] = "F32"

    rewrite_header(shard_holding(victim, name), edit)
    with pytest.raises(
        CheckpointError, match=rf"tensor '{name}' \(F32 \[64\]\) needs 256 bytes but its data_offsets span 128"
    ):
        open_checkpoint(victim)


def test_config_disagrees_with_weights(tmp_path, victim):
    cfg = json.loads((victim / "config.json").read_text())
    cfg["text_config"]["n_routed_experts"] = 32
    (victim / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"mlp\.gate\.weight' has shape \[16, 64\]; config.json implies \[32, 64\]"
    ):
        open_checkpoint(victim)


def test_generator_refuses_non_empty_folder(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        write_model(preset_config("tiny"), out)
    assert (out / "keep.txt").read_text() == "precious"


def test_views_outlive_close(tiny_k25):
    with open_checkpoint(tiny_k25) as ck:
        v = ck.tensor("model.embed_tokens.weight")
        expected = v.float().sum().item()
    assert v.float().sum().item() == expected  # the mapping stays until the last view is gone


def test_overlapping_tensors_in_header(victim):
    shard = first_shard(victim)

    def edit(h):
        names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
        a, b = h[names[0]], h[names[1]]
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1] - b["data_offsets"][0]]

    rewrite_header(shard, edit)
    with pytest.raises(CheckpointError, match=r"overlaps the tensor before it \(corrupt header\)"):
        open_checkpoint(victim)


def test_malformed_header_entry(victim):
    shard = first_shard(victim)

    def edit(h):
        name = next(k for k in h if k != "__metadata__")
        h[name]["dtype"] = ["F32"]

    rewrite_header(shard, edit)
    with pytest.raises(CheckpointError, match=r"has unknown dtype \['F32'\]"):
        open_checkpoint(victim)


@pytest.mark.parametrize("weight_map", [["a", "b"], {"t": None}, {"t": "../elsewhere.safetensors"}])
def test_malformed_index_weight_map(victim, weight_map):
    (victim / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"index\.json is corrupt: .*shard file names in this folder"):
        open_checkpoint(victim)
