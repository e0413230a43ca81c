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
