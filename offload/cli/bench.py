"""`kimi-offload bench`: measure the machine, load, run, print the table (and the JSON). Part of the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from offload.bench.limits import drop_checkpoint, measure, read_files, shard_files
from offload.bench.runner import PROSE, RunResult, bench_prompt, run_once, summarize
from offload.bench.spec import BenchSpec
from offload.cli.console import console, err, fail
from offload.cli.load import load_engine, model_dir
from offload.cli.options import (
    ModelOpt,
    ProfileOpt,
    run_options,
)
from offload.errors import OffloadError
from offload.experts.profile import save_profile
from offload.planner.plan import RuntimeConfig

BENCH = BenchSpec()  # bench's defaults


@run_options(context=False)
def bench_cmd(
    model: ModelOpt = None,
    profile: ProfileOpt = "auto",
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens per run.")] = BENCH.prompt_len,
    gen_len: Annotated[int, typer.Option(help="Tokens generated per run (end-of-text ignored).")] = BENCH.gen_len,
    runs: Annotated[int, typer.Option(help="Measured runs (median, min and max are reported).")] = BENCH.runs,
    cold: Annotated[bool, typer.Option("--cold", help="Drop the checkpoint from the page cache first (checked).")] = (
        False
    ),
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every figure, with units, to this file.")] = (
        None
    ),
    prompt_text: Annotated[
        Path | None, typer.Option(help="A UTF-8 text file whose tokens, repeated, make the prompt (default: prose).")
    ] = None,
    save_expert_profile: Annotated[
        Path | None,
        typer.Option(help="Write the measured runs' router picks per expert here (a routing profile, JSON)."),
    ] = None,
    *,
    runtime: RuntimeConfig,
) -> None:
    """Tokens per second, where experts came from, and the fraction of this machine's limits, measured together."""
    try:
        spec = BenchSpec(prompt_len, gen_len, runs, cold)
        runtime = replace(runtime, context=prompt_len + gen_len + 1)  # a run's context is what it uses
    except OffloadError as e:
        raise fail(str(e)) from None
    for flag, path in (("--json", json_path), ("--save-expert-profile", save_expert_profile)):
        if path is not None and not path.parent.is_dir():  # checked now, not after minutes of runs
            raise fail(f"{flag} {path}: the folder {path.parent} does not exist")
    text = PROSE
    if prompt_text is not None:
        try:
            text = prompt_text.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise fail(f"--prompt-text {prompt_text}: cannot be read as UTF-8 text ({e})") from None
        if not text.strip():
            raise fail(f"--prompt-text {prompt_text}: the file is empty; give some text")
    run_bench(
        model_dir=model_dir(model),
        profile=profile,
        spec=spec,
        runtime=runtime,
        json_path=json_path,
        text=text,
        save_profile_to=save_expert_profile,
    )


def run_bench(
    *,
    model_dir: Path,
    profile: str,
    spec: BenchSpec,
    runtime: RuntimeConfig,
    json_path: Path | None,
    text: str = PROSE,
    save_profile_to: Path | None = None,
) -> None:
    import psutil

    err.print("[dim]measuring this machine: DRAM read and copy, matmul, the checkpoint disk's sequential read…[/]")
    limits = measure(model_dir)
    size = sum(f.stat().st_size for f in shard_files(model_dir))
    left = None
    if spec.cold:
        left = drop_checkpoint(model_dir)
        if left:
            raise fail(
                f"--cold: {left:,} bytes of {model_dir} are still in the page cache after dropping it (another "
                "process has the checkpoint mapped?); stop it and run again"
            )
        err.print(f"[dim]--cold: the checkpoint's pages were dropped; mincore finds {left} bytes resident[/]")
    elif size < psutil.virtual_memory().available * 0.8:
        read_files(shard_files(model_dir))  # the page cache holds the checkpoint: a warm start
    engine = load_engine(model_dir, runtime, profile)
    if spec.prompt_len + spec.gen_len > engine.max_context:
        engine.close()
        raise fail(
            f"--prompt-len {spec.prompt_len} + --gen-len {spec.gen_len} = {spec.prompt_len + spec.gen_len:,} tokens "
            f"exceed the context of {engine.max_context:,}; lower them"
        )
    with engine:
        prompt = bench_prompt(engine, spec.prompt_len, text)
        if not spec.cold:
            run_once(engine, prompt[: min(32, len(prompt))], 4)  # warm-up: kernels built, first touches done
        before = engine.stats()
        runs: list[RunResult] = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True) as progress:
            for i in range(spec.runs):
                task = progress.add_task(f"run {i + 1}/{spec.runs}", total=spec.gen_len)

                def advance(n: int, task: TaskID = task) -> None:
                    progress.update(task, completed=n)

                runs.append(run_once(engine, prompt, spec.gen_len, advance))
        measured = engine.stats() - before
        out = summarize(engine, spec, limits, runs, measured, left)
        if save_profile_to is not None:
            tokens = sum(r.prompt_tokens + r.generated for r in runs)
            source = f"{model_dir.name}: bench, {spec.runs} x ({spec.prompt_len} prompt + {spec.gen_len} generated)"
            try:
                saved = save_profile(save_profile_to, engine.ckpt.config, measured.choices, tokens, source)
            except (OSError, OffloadError) as e:
                raise fail(f"--save-expert-profile {save_profile_to}: cannot be written ({e})") from None
            top = saved.hottest(max(1, round(0.1 * sum(len(c) for c in saved.picks.values()))))
            err.print(
                f"[dim]wrote {save_profile_to}: {tokens:,} tokens' router picks; the most picked 10% of (layer, "
                f"expert) pairs took {saved.share(top):.0%} of them[/]"
            )
    console.print(_table(out))
    if json_path is not None:
        json_path.write_text(json.dumps(out, indent=1))
        err.print(f"[dim]wrote {json_path}[/]")


def _rate(out: dict[str, Any], key: str, unit: str = "tok/s") -> str:
    return f"{out[key]:,.2f} {unit} (min {out[key + '_min']:,.2f}, max {out[key + '_max']:,.2f})"


def _table(out: dict[str, Any]) -> Table:
    s, lim, ex = out["settings"], out["limits"], out["experts"]
    dec = ex["decode"]
    t = Table(
        title=f"kimi-offload bench: {out['model']} ({out['device']}, {out['dtype']}, {out['threads']} threads)",
        show_header=False,
    )
    budget = "unbounded" if s["ram_budget_bytes"] is None else f"{s['ram_budget_bytes'] / 1e9:.3f} GB"
    t.add_row(
        "runs",
        f"{s['runs']} x ({s['prompt_len']} prompt + {s['gen_len']} generated tokens), "
        f"{'cold start' if s['cold'] else 'page cache warm'}; RAM budget {budget}, {s['gpu_slots']} GPU slots, "
        f"prefetch {'on' if s['prefetch'] else 'off'}",
    )
    if ex.get("held_experts"):
        t.add_row(
            "routing profile",
            f"{ex['held_experts']:,} hottest experts held in RAM, {ex['held_load_bytes'] / 1e9:.3f} GB read at load",
        )
    t.add_row("decode", _rate(out, "decode_tok_s"))
    t.add_row("prefill", _rate(out, "prefill_tok_s"))
    t.add_row("time to first token", _rate(out, "ttft_s", "s"))
    per = dec["experts_per_token"]
    t.add_row("experts per decode token", f"GPU slot {per['gpu']:.1f}, RAM {per['ram']:.1f}, disk {per['disk']:.1f}")
    disk = f"{dec['disk_bytes_per_token'] / 1e6:,.2f} MB/token, {out['decode_disk_gbs']:.2f} GB/s"
    t.add_row("decode disk reads", disk)
    guessed = dec["predicted"] > 0
    t.add_row(
        "next-layer prediction",
        f"precision {dec['precision']:.0%}, recall {dec['recall']:.0%}"
        if guessed
        else "no guesses made: nothing to act on (prefetch needs a RAM budget or GPU slots)",
    )
    routing = ex["routing"]
    t.add_row(
        "routing skew",
        f"top 10% of experts take {routing['top10_share']:.0%} of picks, top 25% take "
        f"{routing['top25_share']:.0%} (uniform: 10%, 25%)",
    )
    rss, gpu = out["peak_rss_bytes"] / 2**30, out["gpu_peak_bytes"] / 2**30
    t.add_row("peak memory", f"RSS {rss:.2f} GiB, GPU {gpu:.2f} GiB")
    disk = (
        f"disk sequential {lim['disk_read_gbs']:.2f} GB/s (best of readahead {lim['disk_read_advised_gbs']:.2f}, "
        f"plain {lim['disk_read_plain_gbs']:.2f})"
    )
    t.add_row(
        "measured limits",
        f"DRAM read {lim['dram_read_gbs']:.1f} GB/s, copy {lim['dram_copy_gbs']:.1f} GB/s; "
        f"matmul {lim['cpu_gflops']:.0f} GFLOP/s; {disk}",
    )
    for name, key, frac in (
        ("DRAM", "dram_roofline_tok_s", "roofline_fraction"),
        ("compute", "compute_roofline_tok_s", "compute_fraction"),
        ("disk", "disk_roofline_tok_s", "disk_fraction"),
    ):
        if out[key]:
            t.add_row(f"{name} ceiling", f"{out[key]:,.2f} tok/s; achieved {out[frac]:.0%}")
    return t
