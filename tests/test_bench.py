"""`kimi-offload bench`: the figures it derives, and the command end to end on a tiny checkpoint (no timings)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from offload.bench.limits import Limits, disk_read_gbs, drop_checkpoint, resident_bytes, shard_files
from offload.bench.runner import RunResult, bench_prompt, run_once, summarize
from offload.bench.spec import BenchSpec
from offload.cli import app
from offload.engine.engine import Engine
from offload.planner.plan import RuntimeConfig
from tests.conftest import make


def test_spec_is_checked():
    with pytest.raises(ValueError, match="gen_len >= 2"):
        BenchSpec(gen_len=1)


def test_drop_and_read_back(tmp_path):
    folder = make(tmp_path, "tiny")
    assert drop_checkpoint(folder) == 0  # a checkpoint just written is flushed, then dropped
    largest = max(shard_files(folder), key=lambda p: p.stat().st_size)
    with open(largest, "rb") as f:
        f.read()
    assert resident_bytes(folder) >= largest.stat().st_size - 4096
    fast, plain = disk_read_gbs(largest)
    assert fast > 0 and plain > 0 and resident_bytes(folder) < largest.stat().st_size  # dropped again after


def test_summary_figures_follow_from_the_runs_and_limits(tiny_k25):
    spec = BenchSpec(prompt_len=8, gen_len=3, runs=3)
    limits = Limits(
        dram_read_gbs=10.0,
        dram_copy_gbs=12.0,
        cpu_gflops=100.0,
        disk_read_gbs=2.0,
        disk_read_advised_gbs=2.0,
        disk_read_plain_gbs=1.0,
        disk_file="x",
    )
    with Engine(tiny_k25, RuntimeConfig(context=16, device="cpu", prefetch=False)) as engine:
        prompt = bench_prompt(engine, 8)
        assert len(prompt) == 8
        before = engine.stats()
        real = run_once(engine, prompt, 3)
        assert real.generated == 3 and real.prompt_tokens == 8 and real.peak_rss_bytes > 0
        runs = [
            RunResult(8, 3, 0.5 * i, 1.0, 16 / i, float(r), 1000 * i, real.experts) for i, r in ((1, 9), (2, 5), (3, 7))
        ]
        out = summarize(engine, spec, limits, runs, engine.stats() - before, None)
    assert (out["decode_tok_s"], out["decode_tok_s_min"], out["decode_tok_s_max"]) == (7.0, 5.0, 9.0)
    assert (out["prefill_tok_s"], out["ttft_s"], out["ttft_s_max"]) == (8.0, 1.0, 1.5)
    assert out["peak_rss_bytes"] == 3000
    dram = out["bytes_per_token"]["dram"]
    assert out["dram_roofline_tok_s"] == pytest.approx(10e9 / dram)
    assert out["roofline_fraction"] == pytest.approx(7.0 / (10e9 / dram))
    assert out["disk_roofline_tok_s"] is None and out["disk_fraction"] is None  # everything in RAM: no disk term
    assert out["compute_roofline_tok_s"] > 0 and out["limits"]["cpu_gflops"] == 100.0
    assert out["experts"]["decode"]["tokens"] == 2 and out["settings"]["gen_len"] == 3


def test_bench_command_cold_with_json(tmp_path):
    folder = make(tmp_path, "tiny")
    out_file = tmp_path / "bench.json"
    args = ["bench", "--model", str(folder), "--prompt-len", "8", "--gen-len", "3", "--runs", "2", "--cold"]
    r = CliRunner().invoke(app, [*args, "--device", "cpu", "--no-prefetch", "--json", str(out_file)])
    assert r.exit_code == 0, r.output
    out = json.loads(out_file.read_text())
    assert out["resident_after_drop_bytes"] == 0 and len(out["runs"]) == 2
    assert all(run["generated"] == 3 for run in out["runs"])
    for key in ("decode_tok_s", "prefill_tok_s", "dram_roofline_tok_s", "roofline_fraction", "ttft_s"):
        assert out[key] > 0, key
    assert "decode" in r.output and "DRAM ceiling" in r.output
    bad = CliRunner().invoke(app, ["bench", "--model", str(folder), "--gen-len", "1"])
    assert bad.exit_code == 2 and "gen_len >= 2" in bad.output
