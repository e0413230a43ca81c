"""Offloading benchmark (not a test): decode tok/s with the page cache warm next to the DRAM roofline, then with the
checkpoint's pages dropped and a RAM budget of a fraction of the routed expert bytes, prefetch on and off, next to
the disk's sequential read bandwidth measured in the same run.

    python scripts/bench_offload.py --model DIR [--budget-share 0.4] [--prompt-len 64] [--gen-len 32] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from offload.checkpoint import pages
from offload.engine.engine import Engine
from offload.engine.sampling import SamplingParams


def dram_read_gbs(gib: float = 1.0, repeats: int = 3) -> float:
    """Best of `repeats` float32 sums over a `gib` GiB tensor (all threads), in GB/s."""
    x = torch.ones(int(gib * (1 << 30)) // 4)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        float(x.sum())
        best = max(best, x.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def drop_all(folder: Path) -> int:
    """Drop every shard's pages; returns the bytes still resident (0 when it worked)."""
    for f in shards(folder):
        pages.drop_file(f)
    return sum(pages.file_resident_bytes(f)[0] for f in shards(folder))


def warm_all(folder: Path) -> None:
    for f in shards(folder):
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


def sequential_read_gbs(folder: Path) -> tuple[float, float]:
    """The largest shard read cold from start to end, 8 MiB at a time, in GB/s: (plain reads with the kernel's own
    readahead, the same after one readahead request for the whole file: the disk's best sequential rate)."""
    f = max(shards(folder), key=lambda p: p.stat().st_size)
    rates = []
    for advise in (False, True):
        pages.drop_file(f)
        fd = os.open(f, os.O_RDONLY)
        buf = bytearray(8 << 20)
        size = 0
        t0 = time.perf_counter()
        try:
            if advise:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            while n := os.readv(fd, [buf]):
                size += n
        finally:
            os.close(fd)
        rates.append(size / (time.perf_counter() - t0) / 1e9)
    pages.drop_file(f)
    return rates[0], rates[1]


def run(folder: Path, prompt: list[int], gen: int, budget_gb: float | None, prefetch: bool) -> dict:
    with Engine(folder, torch.bfloat16, max_context=len(prompt) + gen + 8, device="cpu", ram_budget_gb=budget_gb,
                prefetch=prefetch, prefetch_mode=os.environ.get("KIMI_PREFETCH_MODE", "advise")) as engine:  # fmt: skip
        before = engine.stats()
        r = engine.generate(prompt, SamplingParams(temperature=0.0), max_tokens=gen).run()
        used = engine.stats() - before
        wall = {"prefill": r.prefill_s, "decode": r.decode_s}
        d = used.to_dict(wall)
        plan = engine.plan
    dec = d["decode"]
    return {
        "budget_gb": budget_gb, "prefetch": prefetch, "decode_tok_s": r.decode_tok_s, "prefill_tok_s": r.prefill_tok_s,
        "decode_tokens": len(r.token_ids) - 1, "experts_per_token": dec["experts_per_token"],
        "disk_bytes_per_token": dec["disk_bytes_per_token"], "disk_gbs": dec.get("disk_gbs", 0.0),
        "recall": dec["recall"], "precision": dec["precision"], "peak_resident_bytes": d["peak_resident_bytes"],
        "dram_bytes_per_token": plan.per_token_bytes["dram"], "lines": used.lines(wall),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--budget-share", type=float, default=0.4)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    prompt = [(i * 7919) % 1000 + 10 for i in range(a.prompt_len)]
    from offload.config import ModelConfig

    cfg = ModelConfig.from_dir(a.model)
    routed = cfg.routed_expert_bytes if hasattr(cfg, "routed_expert_bytes") else None
    out: dict = {"model": str(a.model), "threads": torch.get_num_threads()}
    out["dram_read_gbs"] = dram_read_gbs()
    out["seq_read_plain_gbs"], out["seq_read_gbs"] = sequential_read_gbs(a.model)
    warm_all(a.model)
    out["warm"] = run(a.model, prompt, a.gen_len, None, True)
    out["warm"]["dram_roofline_tok_s"] = out["dram_read_gbs"] * 1e9 / out["warm"]["dram_bytes_per_token"]
    out["warm"]["roofline_fraction"] = out["warm"]["decode_tok_s"] / out["warm"]["dram_roofline_tok_s"]
    total = routed or cfg.expert_bytes * cfg.n_routed_experts * len(cfg.moe_layers)
    budget = a.budget_share * total / 1e9
    out["routed_expert_bytes"] = total
    for prefetch in (True, False):
        left = drop_all(a.model)
        key = f"cold_prefetch_{'on' if prefetch else 'off'}"
        out[key] = run(a.model, prompt, a.gen_len, budget, prefetch)
        out[key]["resident_after_drop_bytes"] = left
        per_tok = out[key]["disk_bytes_per_token"]
        out[key]["disk_roofline_tok_s"] = out["seq_read_gbs"] * 1e9 / per_tok if per_tok else None
        out[key]["disk_fraction"] = out[key]["disk_gbs"] / out["seq_read_gbs"]
    for key in ("warm", "cold_prefetch_on", "cold_prefetch_off"):
        r = out[key]
        print(f"== {key}: decode {r['decode_tok_s']:.2f} tok/s, prefill {r['prefill_tok_s']:.1f} tok/s")
        for line in r["lines"]:
            print("   ", line)
    print(f"DRAM read {out['dram_read_gbs']:.1f} GB/s -> warm roofline {out['warm']['dram_roofline_tok_s']:.1f} "
          f"tok/s ({out['warm']['roofline_fraction']:.0%} achieved); sequential disk read {out['seq_read_gbs']:.2f} "
          f"GB/s (plain reads {out['seq_read_plain_gbs']:.2f} GB/s)")  # fmt: skip
    for key in ("cold_prefetch_on", "cold_prefetch_off"):
        r = out[key]
        roof = r["disk_roofline_tok_s"]
        print(f"{key}: disk {r['disk_gbs']:.2f} GB/s = {r['disk_fraction']:.0%} of sequential; "
              f"{r['disk_bytes_per_token'] / 1e6:.1f} MB/token -> disk roofline "
              f"{roof:.2f} tok/s, achieved {r['decode_tok_s'] / roof:.0%}; recall {r['recall']:.0%}")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
