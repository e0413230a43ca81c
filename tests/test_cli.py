"""`kimi-offload make-model` and `inspect` as a user runs them."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from offload.cli import app

runner = CliRunner()


def test_make_model_then_inspect(tmp_path):
    out = tmp_path / "m"
    r = runner.invoke(
        app, ["make-model", "--preset", "tiny", "--out", str(out), "--layout", "k2", "--experts", "fp8", "--seed", "7"]
    )
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and (out / "model.safetensors.index.json").is_file()
    r = runner.invoke(app, ["inspect", "--model", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["layout"] == "kimi_k2" and info["routed_experts_stored_as"] == "fp8"
    assert info["tokenizer"]["kind"] == "tiktoken BPE (Kimi)" and info["tokenizer"]["chat_template"]
    r = runner.invoke(app, ["inspect", "--model", str(out)])
    assert r.exit_code == 0 and "routed_experts" in r.output and "tiktoken" in r.output


def test_bad_input_is_a_clear_error(tmp_path):
    r = runner.invoke(app, ["make-model", "--preset", "huge", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown preset 'huge'; known: tiny, mini, bench" in r.output
    r = runner.invoke(app, ["make-model", "--preset", "tiny", "--layout", "k3", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown layout 'k3'" in r.output
    r = runner.invoke(app, ["inspect", "--model", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "does not exist" in r.output
    out = tmp_path / "full"
    out.mkdir()
    (out / "x").write_text("mine")
    r = runner.invoke(app, ["make-model", "--out", str(out)])
    assert r.exit_code == 2 and "not empty" in r.output and (out / "x").read_text() == "mine"


# ---- generate ---------------------------------------------------------------------------------------------------
def _generate(*args: str):
    return runner.invoke(app, ["generate", *args])


def test_generate_json_is_greedy_and_reproducible(tiny_k25):
    from offload.engine.engine import Engine
    from offload.planner.plan import RuntimeConfig
    from offload.engine.sampling import SamplingParams

    args = [
        "--model",
        str(tiny_k25),
        "--prompt-ids",
        "5,6,7,8",
        "--max-tokens",
        "6",
        "--temperature",
        "0",
        "--dtype",
        "float32",
        "--json",
    ]
    r = _generate(*args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in ("token_ids", "text", "prompt_tokens", "prefill_tok_s", "decode_tok_s", "finish_reason"):
        assert key in out
    assert out["prompt_tokens"] == 4 and 1 <= len(out["token_ids"]) <= 6
    import torch

    with Engine(tiny_k25, RuntimeConfig(dtype="float32")) as engine:
        want = engine.generate([5, 6, 7, 8], SamplingParams(temperature=0), max_tokens=6).run()
    assert out["token_ids"] == want.token_ids and out["text"] == want.text
    assert json.loads(_generate(*args).stdout)["token_ids"] == out["token_ids"]
    # a prompt in passes of one token gives the same tokens; a pass of none is a one-line error
    assert json.loads(_generate(*args, "--prefill-chunk", "1").stdout)["token_ids"] == out["token_ids"]
    r = _generate(*args, "--prefill-chunk", "0")
    assert r.exit_code == 2 and "--prefill-chunk 0: a prefill pass takes at least 1 token" in r.output
    # --threads sets the one pool torch and the native kernels share; results do not depend on it
    before = torch.get_num_threads()
    try:
        assert json.loads(_generate(*args, "--threads", "1").stdout)["token_ids"] == out["token_ids"]
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    r = _generate(*args, "--threads", "0")
    assert r.exit_code == 2 and "--threads 0: give 1 or more" in r.output


def test_generate_chat_streams_and_splits_reasoning(tiny_k25):
    r = _generate(
        "--model",
        str(tiny_k25),
        "--prompt",
        "Hi <|im_end|>",
        "--chat",
        "--no-thinking",
        "--max-tokens",
        "4",
        "--seed",
        "1",
        "--json",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert {"reasoning", "content", "tool_calls"} <= set(out)
    assert out["reasoning"] == ""  # thinking off: the prompt closed <think></think>
    r = _generate("--model", str(tiny_k25), "--prompt", "Hello", "--max-tokens", "3", "--temperature", "0")
    assert r.exit_code == 0, r.output
    assert "prompt tokens" in r.stderr and "decode" in r.stderr  # the stats line goes to stderr
    args = ["--model", str(tiny_k25), "--prompt", ":smile: [bold]x", "--max-tokens", "12", "--temperature", "0"]
    streamed = _generate(*args).stdout
    assert streamed == json.loads(_generate(*args, "--json").stdout)["text"] + "\n"  # exact text, no rich rewriting


def test_generate_bad_input(tiny_k25, tmp_path):
    m = ["--model", str(tiny_k25)]
    cases = [
        (["--prompt", "a", "--prompt-ids", "1"], "exactly one of --prompt"),
        ([], "exactly one of --prompt"),
        (["--prompt-ids", "1,x"], "comma-separated integers"),
        (["--prompt-ids", "1", "--chat"], "--chat needs --prompt"),
        (["--prompt-ids", "99999"], "outside 0.."),
        (["--prompt", "hi", "--temperature", "-1"], "temperature"),
        (["--prompt", "hi", "--dtype", "fp16"], "choose one of bfloat16, float32"),
        (["--prompt", "", "--max-tokens", "2"], "prompt is empty"),
        (["--prompt", "hi", "--max-tokens", "0"], "max_tokens"),
    ]
    for args, msg in cases:
        r = _generate(*m, *args)
        assert r.exit_code == 2 and msg in r.output, (args, r.output)
    r = _generate("--model", str(tmp_path / "none"), "--prompt", "hi")
    assert r.exit_code == 2 and "does not exist" in r.output


def test_generate_without_model_uses_the_trained_demo():
    from offload.synth.demo import demo_dir

    r = _generate("--prompt", "Hello", "--max-tokens", "2", "--temperature", "0", "--json")
    assert r.exit_code == 0, r.output
    assert "trained by this project" in r.stderr and "--model" in r.stderr
    assert json.loads(r.stdout)["model"] == str(demo_dir())


# ---- plan and profiles ----------------------------------------------------------------------------------------
def test_profiles_lists_the_presets():
    r = runner.invoke(app, ["profiles", "--json"])
    assert r.exit_code == 0, r.output
    names = {p["name"] for p in json.loads(r.stdout)}
    assert {"rtx4090-256gb", "cpu-only-256gb", "h200-141gb-2tb", "laptop-4060-64gb"} <= names
    r = runner.invoke(app, ["profiles"])
    assert r.exit_code == 0 and "rtx4090-256gb" in r.stdout


def test_plan_json_has_the_promised_keys():
    r = runner.invoke(
        app, ["plan", "--model", "kimi-k2.5", "--profile", "rtx4090-256gb", "--gpu-weights", "int8", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in (
        "fits",
        "routed_expert_bytes",
        "kv_bytes_per_token",
        "gpu_bytes",
        "gpu_expert_slots",
        "ram_expert_bytes",
        "decode_tok_s_ceiling",
        "limited_by",
    ):
        assert key in out
    assert out["fits"] and out["routed_expert_bytes"] == 60 * 384 * 24_772_608 and out["kv_bytes_per_token"] == 70_272
    r = runner.invoke(app, ["plan", "--model", "kimi-k2.5", "--profile", "rtx4090-256gb", "--context", "16384"])
    assert r.exit_code == 0 and "limited by" in r.stdout and "23,040 x 24,772,608 B" in r.stdout


def test_plan_that_does_not_fit_exits_2_with_the_fix():
    r = runner.invoke(app, ["plan", "--profile", "laptop-4060-64gb", "--json"])
    assert r.exit_code == 2 and json.loads(r.stdout)["fits"] is False
    assert "GiB of GPU memory" in r.stderr and "--device cpu" in r.stderr
    r = runner.invoke(app, ["plan", "--profile", "rtx4090-256gb", "--context", "131072"])
    assert r.exit_code == 2 and "any of these fits: --context 29696" in r.stderr and "--gpu-weights int8" in r.stderr
    r = runner.invoke(app, ["plan", "--profile", "rtx4090-256gb", "--context", "131072", "--gpu-weights", "int8"])
    assert r.exit_code == 0, r.output


def test_plan_bad_input(tmp_path):
    r = runner.invoke(app, ["plan", "--profile", "rtx9090"])
    assert r.exit_code == 2 and "rtx4090-256gb" in r.output  # the known names
    r = runner.invoke(app, ["plan", "--model", "kimi-k3", "--profile", "rtx4090-256gb"])
    assert r.exit_code == 2 and "kimi-k2.5" in r.output
    r = runner.invoke(app, ["plan", "--profile", "rtx4090-256gb", "--lm-head", "disk"])
    assert r.exit_code == 2 and "choose gpu or cpu" in r.output


def test_plan_on_a_folder_and_auto(tiny_k25):
    r = runner.invoke(app, ["plan", "--model", str(tiny_k25), "--profile", "auto", "--context", "256", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["fits"] and out["profile"] == "auto" and out["limited_by"] in ("DRAM", "CPU", "GPU")


def test_generate_prints_the_plan_and_refuses_what_does_not_fit(tiny_k25, tmp_path):
    r = _generate("--model", str(tiny_k25), "--prompt-ids", "1,2", "--max-tokens", "2", "--temperature", "0")
    assert r.exit_code == 0 and "plan:" in r.stderr and "decode ceiling" in r.stderr
    small = tmp_path / "small.toml"
    small.write_text(
        'name = "small"\ndescription = "too little RAM"\ngpu_name = ""\ngpu_memory_gib = 0.0\n'
        "gpu_bandwidth_gbs = 0.0\ngpu_tflops = 0.0\npcie_gbs = 0.0\nram_gib = 0.002\ndram_gbs = 10.0\n"
        "nvme_gbs = 1.0\ncpu_cores = 1\ncpu_gflops = 10.0\n"
    )
    r = _generate("--model", str(tiny_k25), "--prompt-ids", "1,2", "--profile", str(small))
    assert r.exit_code == 2 and "GiB of RAM before any expert is cached" in r.output


def test_bench_kernels_runs_and_reports(tmp_path):
    out = tmp_path / "k.json"
    r = runner.invoke(
        app,
        [
            "bench-kernels", "--tokens", "1,3", "--shapes", "64x256", "--no-ffn", "--seconds", "0.05",
            "--ggml-types", "q4_0,iq1_m", "--json", str(out),
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "64x256" in r.stdout and "torch_int4pack" in r.stdout and "read bandwidth" in r.stdout
    assert "iq1_m" in r.stdout and "T=3 GB/s" in r.stdout
    data = json.loads(out.read_text())
    assert data["read_GBps"] > 0 and data["results"][0]["rows"]
    rows = data["ggml"]["rows"]
    assert {(row["type"], row["tokens"]) for row in rows} >= {("q4_0", 1), ("q4_0", 3), ("iq1_m", 1), ("iq1_m", 3)}
    assert all(row["weight_GBps"] > 0 for row in rows)
    assert all(row["weight_bytes"] == 64 * 8 * 18 for row in rows if row["type"] == "q4_0")  # 8 blocks of 18 bytes
    assert all(row["weight_bytes"] == 64 * 56 for row in rows if row["type"] == "iq1_m")  # one 56-byte super-block
    r = runner.invoke(app, ["bench-kernels", "--shapes", "64x60"])
    assert r.exit_code == 2 and "multiple of 32" in r.output
    r = runner.invoke(app, ["bench-kernels", "--shapes", "64x64", "--ggml-types", "q4_0,q9_9"])
    assert r.exit_code == 2 and "q9_9 unknown" in r.output


def test_generate_offload_flags_and_stats(tiny_k25):
    from typer.testing import CliRunner

    from offload.cli import app

    args = ["generate", "--model", str(tiny_k25), "--prompt-ids", "1,2,3", "--max-tokens", "3", "--temperature", "0"]
    args += ["--device", "cpu", "--ram-budget", "0.00005", "--gpu-slots", "0", "--no-prefetch", "--stats", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    experts = json.loads(r.stdout)["experts"]
    assert experts["ram_budget_bytes"] == 50_000 and experts["prefetch"] is False
    assert experts["decode"]["tokens"] == 2 and "disk_gbs" in experts["decode"]
    r = CliRunner().invoke(app, ["generate", "--model", str(tiny_k25), "--prompt-ids", "1", "--device", "cuda"])
    if not __import__("torch").cuda.is_available():
        assert r.exit_code == 2 and "--device cuda, but torch" in r.output
    r = CliRunner().invoke(app, ["generate", "--model", str(tiny_k25), "--prompt-ids", "1", "--ram-budget", "1e-6"])
    assert r.exit_code == 2 and "cannot hold one routed expert" in r.output


def test_bad_values_are_one_line_errors_not_tracebacks(tmp_path, tiny_k25):
    """Issue 19, item 7: each of these once ended in a traceback (the bench --json one after the whole run)."""
    cases = [
        (["make-model", "--preset", "tiny", "--out", str(tmp_path / "m"), "--seed", "-1"], "seed = -1"),
        (["serve", "--model", str(tiny_k25), "--port", "99999"], "--port 99999: a TCP port is 0 to 65535"),
        (["bench", "--model", str(tiny_k25), "--json", str(tmp_path / "no" / "x.json")], "does not exist"),
        (["bench", "--prompt-len", "9000", "--gen-len", "2", "--runs", "1"], "exceed the context of 8,192"),  # demo
    ]
    for args, words in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert words in r.output and "Traceback" not in r.output, (args, r.output)
    assert not (tmp_path / "m").exists()
