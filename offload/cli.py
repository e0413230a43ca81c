"""The `kimi-offload` command line. The only module that talks to the terminal."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from offload.bench.spec import BenchSpec
from offload.checkpoint import Checkpoint, CheckpointError
from offload.engine.generate import StopConditions
from offload.engine.sampling import SamplingParams
from offload.planner.plan import RuntimeConfig
from offload.quant import ConfigError
from offload.synth.generator import SynthOptions

if TYPE_CHECKING:
    from offload.cli_load import OffloadFlags

SYNTH = SynthOptions()  # make-model's defaults come from the dataclass
SAMPLING = SamplingParams()  # and generate's from these
STOP = StopConditions()
RUNTIME = RuntimeConfig()  # and plan's
BENCH = BenchSpec()  # and bench's

app = typer.Typer(help="Run Kimi K2.5-class MoE checkpoints with experts offloaded to RAM and disk.",
                  no_args_is_help=True, add_completion=False)  # fmt: skip
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # messages hold paths: never wrap them


def _fail(msg: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {msg}")
    return typer.Exit(code)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command("make-model")
def make_model(
    out: Annotated[Path, typer.Option(help="Folder to create (must not exist or be empty).")],
    preset: Annotated[
        str, typer.Option(help="tiny (a few MB), mini (~200 MB, 384 experts), bench (several GB).")
    ] = "tiny",
    layout: Annotated[str, typer.Option(help="k2.5 (nested, language_model. prefix), k2, or deepseek-v3.")] = "k2.5",
    experts: Annotated[
        str, typer.Option(help="int4 (like K2.5), fp8 (like K2-Instruct / DeepSeek-V3), bf16.")
    ] = "int4",
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same weights in every layout.")] = SYNTH.seed,
    skew: Annotated[
        float, typer.Option(help="Expert popularity skew through e_score_correction_bias (0 = none).")
    ] = SYNTH.skew,
) -> None:
    """Write a synthetic checkpoint in the exact published format (config, sharded safetensors, tokenizer)."""
    from offload.synth.generator import data_bytes, write_model
    from offload.synth.presets import PRESETS, preset_config

    try:
        cfg = preset_config(preset, layout, experts)
    except ConfigError as e:
        raise _fail(str(e)) from None
    options = SynthOptions(seed=seed, skew=skew, max_shard_bytes=PRESETS[preset].max_shard_bytes)
    total = data_bytes(cfg)
    t0 = time.perf_counter()
    columns = (TextColumn("writing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("write", total=total)
        try:
            write_model(cfg, out, options, on_bytes=lambda n: progress.advance(task, n))
        except (FileExistsError, ValueError, OSError) as e:
            raise _fail(str(e)) from None
    dt = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.iterdir())
    console.print(f"wrote {out}: preset {preset}, layout {layout}, experts {experts}, seed {seed}; "
                  f"{size / 1e6:,.1f} MB in {dt:.1f} s")  # fmt: skip


@app.command("inspect")
def inspect_cmd(
    model: Annotated[Path, typer.Option(help="Checkpoint folder (config.json + safetensors).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What a checkpoint folder is: layout, weight formats, layers, experts, bytes by part, shards, tokenizer."""
    from offload.summary import describe

    try:
        with Checkpoint(model) as ckpt:
            info = describe(ckpt)
    except (ConfigError, CheckpointError) as e:
        raise _fail(str(e)) from None
    if as_json:
        console.print_json(json.dumps(info))
        return
    t = Table(title=str(model), show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    skip = {"bytes_by_part", "bytes_by_dtype", "tokenizer", "folder"}
    for k, v in info.items():
        if k in skip:
            continue
        t.add_row(k.replace("_", " "), _gb(v) if "bytes" in k else str(v))
    for part, n in sorted(info["bytes_by_part"].items(), key=lambda kv: -kv[1]):
        t.add_row(f"  {part}", _gb(n))
    t.add_row("by dtype", ", ".join(f"{d} {_gb(n)}" for d, n in sorted(info["bytes_by_dtype"].items())))
    t.add_row("tokenizer", ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in info["tokenizer"].items()))
    console.print(t)


def _model_dir(model: Path | None) -> Path:
    """The given folder, or the built-in demo model (shipped with the package)."""
    if model is not None:
        return model
    from offload.synth.demo import ensure_demo_model

    err.print(
        "[yellow]no --model given: using the built-in demo model, a small model (35 M parameters, 64 experts) trained "
        "by this project on Python's documentation, in Kimi K2.5's checkpoint format. It knows some Python docs and "
        "nothing else.[/] Point --model at a real checkpoint folder (config.json, *.safetensors, tiktoken.model) to "
        "run Kimi."
    )
    try:
        return ensure_demo_model()[0]
    except FileNotFoundError as e:
        raise _fail(str(e)) from None


def _parse_ids(prompt: str | None, prompt_ids: str | None, chat: bool) -> list[int] | None:
    """--prompt-ids as a list (None when --prompt is used); checked before the model loads."""
    if (prompt is None) == (prompt_ids is None):
        raise _fail("give exactly one of --prompt TEXT or --prompt-ids 1,2,3")
    if prompt_ids is None:
        return None
    if chat:
        raise _fail("--chat needs --prompt TEXT (token ids are used as they are)")
    try:
        ids = [int(x) for x in prompt_ids.replace(" ", "").split(",") if x]
    except ValueError:
        raise _fail(f"--prompt-ids {prompt_ids!r}: expected comma-separated integers, e.g. 1,2,3") from None
    if not ids:
        raise _fail("--prompt-ids is empty; give at least one token id")
    return ids


DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when torch sees a GPU), cpu or cuda.")]
RAM_BUDGET_HELP = (
    "GB (1e9 B) of routed experts kept in RAM; past it their pages are released. Default: the plan's (all the RAM "
    "the rest leaves)."
)
RamBudgetOpt = Annotated[float | None, typer.Option(help=RAM_BUDGET_HELP)]
GpuSlotsOpt = Annotated[int | None, typer.Option(help="Routed experts kept on the GPU (default: the plan's).")]
PrefetchOpt = Annotated[
    bool, typer.Option("--prefetch/--no-prefetch", help="Read the next layer's predicted experts ahead of use.")
]


STATS_HELP = "Print where experts came from, disk traffic, prediction recall and expert time."


def _flags(device: str, ram_budget: float | None, gpu_slots: int | None, prefetch: bool) -> OffloadFlags:
    from offload.cli_load import OffloadFlags

    return OffloadFlags(device, ram_budget, gpu_slots, prefetch)


@app.command("generate")
def generate_cmd(
    model: Annotated[Path | None, typer.Option(help="Checkpoint folder; default: the built-in demo model.")] = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt text (encoded as plain text).")] = None,
    prompt_ids: Annotated[str | None, typer.Option(help="Prompt as token ids, e.g. 1,2,3.")] = None,
    chat: Annotated[bool, typer.Option(help="Wrap --prompt as one user turn in the chat format.")] = False,
    thinking: Annotated[bool, typer.Option(help="With --chat: let the model reason first (<think>).")] = True,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = STOP.max_tokens,
    temperature: Annotated[float, typer.Option(help="0 decodes greedily.")] = SAMPLING.temperature,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = SAMPLING.top_p,
    top_k: Annotated[int, typer.Option(help="Keep the k likeliest tokens (0 = all).")] = SAMPLING.top_k,
    min_p: Annotated[float, typer.Option(help="Drop tokens below min_p x the likeliest one's probability.")] = (
        SAMPLING.min_p
    ),
    seed: Annotated[int | None, typer.Option(help="Sampling seed (reproducible runs).")] = SAMPLING.seed,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    dtype: Annotated[str, typer.Option(help="Compute dtype: bfloat16, or float32 for exact comparisons.")] = (
        "bfloat16"
    ),
    context: Annotated[
        int | None,
        typer.Option(help=f"Tokens of context to plan for (default {RUNTIME.context}, at most the model's)."),
    ] = None,
    profile: Annotated[str, typer.Option(help="Hardware profile for the start-up plan: auto, a preset or a .toml.")] = (
        "auto"
    ),
    device: DeviceOpt = "auto",
    ram_budget: RamBudgetOpt = None,
    gpu_slots: GpuSlotsOpt = None,
    prefetch: PrefetchOpt = True,
    stats: Annotated[bool, typer.Option("--stats", help=STATS_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming text.")] = False,
) -> None:
    """Generate from a prompt: prefill, then decode token by token, streaming the text."""
    from offload.cli_load import LOAD_ERRORS, load_engine
    from offload.engine.reasoning import parse_output
    from offload.planner.report import summary_lines

    ids = _parse_ids(prompt, prompt_ids, chat)
    folder = _model_dir(model)
    try:
        sampling = SamplingParams(temperature, top_p, top_k, min_p, seed)
        engine = load_engine(folder, dtype, context if context is not None else RUNTIME.context, profile,
                             flags=_flags(device, ram_budget, gpu_slots, prefetch))  # fmt: skip
    except LOAD_ERRORS as e:
        raise _fail(str(e)) from None
    if not as_json:
        err.print("\n".join(summary_lines(engine.plan)), style="dim", markup=False, highlight=False)
    with engine:
        if ids is None:
            assert prompt is not None
            messages = [{"role": "user", "content": prompt}]
            try:
                ids = (
                    engine.chat_format.encode(messages, thinking=thinking) if chat else engine.tokenizer.encode(prompt)
                )
            except ValueError as e:  # ChatFormatError: the checkpoint's template refused the conversation
                raise _fail(str(e)) from None
        vocab = engine.ckpt.config.vocab_size
        if bad := [i for i in ids if not 0 <= i < vocab]:
            raise _fail(f"--prompt-ids {bad} outside 0..{vocab - 1}, the model's vocabulary")
        try:
            gen = engine.generate(ids, sampling, max_tokens, stop or ())
        except ValueError as e:
            raise _fail(str(e)) from None
        before = engine.stats()
        if as_json:
            r = gen.run()
        else:
            for piece in gen:  # the model's text exactly: no markup, emoji codes or wrapping
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            r = gen.result
        used = engine.stats() - before
    out = {
        "model": str(folder), "dtype": dtype, "prompt_tokens": r.prompt_tokens, "token_ids": r.token_ids,
        "text": r.text, "finish_reason": r.finish_reason, "generated_tokens": len(r.token_ids),
        "prefill_s": round(r.prefill_s, 4), "decode_s": round(r.decode_s, 4),
        "prefill_tok_s": round(r.prefill_tok_s, 2), "decode_tok_s": round(r.decode_tok_s, 2),
    }  # fmt: skip
    if chat:
        parsed = parse_output(r.text, engine.chat_format.prompt_ends_in_thinking(ids))
        out["reasoning"], out["content"] = parsed.reasoning, parsed.content
        out["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.raw_arguments} for c in parsed.tool_calls]
    wall = {"prefill": r.prefill_s, "decode": r.decode_s}
    if stats:
        out["experts"] = used.to_dict(wall)
    if as_json:
        console.print_json(json.dumps(out, ensure_ascii=False))
        return
    if stats:
        err.print("\n".join(used.lines(wall)), style="dim", markup=False, highlight=False)
    err.print(
        f"[dim]{r.prompt_tokens} prompt tokens, {len(r.token_ids)} generated ({r.finish_reason}); "
        f"prefill {r.prefill_tok_s:,.1f} tok/s, decode {r.decode_tok_s:,.1f} tok/s[/]"
    )


@app.command("chat")
def chat_cmd(
    model: Annotated[Path | None, typer.Option(help="Checkpoint folder; default: the built-in demo model.")] = None,
    profile: Annotated[str, typer.Option(help="Hardware profile for the start-up plan: auto, a preset or a .toml.")] = (
        "auto"
    ),
    system: Annotated[str | None, typer.Option(help="System prompt (default: the model's own).")] = None,
    think: Annotated[bool, typer.Option("--think/--no-think", help="Let the model reason before answering.")] = True,
    temperature: Annotated[
        float | None, typer.Option(help="Default: 1.0 with thinking, 0.6 without (Kimi's advice).")
    ] = None,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = SAMPLING.top_p,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 1024,
    seed: Annotated[int | None, typer.Option(help="Sampling seed; answer k of a session uses seed + k.")] = None,
    context: Annotated[int | None, typer.Option(help=f"Context to plan for (default {RUNTIME.context}).")] = None,
    dtype: Annotated[str, typer.Option(help="Compute dtype: bfloat16 or float32.")] = "bfloat16",
    device: DeviceOpt = "auto",
    ram_budget: RamBudgetOpt = None,
    gpu_slots: GpuSlotsOpt = None,
    prefetch: PrefetchOpt = True,
) -> None:
    """Chat in the terminal: streaming answers, thinking shown apart, /help for commands."""
    from offload.cli_chat import run_chat

    run_chat(
        model_dir=_model_dir(model), profile=profile, system=system, think=think, temperature=temperature,
        top_p=top_p, max_tokens=max_tokens, seed=seed, dtype=dtype, console=console, err=err, fail=_fail,
        context=context if context is not None else RUNTIME.context,
        flags=_flags(device, ram_budget, gpu_slots, prefetch),
    )  # fmt: skip


@app.command("serve")
def serve_cmd(
    model: Annotated[Path | None, typer.Option(help="Checkpoint folder; default: the built-in demo model.")] = None,
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Require `Authorization: Bearer KEY`.")] = None,
    model_name: Annotated[str | None, typer.Option(help="Name in /v1/models (default: the folder's name).")] = None,
    profile: Annotated[str, typer.Option(help="Hardware profile for the start-up plan: auto, a preset or a .toml.")] = (
        "auto"
    ),
    context: Annotated[int | None, typer.Option(help=f"Context to plan for (default {RUNTIME.context}).")] = None,
    dtype: Annotated[str, typer.Option(help="Compute dtype: bfloat16 or float32.")] = "bfloat16",
    max_queue: Annotated[int, typer.Option(help="Requests waiting beyond the running one before 503.")] = 16,
    device: DeviceOpt = "auto",
    ram_budget: RamBudgetOpt = None,
    gpu_slots: GpuSlotsOpt = None,
    prefetch: PrefetchOpt = True,
) -> None:
    """An OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models, /health."""
    from offload.cli_serve import run_server

    run_server(
        model_dir=_model_dir(model), host=host, port=port, api_key=api_key, model_name=model_name, profile=profile,
        context=context if context is not None else RUNTIME.context, dtype=dtype, max_queue=max_queue, err=err,
        fail=_fail, flags=_flags(device, ram_budget, gpu_slots, prefetch),
    )  # fmt: skip


@app.command("bench")
def bench_cmd(
    model: Annotated[Path | None, typer.Option(help="Checkpoint folder; default: the built-in demo model.")] = None,
    profile: Annotated[str, typer.Option(help="Hardware profile for the plan: auto, a preset or a .toml.")] = "auto",
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens per run.")] = BENCH.prompt_len,
    gen_len: Annotated[int, typer.Option(help="Tokens generated per run (end-of-text ignored).")] = BENCH.gen_len,
    runs: Annotated[int, typer.Option(help="Measured runs (median, min and max are reported).")] = BENCH.runs,
    cold: Annotated[bool, typer.Option("--cold", help="Drop the checkpoint from the page cache first (checked).")] = (
        False
    ),
    dtype: Annotated[str, typer.Option(help="Compute dtype: bfloat16 or float32.")] = "bfloat16",
    device: DeviceOpt = "auto",
    ram_budget: RamBudgetOpt = None,
    gpu_slots: GpuSlotsOpt = None,
    prefetch: PrefetchOpt = True,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every figure, with units, to this file.")] = (
        None
    ),
) -> None:
    """Tokens per second, where experts came from, and the fraction of this machine's limits, measured together."""
    from offload.cli_bench import run_bench

    try:
        spec = BenchSpec(prompt_len, gen_len, runs, cold)
    except ValueError as e:
        raise _fail(str(e)) from None
    run_bench(model_dir=_model_dir(model), profile=profile, dtype=dtype, spec=spec,
              flags=_flags(device, ram_budget, gpu_slots, prefetch), json_path=json_path, console=console, err=err,
              fail=_fail)  # fmt: skip


@app.command("bench-kernels")
def bench_kernels_cmd(
    tokens: Annotated[str, typer.Option(help="Tokens per expert to measure, comma-separated.")] = "1,4,32",
    shapes: Annotated[
        str, typer.Option(help="Matrices [out]x[in]: K2.5's gate (2048x7168) and the bench preset's.")
    ] = ("2048x7168,512x2048"),
    ffn: Annotated[bool, typer.Option(help="Also time whole experts (gate, up, down) on the K2.5 shape.")] = True,
    seconds: Annotated[float, typer.Option(help="Most seconds per candidate and token count.")] = 3.0,
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write every figure to this JSON file.")] = None,
) -> None:
    """CPU INT4 expert kernels: weight GB/s of each candidate against the read bandwidth measured in the same run."""
    from kernels.bench import bench_expert_ffn_cpu, bench_int4_cpu, format_table, measure_read_bandwidth

    try:
        toks = tuple(int(t) for t in tokens.split(","))
        dims = [tuple(int(v) for v in s.lower().split("x")) for s in shapes.split(",")]
        if any(len(d) != 2 or d[1] % 32 for d in dims) or any(t < 1 for t in toks):
            raise ValueError
    except ValueError:
        raise _fail("--tokens is like 1,4,32 and --shapes like 2048x7168 (in a multiple of 32)") from None
    read = measure_read_bandwidth()
    err.print(f"read bandwidth measured now: {read:.1f} GB/s")
    results = []
    for out_f, in_f in dims:
        err.print(f"timing {out_f}x{in_f} ...")
        results.append(bench_int4_cpu((out_f, in_f), toks, max_seconds=seconds, read_GBps=read))
    if ffn:
        err.print("timing whole K2.5 experts ...")
        results.append(bench_expert_ffn_cpu((7168, 2048), toks, max_seconds=seconds, read_GBps=read))
    for line in format_table(results):
        console.print(line, markup=False, highlight=False)
    if as_json is not None:
        as_json.write_text(json.dumps({"read_GBps": read, "results": results}, indent=1, default=str))


@app.command("profiles")
def profiles_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list.")] = False) -> None:
    """The hardware presets `plan --profile` knows (files in profiles/)."""
    from dataclasses import asdict

    from offload.planner.profile import list_profiles

    presets = list_profiles()
    if as_json:
        console.print_json(json.dumps([asdict(p) for p in presets]))
        return
    t = Table(title="hardware profiles (peak spec values)")
    t.add_column("name", no_wrap=True, style="bold")
    for col in ("GPU", "GPU GB/s", "PCIe GB/s", "RAM", "DRAM GB/s", "NVMe GB/s", "cores", "description"):
        t.add_column(col)
    for p in presets:
        gpu = f"{p.gpu_memory_gib:g} GiB" if p.has_gpu else "-"
        gpu_bw, pcie = (f"{p.gpu_bandwidth_gbs:g}", f"{p.pcie_gbs:g}") if p.has_gpu else ("-", "-")
        t.add_row(p.name, gpu, gpu_bw, pcie, f"{p.ram_gib:g} GiB", f"{p.dram_gbs:g}", f"{p.nvme_gbs:g}",
                  str(p.cpu_cores), p.description)  # fmt: skip
    console.print(t)


@app.command("plan")
def plan_cmd(
    model: Annotated[
        str,
        typer.Option(
            help="Built-in model (kimi-k2.5, kimi-k2-thinking, kimi-k2-instruct, deepseek-v3) or a checkpoint folder."
        ),
    ] = "kimi-k2.5",
    profile: Annotated[
        str, typer.Option(help="A preset (see `profiles`), auto (measure this machine), or a .toml file.")
    ] = "auto",
    context: Annotated[int, typer.Option(help="Tokens of KV cache to reserve.")] = RUNTIME.context,
    gpu_weights: Annotated[
        str, typer.Option(help="Non-expert weights on the GPU: bf16 or int8.")
    ] = RUNTIME.gpu_weights,
    lm_head: Annotated[str, typer.Option(help="Where lm_head runs: gpu or cpu.")] = RUNTIME.lm_head,
    device: Annotated[
        str, typer.Option(help="auto (use the GPU when the profile has one), cpu, or cuda (the profile must have one).")
    ] = RUNTIME.device,
    expert_bpw: Annotated[
        float | None, typer.Option(help="What-if: bits per routed-expert weight (e.g. 2.5 for a Q2_K-class file).")
    ] = RUNTIME.expert_bpw,
    gpu_slots: GpuSlotsOpt = RUNTIME.gpu_slots,
    ram_budget: RamBudgetOpt = RUNTIME.ram_budget_gb,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Will it run, how, and how fast: placement, GPU and RAM budgets, disk reads and the decode ceiling."""
    from offload.planner.plan import make_plan
    from offload.planner.profile import ProfileError, load_profile
    from offload.planner.report import plan_sections
    from offload.planner.shapes import resolve_model

    try:
        name, cfg = resolve_model(model)
        prof = load_profile(profile)
        # the strings are checked by RuntimeConfig itself, with a message naming the choices
        rt = RuntimeConfig(context, gpu_weights, lm_head, device, expert_bpw=expert_bpw,  # type: ignore[arg-type]
                           gpu_slots=gpu_slots, ram_budget_gb=ram_budget)  # fmt: skip
    except (ConfigError, ProfileError, ValueError) as e:
        raise _fail(str(e)) from None
    plan = make_plan(name, cfg, prof, rt)
    if as_json:
        console.print_json(json.dumps(plan.to_dict()))
    else:
        for title, rows in plan_sections(plan):
            t = Table(title=title, show_header=False, title_justify="left")
            t.add_column("what", style="bold")
            t.add_column("value")
            for k, v in rows:
                t.add_row(k.replace("_", " "), v)
            console.print(t)
    if not plan.fits:
        raise _fail(plan.refusal())


def _gb(n: object) -> str:
    if not isinstance(n, int):
        return str(n)
    if n >= 1 << 30:
        return f"{n / (1 << 30):,.2f} GiB ({n:,} B)"
    if n >= 1 << 20:
        return f"{n / (1 << 20):,.2f} MiB ({n:,} B)"
    return f"{n:,} B"


if __name__ == "__main__":
    app()
