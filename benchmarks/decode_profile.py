"""Where a CPU decode step's time goes, and how many torch ops it runs (a benchmark, not a CI test).

Loads a model (a GGUF file or a safetensors folder), runs a short greedy generation to warm up, then:
1. torch.profiler over `--steps` decode steps: the top-level aten ops (those not called by another aten op) per step
   and per layer, and the ten most frequent with the Python function (in offload/ or kernels/) that called them;
2. cProfile over the same number of steps: the functions with the most own time (a native kernel called through
   ctypes counts as its Python caller's own time).

    python benchmarks/decode_profile.py MODEL [--threads 2] [--prompt-len 32] [--steps 16] [--cpu-weights bf16|int8]
"""

from __future__ import annotations

import argparse
import cProfile
import collections
import io
import pstats
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from offload.engine.engine import Engine  # noqa: E402
from offload.engine.sampling import SamplingParams  # noqa: E402
from offload.planner.plan import RuntimeConfig  # noqa: E402


def caller(ev: object) -> str:
    """The innermost offload/ or kernels/ frame of a profiler event's Python stack."""
    for frame in getattr(ev, "stack", None) or []:
        for root in ("offload/", "kernels/"):
            if root in frame:
                return frame[frame.index(root) :]
    return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--cpu-weights", default="bf16")
    args = ap.parse_args()
    cfg = RuntimeConfig(context=1024, device="cpu", threads=args.threads, cpu_weights=args.cpu_weights)
    with Engine(args.model, cfg) as engine:
        layers = engine.ckpt.config.num_hidden_layers
        prompt = list(range(10, 10 + args.prompt_len))
        greedy = SamplingParams(temperature=0.0)
        engine.generate(prompt, greedy, 4, ignore_eos=True).run()  # warm-up: kernels built, pages in

        def steps(n: int) -> None:
            engine.generate(prompt, greedy, n, ignore_eos=True).run()

        # profile n + 1 tokens and subtract 1 token's run: the prefill is removed by differencing two runs
        counts: dict[int, collections.Counter[str]] = {}
        callers: dict[int, collections.Counter[tuple[str, str]]] = {}
        for n in (1, args.steps + 1):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_stack=True) as prof:
                steps(n)
            c: collections.Counter[str] = collections.Counter()
            cc: collections.Counter[tuple[str, str]] = collections.Counter()
            for ev in prof.events():
                if not ev.name.startswith("aten::"):
                    continue
                parent = ev.cpu_parent
                if parent is not None and parent.name.startswith("aten::"):
                    continue
                c[ev.name] += 1
                cc[(ev.name, caller(ev))] += 1
            counts[n], callers[n] = c, cc
        per_step = (sum(counts[args.steps + 1].values()) - sum(counts[1].values())) / args.steps
        print(
            f"top-level aten ops per decode step: {per_step:.0f}"
            + (f" ({per_step / layers:.1f} per layer)" if layers else "")
        )
        diff = callers[args.steps + 1] - callers[1]
        for (name, where), k in diff.most_common(12):
            print(f"  {k / args.steps:6.1f} per step  {name:<28} {where}")
        pr = cProfile.Profile()
        pr.enable()
        steps(args.steps + 1)
        pr.disable()
        out = io.StringIO()
        pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())


if __name__ == "__main__":
    main()
