"""`kimi-offload make-model` and `inspect` as a user runs them."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from offload.cli import app

runner = CliRunner()


def test_make_model_then_inspect(tmp_path):
    out = tmp_path / "m"
    r = runner.invoke(app, ["make-model", "--preset", "tiny", "--out", str(out), "--layout", "k2", "--experts", "fp8",
                            "--seed", "7"])  # fmt: skip
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
    from offload.engine.sampling import SamplingParams

    args = ["--model", str(tiny_k25), "--prompt-ids", "5,6,7,8", "--max-tokens", "6", "--temperature", "0",
            "--dtype", "float32", "--json"]  # fmt: skip
    r = _generate(*args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in ("token_ids", "text", "prompt_tokens", "prefill_tok_s", "decode_tok_s", "finish_reason"):
        assert key in out
    assert out["prompt_tokens"] == 4 and 1 <= len(out["token_ids"]) <= 6
    import torch

    with Engine(tiny_k25, torch.float32) as engine:
        want = engine.generate([5, 6, 7, 8], SamplingParams(temperature=0), max_tokens=6).run()
    assert out["token_ids"] == want.token_ids and out["text"] == want.text
    assert json.loads(_generate(*args).stdout)["token_ids"] == out["token_ids"]


def test_generate_chat_streams_and_splits_reasoning(tiny_k25):
    r = _generate("--model", str(tiny_k25), "--prompt", "Hi <|im_end|>", "--chat", "--no-thinking",
                  "--max-tokens", "4", "--seed", "1", "--json")  # fmt: skip
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


def test_generate_without_model_makes_the_demo_once(tmp_path, monkeypatch):
    monkeypatch.setenv("KIMI_OFFLOAD_CACHE", str(tmp_path / "cache"))
    r = _generate("--prompt", "Hello", "--max-tokens", "2", "--temperature", "0", "--json")
    assert r.exit_code == 0, r.output
    assert "synthetic" in r.stderr and "--model" in r.stderr
    demo = tmp_path / "cache" / "demo-mini-v1"
    assert json.loads(r.stdout)["model"] == str(demo) and (demo / "config.json").is_file()
    stamp = (demo / "config.json").stat().st_mtime_ns
    r = _generate("--prompt", "Hello", "--max-tokens", "2", "--temperature", "0", "--json")
    assert r.exit_code == 0 and (demo / "config.json").stat().st_mtime_ns == stamp  # reused, not rewritten
