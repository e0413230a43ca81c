"""Benchmark runs over a loaded engine, and their summary against the limits measured in the same run."""

from __future__ import annotations

import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psutil
import torch

from offload.bench.limits import Limits
from offload.bench.spec import BenchSpec
from offload.engine.engine import Engine
from offload.engine.sampling import SamplingParams
from offload.experts.stats import ExpertStats

# ordinary prose, repeated to the prompt length: real text routes like real use, unlike random ids
PROSE = (
    "The Moon is Earth's only natural satellite. It orbits at an average distance of about 384,400 kilometres, "
    "roughly thirty times the diameter of Earth, and always shows the same face to us because its rotation is "
    "tidally locked. Its gravity raises the ocean tides, and its phases have set calendars for thousands of years. "
)


@dataclass(frozen=True, slots=True)
class RunResult:
    prompt_tokens: int
    generated: int
    prefill_s: float  # prompt forward and the first token: the time to first token
    decode_s: float
    prefill_tok_s: float
    decode_tok_s: float
    peak_rss_bytes: int  # the process's resident memory, sampled at every token
    experts: ExpertStats  # counters of this run alone


def bench_prompt(engine: Engine, n: int, text: str = PROSE) -> list[int]:
    """n token ids of ordinary prose (PROSE, or `text`; repeated as needed)."""
    ids = engine.tokenizer.encode(text)
    return (ids * (n // max(1, len(ids)) + 1))[:n]


def run_once(
    engine: Engine, prompt: list[int], gen_len: int, on_token: Callable[[int], None] | None = None
) -> RunResult:
    """One greedy generation of exactly `gen_len` tokens (end-of-text ignored); on_token hears the count so far."""
    me = psutil.Process()
    before = engine.stats()
    gen = engine.generate(prompt, SamplingParams(temperature=0.0), gen_len, ignore_eos=True)
    rss = me.memory_info().rss
    for _ in gen:
        rss = max(rss, me.memory_info().rss)
        if on_token is not None:
            on_token(len(gen.result.token_ids))
    r = gen.result
    return RunResult(
        r.prompt_tokens,
        len(r.token_ids),
        r.prefill_s,
        r.decode_s,
        r.prefill_tok_s,
        r.decode_tok_s,
        max(rss, me.memory_info().rss),
        engine.stats() - before,
    )


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        out["kimi_offload"] = version("kimi-offload")
    except PackageNotFoundError:
        out["kimi_offload"] = "source tree"
    return out


def summarize(
    engine: Engine,
    spec: BenchSpec,
    limits: Limits,
    runs: list[RunResult],
    total: ExpertStats,
    resident_after_drop: int | None,
) -> dict[str, Any]:
    """Every figure, its unit in its name. Ceilings: the plan's per-token bytes and FLOPs (at the mean decode
    context) over the rates measured in this run; fractions: the median decode rate over each ceiling."""
    plan = engine.plan
    profile = replace(
        plan.profile, dram_gbs=limits.dram_read_gbs, cpu_gflops=limits.cpu_gflops, nvme_gbs=limits.disk_read_gbs
    )
    measured_plan = plan.replan(profile, context=spec.prompt_len + spec.gen_len // 2)
    secs = measured_plan.seconds_per_token
    decode = _spread([r.decode_tok_s for r in runs])
    prefill = _spread([r.prefill_tok_s for r in runs])
    ttft = _spread([r.prefill_s for r in runs])
    wall = {"prefill": sum(r.prefill_s for r in runs), "decode": sum(r.decode_s for r in runs)}
    experts = total.to_dict(wall)
    out: dict[str, Any] = {
        "model": str(engine.folder),
        "versions": _versions(),
        "device": engine.device,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "settings": {
            **asdict(spec),
            "ram_budget_bytes": total.ram_budget_bytes,
            "gpu_slots": total.gpu_slots,
            "prefetch": total.prefetch,
        },
        "limits": asdict(limits),
        "decode_tok_s": decode["median"],
        "decode_tok_s_min": decode["min"],
        "decode_tok_s_max": decode["max"],
        "prefill_tok_s": prefill["median"],
        "prefill_tok_s_min": prefill["min"],
        "prefill_tok_s_max": prefill["max"],
        "ttft_s": ttft["median"],
        "ttft_s_min": ttft["min"],
        "ttft_s_max": ttft["max"],
        "bytes_per_token": dict(measured_plan.per_token_bytes),
        "dram_roofline_tok_s": 1 / secs["DRAM"] if secs["DRAM"] else None,
        "compute_roofline_tok_s": 1 / secs["CPU"] if secs["CPU"] else None,
        "disk_roofline_tok_s": 1 / secs["NVMe"] if secs["NVMe"] else None,
        "plan_ceiling_tok_s": measured_plan.decode_tok_s_ceiling,
        "plan_limited_by": measured_plan.limited_by,
        "experts": experts,
        "decode_disk_gbs": experts["decode"].get("disk_gbs", 0.0),
        "peak_rss_bytes": max(r.peak_rss_bytes for r in runs),
        "gpu_peak_bytes": torch.cuda.max_memory_allocated() if engine.device == "cuda" else 0,
        "resident_after_drop_bytes": resident_after_drop,
        "runs": [{k: v for k, v in asdict(r).items() if k != "experts"} for r in runs],
    }
    for name, key in (("roofline_fraction", "DRAM"), ("compute_fraction", "CPU"), ("disk_fraction", "NVMe")):
        out[name] = decode["median"] * secs[key] if secs[key] else None
    out["disk_bandwidth_fraction"] = out["decode_disk_gbs"] / limits.disk_read_gbs if limits.disk_read_gbs else None
    return out
