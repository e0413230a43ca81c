"""Where a CPU decode step's time goes, and how many torch ops it runs (a benchmark, not a CI test).

Loads a model (a GGUF file or a safetensors folder), runs a short greedy generation to warm up, then:
1. torch.profiler over `--steps` decode steps (after the prefill and first token): the top-level aten ops (those not
   called by another aten op) per step and per layer, and the most frequent;
2. wall time per decode step, and the part of it inside the native kernel calls (MoE layers, Linears, MLA's
   absorbed matrices), timed around each call without a profiler;
3. cProfile over the same number of steps: the functions with the most own time (a native kernel called through
   ctypes counts as its Python caller's own time).

    python benchmarks/decode_profile.py MODEL [--threads 2] [--prompt-len 32] [--steps 16] [--cpu-weights bf16|int8]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import pstats
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from offload.engine.engine import Engine  # noqa: E402
from offload.engine.sampling import SamplingParams  # noqa: E402
from offload.planner.plan import RuntimeConfig  # noqa: E402


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

        model = engine.model
        forward = model.forward
        passes = [0]

        def counted(*a: object, **k: object) -> object:
            passes[0] += 1
            return forward(*a, **k)

        model.forward = counted  # type: ignore[method-assign]

        def decode(n: int, profiler: object) -> int:
            """n + 1 tokens; `profiler` (enable/disable, or a torch profiler's start/stop) runs from the first text
            piece on (after the prefill); the decode passes it saw."""
            it = iter(engine.generate(prompt, greedy, n + 1, ignore_eos=True))
            next(it)  # the prefill and the first token
            at = passes[0]
            on, off = (
                (profiler.enable, profiler.disable) if hasattr(profiler, "enable") else (profiler.start, profiler.stop)
            )  # type: ignore[attr-defined]
            on()
            for _ in it:
                pass
            off()
            return passes[0] - at

        prof = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU],
        )
        n = decode(args.steps, prof)
        c: collections.Counter[str] = collections.Counter()
        for ev in prof.events():
            parent = ev.cpu_parent
            if ev.name.startswith("aten::") and not (parent is not None and parent.name.startswith("aten::")):
                c[ev.name] += 1
        per_step = sum(c.values()) / n
        print(f"top-level aten ops per decode step: {per_step:.0f} ({per_step / layers:.1f} per layer)")
        for name, k in c.most_common(12):
            print(f"  {k / n:6.1f} per step  {name}")
        print("aten ops by own CPU time per decode step (the native calls through ctypes are not aten ops):")
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]:
            print(f"  {e.self_cpu_time_total / n / 1e3:6.2f} ms  {e.count / n:6.1f} calls  {e.key}")
        import time

        from kernels import cpu_ggml, cpu_layer
        from offload.model import attention, linear, router

        spent: collections.Counter[str] = collections.Counter()

        def timed(name: str, fn: Any) -> Any:
            def call(*a: Any, **k: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    spent[name] += time.perf_counter() - t0

            return call

        cpu_ggml.ggml_grouped_ffn_cpu = timed("MoE layers (ggml_grouped_ffn_cpu)", cpu_ggml.ggml_grouped_ffn_cpu)
        linear.ggml_linear_cpu = timed("Linears (ggml_linear_cpu)", linear.ggml_linear_cpu)
        attention.MlaDecoder.__call__ = timed(
            "attention (MlaDecoder, one call per layer)", attention.MlaDecoder.__call__
        )  # type: ignore[method-assign]
        router.Router.select = timed("router scores and choice (Router.select)", router.Router.select)  # type: ignore[method-assign]
        router.route_cpu = timed("router, native (route_cpu)", router.route_cpu)
        attention.ggml_linear_batched_cpu = timed(
            "absorbed MLA (ggml_linear_batched_cpu)", attention.ggml_linear_batched_cpu
        )
        cpu_layer.DecodeLayer.attend = timed(  # type: ignore[method-assign]
            "native layers, first call (norm, attention, norm, routing)", cpu_layer.DecodeLayer.attend
        )
        cpu_layer.DecodeLayer.finish = timed(  # type: ignore[method-assign]
            "native layers, second call (routed experts, shared expert or dense MLP)", cpu_layer.DecodeLayer.finish
        )
        cpu_layer.NativeMlp.__call__ = timed("MLPs on the module path (NativeMlp)", cpu_layer.NativeMlp.__call__)  # type: ignore[method-assign]

        class Wall:
            def enable(self) -> None:
                spent.clear()
                self.t0 = time.perf_counter()

            def disable(self) -> None:
                self.s = time.perf_counter() - self.t0

        wall = Wall()
        n = decode(args.steps, wall)
        step = wall.s / n
        print(f"decode step: {step * 1e3:.2f} ms ({1 / step:.2f} tok/s) over {n} steps")
        for name, t in spent.most_common():
            print(f"  {t / n * 1e3:6.2f} ms  {t / wall.s:6.1%}  {name}")
        rest = wall.s - sum(spent.values())
        print(f"  {rest / n * 1e3:6.2f} ms  {rest / wall.s:6.1%}  everything else (torch ops, Python)")
        pr = cProfile.Profile()
        n = decode(args.steps, pr)
        print(f"cProfile over {n} decode steps:")
        out = io.StringIO()
        pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())


if __name__ == "__main__":
    main()
