"""The GGUF reader on files written by gguf's own GGUFWriter from the project's synthetic checkpoints: F32 weights give
the safetensors model's logits; experts in every ggml type give the logits of the same model with those weights
dequantized; a split set equals the single file; offloading stays invisible; bad input names the file and tensor."""

from __future__ import annotations

import dataclasses
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from kernels.dequant import dequantize
from kernels.formats import GGML_BLOCKS
from offload.checkpoint import open_checkpoint
from offload.checkpoint.gguf_config import config_from_gguf
from offload.checkpoint.gguf_file import GgufFile
from offload.checkpoint.safetensors_file import CheckpointError
from offload.experts.dequantized import DequantizedExperts
from offload.experts.offloaded import OffloadedExperts
from offload.model.linear import QuantLinear
from offload.quant import ConfigError
from offload.synth.generator import write_model
from offload.synth.gguf_export import write_gguf
from offload.synth.presets import preset_config
from tests.harness import greedy, loaded
from tests.test_offload import offloaded

LOGIT_TOL = 1e-4


def reference(folder: Path) -> tuple[list[int], torch.Tensor]:
    with loaded(folder, lambda ck: DequantizedExperts(ck, torch.float32)) as (model, _):
        return greedy(model)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny K2.5-layout INT4 checkpoint whose widths are multiples of 256 (every ggml block fits a row)."""
    tiny = preset_config("tiny")
    model = dataclasses.replace(
        tiny.model, hidden_size=256, moe_intermediate_size=256, intermediate_size=256, n_routed_experts=8
    )
    return write_model(dataclasses.replace(tiny, model=model), tmp_path_factory.mktemp("gguf") / "tiny256")


@pytest.fixture(scope="module")
def f32_file(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(src, tmp_path_factory.mktemp("f32") / "tiny-F32.gguf")[0]


def test_f32_gguf_gives_the_safetensors_logits(src: Path, f32_file: Path) -> None:
    want_tokens, want_logits = reference(src)
    tokens, logits = reference(f32_file)
    assert tokens == want_tokens
    assert float((logits - want_logits).abs().max()) < LOGIT_TOL


def test_config_from_metadata_is_the_checkpoints(src: Path, f32_file: Path) -> None:
    """Every architecture field survives; floats as GGUF stores them (float32)."""
    with open_checkpoint(src) as st, open_checkpoint(f32_file) as gg:
        a, b = st.config, gg.config
        assert gg.layout == "gguf" and gg.tensor_prefix == ""
        for f in dataclasses.fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if f.name == "rope_scaling":
                assert (y.factor, y.original_max_position_embeddings, y.beta_fast) == (
                    x.factor,
                    x.original_max_position_embeddings,
                    x.beta_fast,
                )
                assert y.mscale_all_dim == pytest.approx(x.mscale_all_dim) and y.attention_factor == 1.0
            elif f.name == "pad_token_id":
                continue  # the tokenizer's keys carry it
            elif isinstance(x, float):
                assert y == pytest.approx(x, rel=1e-6), f.name
            else:
                assert y == x, f.name


def test_experts_are_zero_copy_rows_of_the_stacked_tensor(f32_file: Path) -> None:
    with open_checkpoint(f32_file) as ck:
        cfg = ck.config
        layer = cfg.moe_layers[-1]
        w = ck.weight(f"model.layers.{layer}.mlp.experts.5.down_proj")
        assert w.fmt == "f32" and w.shape == (cfg.hidden_size, cfg.moe_intermediate_size)
        (r_gate, r_up, r_down) = ck.expert_ranges(layer, 5)
        f = ck.file(r_down.path)
        assert w.parts["weight"].data_ptr() - torch.frombuffer(f.mapping, dtype=torch.uint8).data_ptr() == (
            r_down.start
        )
        per = cfg.hidden_size * cfg.moe_intermediate_size * 4
        assert r_gate.length == r_up.length == r_down.length == per
        assert ck.storage.expert_bytes == 3 * per and ck.bytes_by_part()["routed_experts"] == 3 * per * 8 * len(
            cfg.moe_layers
        )


# every type the runtime reads, for the routed experts; the rest of the model stays F32
EXPERT_TYPES = ["f16", "bf16", *sorted(GGML_BLOCKS)]


@pytest.mark.parametrize("tag", EXPERT_TYPES)
def test_experts_in_every_type_give_the_dequantized_models_logits(src: Path, tmp_path: Path, tag: str) -> None:
    quantized = write_gguf(src, tmp_path / f"q-{tag}.gguf", {"routed_experts": tag}, seed=1)[0]
    twin = write_gguf(src, tmp_path / f"f32-{tag}.gguf", {"routed_experts": tag}, seed=1, dequantized=True)[0]
    with open_checkpoint(quantized) as ck:
        assert ck.storage.expert_formats == (tag,)
        assert {t.dtype for _, t in ck.all_tensors() if "_exps" in t.name} == {tag.upper()}
    want_tokens, want_logits = reference(twin)
    tokens, logits = reference(quantized)
    assert tokens == want_tokens
    assert float((logits - want_logits).abs().max()) < LOGIT_TOL


def test_kv_b_split_per_head_or_joined_is_the_same_model(src: Path, f32_file: Path, tmp_path: Path) -> None:
    """llama.cpp's attn_k_b (transposed) + attn_v_b, or one attn_kv_b: the same kv_b_proj."""
    joined = write_gguf(src, tmp_path / "joined.gguf", split_kv_b=False)[0]
    with open_checkpoint(f32_file) as split, open_checkpoint(joined) as one:
        names = {t.name for _, t in split.all_tensors()}
        assert "blk.1.attn_k_b.weight" in names and "blk.1.attn_kv_b.weight" not in names
        a = dequantize(split.weight("model.layers.1.self_attn.kv_b_proj"))
        b = dequantize(one.weight("model.layers.1.self_attn.kv_b_proj"))
        assert torch.equal(a, b)


def test_quantized_non_expert_parts_give_the_dequantized_models_logits(src: Path, tmp_path: Path) -> None:
    types = {"attention": "q8_0", "shared_experts": "q4_k", "dense_mlp": "q5_1", "embed": "q6_k", "lm_head": "q8_0"}
    q = write_gguf(src, tmp_path / "q.gguf", types)[0]
    twin = write_gguf(src, tmp_path / "twin.gguf", types, dequantized=True)[0]
    with open_checkpoint(q) as ck:
        emb = ck.embedding()  # kept as stored: the rows a batch needs are dequantized at lookup
        assert emb.fmt == "q6_k" and emb.nbytes == ck.storage.part_bytes["embed"]
        rows = torch.tensor([3, 1, 3, 700])
        assert torch.equal(dequantize(emb.rows(rows)), dequantize(emb)[rows])
        kinds = ck.types_by_part()
        assert (
            kinds["attention"]["Q8_0"].tensors > 0
            and list(kinds["embed"]) == ["Q6_K"]
            and kinds["norms"]["F32"].tensors == 4 * ck.config.num_hidden_layers + 1
        )
    a, b = reference(q), reference(twin)
    assert a[0] == b[0] and float((a[1] - b[1]).abs().max()) < LOGIT_TOL


def test_fused_gate_up_experts(src: Path, f32_file: Path, tmp_path: Path) -> None:
    fused = write_gguf(src, tmp_path / "fused.gguf", fused_gate_up=True)[0]
    with open_checkpoint(fused) as ck:
        assert len(ck.expert_ranges(1, 3)) == 2  # gate+up rows in one run, down in another
    a, b = reference(fused), reference(f32_file)
    assert a[0] == b[0] and float((a[1] - b[1]).abs().max()) == 0.0


def test_a_split_set_equals_the_single_file(src: Path, f32_file: Path, tmp_path: Path) -> None:
    parts = write_gguf(src, tmp_path / "set" / "tiny.gguf", max_tensors_per_file=20)
    assert len(parts) > 2 and parts[0].name.endswith(f"-00001-of-{len(parts):05d}.gguf")
    want = reference(f32_file)
    for opened in (parts[0], parts[-1], parts[0].parent):  # any part, or the folder
        tokens, logits = reference(opened)
        assert tokens == want[0] and float((logits - want[1]).abs().max()) == 0.0


@pytest.mark.parametrize(
    ("budget", "prefetch"), [(None, True), (6, True), (6, False)], ids=["resident", "budget6+prefetch", "budget6"]
)
def test_offloading_a_gguf_is_numerically_invisible(src: Path, tmp_path: Path, budget, prefetch) -> None:
    """The store's byte ranges, budget, prefetch and release on stacked Q4_0 experts: the resident tokens."""
    q = write_gguf(src, tmp_path / "q4.gguf", {"routed_experts": "q4_0"})[0]
    want = reference(q)
    with loaded(q, offloaded(budget, prefetch)) as (model, runtime):
        tokens, logits = greedy(model)
        stats = runtime.stats()
    assert tokens == want[0] and float((logits - want[1]).abs().max()) < LOGIT_TOL
    if budget is not None:
        assert stats.peak_resident_bytes <= budget * stats.expert_bytes and stats.released_bytes > 0


# every Linear but kv_b in a ggml type, as llama.cpp's quantizer leaves a K2.5 file: Q4_K_M-like experts
NATIVE_TYPES = {
    "routed_experts": "q4_k",
    "attention": "q8_0",
    "dense_mlp": "q8_0",
    "shared_experts": "q6_k",
    "lm_head": "q8_0",
}


def native_bf16(budget: int | None, prefetch: bool):
    def make(ckpt):  # type: ignore[no-untyped-def]
        runtime = offloaded(budget, prefetch)(ckpt)
        runtime.close()
        return OffloadedExperts(ckpt, torch.bfloat16, runtime.config, runtime.cost)

    return make


@pytest.mark.usefixtures("native_ggml")
def test_the_native_ggml_path_is_invisible_under_a_small_budget(src: Path, tmp_path: Path) -> None:
    """bf16 on the CPU: experts and Linears in the file's types through the native kernel (int8 activations), read
    in place. A budget of 3 experts with prefetch gives the resident run's tokens and logits exactly; and the int8
    path's prompt pass stays close to the float32 reference's (same file, float activations)."""
    q = write_gguf(src, tmp_path / "native.gguf", NATIVE_TYPES, seed=2)[0]
    runs = []
    for budget, prefetch in ((None, False), (3, True)):
        with loaded(q, native_bf16(budget, prefetch), dtype=torch.bfloat16) as (model, runtime):
            assert runtime.cpu.native_ggml
            assert isinstance(model.lm_head, QuantLinear) and isinstance(model.blocks[0].attn.w.o, QuantLinear)
            runs.append(greedy(model))
            stats = runtime.stats()
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert stats.peak_resident_bytes <= 3 * stats.expert_bytes and stats.released_bytes > 0
    want_tokens, want_logits = reference(q)
    # the prompt pass sees the same input in both (later steps follow each run's own tokens, which may part)
    first, want_first = runs[0][1][0], want_logits[0]
    err = float((first - want_first).abs().max())
    assert err < 0.05 * float(want_first.abs().max())
    # random weights leave near-ties (this file's top two logits are 0.0014 apart): the int8 path's pick is the
    # reference's or one that int8 rounding can lift above it
    assert int(want_first.argmax()) == want_tokens[0] and int(first.argmax()) == runs[0][0][0]
    assert float(want_first[int(first.argmax())]) >= float(want_first.max()) - 2 * err


# ---- bad input ------------------------------------------------------------------------------------------------
def _rewrite(
    src: Path, out: Path, *, drop: str | None = None, meta: dict | None = None, retype: tuple | None = None
) -> Path:
    """`src` re-written through gguf's writer, without tensor `drop`, with metadata values replaced and one tensor
    given new (bytes, ggml type)."""
    r = gguf.GGUFReader(src)
    arch = meta.get("general.architecture", "deepseek2") if meta else "deepseek2"
    w = gguf.GGUFWriter(out, arch)
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        if meta and field.name in meta:
            w.add_key_value(field.name, meta[field.name], field.types[0])
            continue
        w.add_key_value(field.name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    for t in r.tensors:
        if retype is not None and t.name == retype[0]:
            w.add_tensor(t.name, retype[1], raw_dtype=retype[2])
        elif t.name != drop:
            w.add_tensor(
                t.name, np.asarray(t.data), raw_shape=list(reversed(t.shape.tolist())), raw_dtype=t.tensor_type
            )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def test_missing_truncated_and_foreign_parts_name_the_file(src: Path, tmp_path: Path) -> None:
    parts = write_gguf(src, tmp_path / "set" / "tiny.gguf", max_tensors_per_file=20)
    moved = tmp_path / parts[1].name
    shutil.move(parts[1], moved)
    with pytest.raises(CheckpointError, match=rf"{parts[1].name} is missing \(incomplete download\?\)"):
        open_checkpoint(parts[0])
    shutil.move(moved, parts[1])
    data = parts[-1].read_bytes()
    parts[-1].write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=rf"{parts[-1].name}: tensor .* past the end of the file"):
        open_checkpoint(parts[0])


def test_bad_magic_version_and_header(f32_file: Path, tmp_path: Path) -> None:
    data = f32_file.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUX" + data[4:])
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        GgufFile(bad)
    bad.write_bytes(data[:4] + struct.pack("<I", 7) + data[8:])
    with pytest.raises(CheckpointError, match="GGUF version 7 is not supported"):
        GgufFile(bad)
    bad.write_bytes(data[:4] + struct.pack(">I", 3) + data[8:])
    with pytest.raises(CheckpointError, match="big-endian"):
        GgufFile(bad)
    bad.write_bytes(data[:200])
    with pytest.raises(CheckpointError, match=r"bad\.gguf: the header claims .* truncated"):
        GgufFile(bad)
    bad.write_bytes(data[:3000])
    with pytest.raises(CheckpointError, match=r"bad\.gguf: the header ends early .* truncated"):
        GgufFile(bad)


def test_unsupported_arch_type_shape_and_missing_tensor(f32_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"general\.architecture = 'llama' is not supported"):
        open_checkpoint(_rewrite(f32_file, tmp_path / "llama.gguf", meta={"general.architecture": "llama"}))
    with pytest.raises(ConfigError, match="expert_gating_func = 1"):
        open_checkpoint(_rewrite(f32_file, tmp_path / "softmax.gguf", meta={"deepseek2.expert_gating_func": 1}))
    with pytest.raises(
        CheckpointError,
        match=r"count\.gguf: tensor 'blk\.1\.ffn_gate_inp\.weight' has shape \[8, 256\] \(ne \[256, 8\]\); "
        r"the metadata implies \[9, 256\]",
    ):
        open_checkpoint(_rewrite(f32_file, tmp_path / "count.gguf", meta={"deepseek2.expert_count": 9}))
    with pytest.raises(CheckpointError, match=r"tensor 'blk\.1\.attn_output\.weight' .* is in no part"):
        open_checkpoint(_rewrite(f32_file, tmp_path / "missing.gguf", drop="blk.1.attn_output.weight"))


def test_a_type_the_runtime_cannot_dequantize_is_named(f32_file: Path, tmp_path: Path) -> None:
    with open_checkpoint(f32_file) as ck:
        rows = ck.config.vocab_size
    q8k = np.zeros((rows, 292), dtype=np.uint8)  # Q8_K: ggml's intermediate type, never stored in a model file
    bad = _rewrite(f32_file, tmp_path / "q8k.gguf", retype=("token_embd.weight", q8k, gguf.GGMLQuantizationType.Q8_K))
    with pytest.raises(CheckpointError, match=r"q8k\.gguf: tensor 'token_embd\.weight' is Q8_K, a ggml type"):
        open_checkpoint(bad)


def test_config_errors_name_key_and_value() -> None:
    base = {"general.architecture": "deepseek2"}
    with pytest.raises(ConfigError, match=r"no 'deepseek2.attention.head_count'"):
        config_from_gguf(base, "x.gguf")
    with pytest.raises(ConfigError, match=r"x\.gguf: general.architecture = 'qwen2'"):
        config_from_gguf({"general.architecture": "qwen2"}, "x.gguf")


# ---- plan and inspect -----------------------------------------------------------------------------------------
def test_ud_shapes_by_hand_and_within_5_percent_of_the_published_sizes() -> None:
    from offload.planner.gguf_shapes import GGUF_SHAPES
    from offload.planner.shapes import resolve_model

    # one K2.5 expert: gate and up are 2048 rows of 7168, down 7168 rows of 2048 (28 and 8 blocks of 256 a row)
    tq1 = 2 * 2048 * 28 * 56 + 7168 * 8 * 66  # IQ1_M gate/up, IQ2_XXS down
    q2 = 2 * 2048 * 28 * 84 + 7168 * 8 * 110  # Q2_K gate/up, Q3_K down
    for name, expert in (("kimi-k2.5-ud-tq1_0", tq1), ("kimi-k2.5-ud-q2_k_xl", q2)):
        _, _, st = resolve_model(name)
        assert st.expert_bytes == expert and not st.fused_experts
        total = st.nonexpert_bytes + expert * 384 * 60
        assert abs(total / 1e9 - GGUF_SHAPES[name].published_gb) / GGUF_SHAPES[name].published_gb < 0.05
        assert st.part_bytes["lm_head"] == 163840 * 28 * 210  # Q6_K output: 7168 = 28 blocks a row
        assert st.part_bytes["router"] == 60 * (384 * 7168 + 384) * 4  # F32 gate and bias


def test_plan_and_inspect_on_a_gguf_file(f32_file: Path, tmp_path: Path, src: Path) -> None:
    import json

    from typer.testing import CliRunner

    from offload.cli import app

    q = write_gguf(src, tmp_path / "q.gguf", {"routed_experts": "iq2_xxs", "attention": "q8_0"})[0]
    out = CliRunner().invoke(app, ["inspect", "--model", str(q), "--json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)
    assert info["layout"] == "gguf" and info["routed_experts_stored_as"] == "iq2_xxs"
    routed = info["types_by_part"]["routed_experts"]["IQ2_XXS"]
    assert routed["tensors"] == 3 * 2 and routed["bits_per_weight"] == 2.0625
    assert info["expert_bytes"] == 3 * 256 * (256 // 256) * 66
    plan = CliRunner().invoke(
        app, ["plan", "--model", str(q), "--profile", "cpu-only-256gb", "--context", "4096", "--json"]
    )
    assert plan.exit_code == 0, plan.output
    p = json.loads(plan.output)
    assert p["expert_bytes"] == info["expert_bytes"] and p["fits"]


def test_generate_on_a_gguf_matches_the_folder(src: Path, f32_file: Path) -> None:
    """End to end through the CLI: the GGUF's own tokenizer and template, the same greedy text as the folder."""
    import json

    from typer.testing import CliRunner

    from offload.cli import app

    def run(model: Path, *extra: str) -> dict:
        args = ["generate", "--model", str(model), "--prompt", "def add(a, b):", "--max-tokens", "8"]
        out = CliRunner().invoke(app, [*args, "--temperature", "0", "--dtype", "float32", "--json", *extra])
        assert out.exit_code == 0, out.output
        return json.loads(out.output[out.output.index("{") :])

    for extra in ((), ("--chat", "--no-thinking")):
        want, got = run(src, *extra), run(f32_file, *extra)
        assert got["prompt_tokens"] == want["prompt_tokens"] and got["token_ids"] == want["token_ids"]
        assert got["text"] == want["text"]


# ---- Hugging Face repo ids, offline -------------------------------------------------------------------------------
def _fake_cache(root: Path, repo: str, files: dict[str, Path]) -> Path:
    """A Hugging Face hub cache holding `repo` at one snapshot, its files copied in."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    for rel, source in files.items():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, snap / rel)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(snap.name)
    return root


def test_a_repo_id_resolves_in_the_local_cache(src: Path, tmp_path: Path) -> None:
    from offload.checkpoint.hub import resolve_repo

    parts = write_gguf(src, tmp_path / "set" / "Kimi-UD-TQ1_0.gguf", max_tensors_per_file=25)
    other = write_gguf(src, tmp_path / "Kimi-Q4_0.gguf", {"routed_experts": "q4_0"})[0]
    files = {f"UD-TQ1_0/{p.name}": p for p in parts} | {other.name: other}
    cache = _fake_cache(tmp_path / "hub", "unsloth/Kimi-GGUF", files)
    first = resolve_repo("unsloth/Kimi-GGUF:UD-TQ1_0", cache)
    assert first.name == parts[0].name and first.parent.name == "UD-TQ1_0"
    assert resolve_repo("unsloth/Kimi-GGUF:q4_0", cache).name == other.name
    with open_checkpoint(first) as ck:
        assert len(ck.files) == len(parts)
    with pytest.raises(
        CheckpointError, match=r"holds no IQ1_M GGUF \(it has: .*UD-TQ1_0.*\); get it with: hf download"
    ):
        resolve_repo("unsloth/Kimi-GGUF:IQ1_M", cache)
    with pytest.raises(
        CheckpointError,
        match=r"moonshotai/Kimi-K2\.5 is not in the local Hugging Face cache .* "
        r"hf download moonshotai/Kimi-K2\.5",
    ):
        resolve_repo("moonshotai/Kimi-K2.5", cache)


def test_a_repo_id_works_as_model_everywhere(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    cache = _fake_cache(tmp_path / "hub", "me/tiny", {p.name: p for p in src.iterdir()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with open_checkpoint("me/tiny") as ck:
        assert ck.config.num_hidden_layers == 3 and ck.path.name.startswith("0123")
    from offload.planner.shapes import resolve_model

    assert resolve_model("me/tiny")[1].hidden_size == 256


def test_older_and_ik_llama_mla_keys_give_the_same_config(f32_file: Path) -> None:
    """Files without key_length_mla (older llama.cpp, ik_llama.cpp: per-head key/value_length, head_count_kv = heads)
    describe the same model; the MQA latent size without the _mla keys is refused."""
    meta = dict(GgufFile(f32_file).metadata)
    want = config_from_gguf(meta, "new.gguf")
    old = {k: v for k, v in meta.items() if not k.endswith("_mla")}
    old["deepseek2.attention.key_length"] = want.qk_head_dim
    old["deepseek2.attention.value_length"] = want.v_head_dim
    old["deepseek2.attention.head_count_kv"] = want.num_attention_heads
    assert config_from_gguf(old, "old.gguf") == want
    mqa = {k: v for k, v in meta.items() if not k.endswith("_mla")}
    with pytest.raises(ConfigError, match=r"old\.gguf: deepseek2\.attention\.key_length = \d+ is the MQA latent size"):
        config_from_gguf(mqa, "old.gguf")


def test_mtp_layers_counted_in_block_count_are_left_out(f32_file: Path) -> None:
    meta = dict(GgufFile(f32_file).metadata)
    want = config_from_gguf(meta, "x.gguf")
    meta["deepseek2.block_count"] = want.num_hidden_layers + 1
    meta["deepseek2.nextn_predict_layers"] = 1
    got = config_from_gguf(meta, "x.gguf")
    assert got.num_hidden_layers == want.num_hidden_layers and got.num_nextn_predict_layers == 1
    meta["deepseek2.nextn_predict_layers"] = 9
    with pytest.raises(ConfigError, match=r"nextn_predict_layers = 9"):
        config_from_gguf(meta, "x.gguf")


def test_add_bos_token_starts_a_raw_prompt_with_bos(f32_file: Path, tmp_path: Path) -> None:
    """A GGUF that asks for BOS (DeepSeek-V3's do) gets it on raw text prompts, as llama.cpp adds it; Kimi's do not."""
    from offload.engine.gguf_vocab import tokenizer_from_gguf

    kimi = tokenizer_from_gguf(GgufFile(f32_file).metadata, f32_file)
    assert not kimi.add_bos and kimi.encode_prompt("hello") == kimi.encode("hello")
    bos_file = _rewrite(f32_file, tmp_path / "bos.gguf", meta={"tokenizer.ggml.add_bos_token": True})
    tok = tokenizer_from_gguf(GgufFile(bos_file).metadata, bos_file)
    assert tok.add_bos and tok.encode_prompt("hello") == [tok.bos_id, *tok.encode("hello")]
    assert tok.encode_prompt("[BOS]hello", specials=True) == [tok.bos_id, *tok.encode("hello")]  # not twice


def test_a_routing_profile_held_under_a_small_budget_is_invisible(src: Path, tmp_path: Path) -> None:
    """A profile written from an uncapped run, read back, its hottest experts held (4 of a 12-expert budget: the
    rest keeps a layer's 8) on stacked Q4_0 experts with prefetch: the resident run's tokens; the held experts stay
    resident throughout."""
    from offload.experts.config import OffloadConfig
    from offload.experts.profile import load_profile, save_profile

    q = write_gguf(src, tmp_path / "q4p.gguf", {"routed_experts": "q4_0"})[0]
    with loaded(q, offloaded(None, False)) as (model, runtime):
        want = greedy(model)
        picks = runtime.stats().choices
    with open_checkpoint(q) as ck:
        cfg = ck.config
    saved = save_profile(tmp_path / "profile.json", cfg, picks, 99, "test")
    hot = load_profile(tmp_path / "profile.json", cfg).hottest()
    assert hot == saved.hottest() and len(hot) > 3

    def held(ckpt):  # type: ignore[no-untyped-def]
        base = offloaded(12, True)(ckpt)
        base.close()
        config = dataclasses.replace(base.config, hot=tuple(hot), hold_share=0.5)
        return OffloadedExperts(ckpt, torch.float32, config, base.cost)

    with loaded(q, held) as (model, runtime):
        assert isinstance(runtime.config, OffloadConfig)
        assert runtime.store.held() == frozenset(hot[:4]) and runtime.store.capacity == 8
        tokens, logits = greedy(model)
        stats = runtime.stats()
        assert all(runtime.store.resident(k) for k in hot[:4])
    assert tokens == want[0] and float((logits - want[1]).abs().max()) < LOGIT_TOL
    assert stats.held == 4 and stats.peak_resident_bytes <= 12 * stats.expert_bytes and stats.released_bytes > 0
