"""Decode tok/s on fixed tokens with one path of the model swapped in and out, in one process, rounds alternating
(a benchmark, not a CI test). Fixed tokens, not greedy ones: with random weights a change in rounding changes the
greedy tokens, the tokens change the routed experts and the experts change how much of a step comes from the
last-level cache, by more than most changes under test.

    python benchmarks/decode_ab.py MODEL --ab layer|attention|mlp|int4-q8 [--rounds 10] [--cpu-weights int8]

layer: a decode token's layers in two native calls each (kernels/cpu_layer.py) against the module path; attention: the native one-call decode attention against the torch path; mlp: the float32 path of an MLP of
QuantLinears against three Linears in bf16; int4-q8: INT4 decode experts with int8 activations against the float
kernel. Prints each side's median over the rounds (128 prompt tokens, then 32 decode steps on fixed ids).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from offload.engine.engine import Engine  # noqa: E402
from offload.experts import cpu_executor  # noqa: E402
from offload.model import mlp  # noqa: E402
from offload.model.linear import linear  # noqa: E402
from offload.planner.plan import RuntimeConfig  # noqa: E402


def switches(ab: str, model: object) -> tuple[Callable[[], None], Callable[[], None]]:
    """(use the path under test, use the one it replaced)."""
    if ab == "attention":
        natives = [b.attn.native for b in model.blocks]  # type: ignore[attr-defined]

        def set_native(on: bool) -> None:
            for b, n in zip(model.blocks, natives, strict=True):  # type: ignore[attr-defined]
                b.attn.native = n if on else None

        if not any(natives):
            raise SystemExit("no layer uses the native attention call (its Linears must be ggml types or int8)")
        return (lambda: set_native(True)), (lambda: set_native(False))
    if ab == "mlp":
        new = mlp.MLP.__call__

        def old(self: mlp.MLP, x: torch.Tensor, float_out: bool = False) -> torch.Tensor:
            y = linear(F.silu(linear(x, self.gate)) * linear(x, self.up), self.down)
            return y.float() if float_out else y

        def use(f: Callable[..., torch.Tensor]) -> Callable[[], None]:
            return lambda: setattr(mlp.MLP, "__call__", f)

        return use(new), use(old)
    if ab == "layer":
        if not model.native_decode:  # type: ignore[attr-defined]
            raise SystemExit("no layer has a native decode layer (kernels/cpu_layer.py) on this model")
        return (lambda: setattr(model, "native_decode", True)), (lambda: setattr(model, "native_decode", False))
    if ab == "int4-q8":
        q8 = cpu_executor.int4_grouped_ffn_q8_cpu
        return (lambda: setattr(cpu_executor, "int4_grouped_ffn_q8_cpu", q8)), (
            lambda: setattr(cpu_executor, "int4_grouped_ffn_q8_cpu", lambda *a: None)
        )
    raise SystemExit(f"--ab {ab!r}: choose layer, attention, mlp or int4-q8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--ab", required=True)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu-weights", default="bf16")
    args = ap.parse_args()
    cfg = RuntimeConfig(context=1024, device="cpu", threads=args.threads, cpu_weights=args.cpu_weights)
    with Engine(args.model, cfg) as engine:
        model = engine.model
        new, old = switches(args.ab, model)
        prompt, steps = torch.arange(10, 138), list(range(300, 332))

        def run() -> float:
            cache = model.new_cache(len(prompt) + len(steps) + 1)
            with torch.inference_mode():
                model.forward(prompt, 0, cache, last_only=True)
                t0 = time.perf_counter()
                for i, tok in enumerate(steps):
                    model.forward(torch.tensor([tok]), len(prompt) + i, cache)
                return len(steps) / (time.perf_counter() - t0)

        run()  # warm-up: pages in, kernels built
        res: dict[str, list[float]] = {"new": [], "old": []}
        for r in range(args.rounds):
            for side in ("new", "old") if r % 2 == 0 else ("old", "new"):
                (new if side == "new" else old)()
                res[side].append(run())
        new()
        for side, v in res.items():
            print(f"{args.ab} {side}: median {statistics.median(v):.2f} tok/s  {[round(a, 1) for a in v]}")


if __name__ == "__main__":
    main()
