"""Test helpers shared by several test files: greedy decoding through our model, and random INT4 weights.

Nothing here imports Triton (tests/test_triton_kernels.py must be the first to import it, as the interpreter).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from kernels.cpu_int4 import Int4Expert, Int4Linear
from offload.checkpoint import Checkpoint, open_checkpoint
from offload.experts.offloaded import OffloadedExperts
from offload.experts.runtime import ExpertRuntime
from offload.model.loader import load_transformer
from offload.model.transformer import Transformer

PROMPT = (5, 17, 99, 3, 250, 7, 41, 8)
STEPS = 10


# ---- greedy decoding ----------------------------------------------------------------------------------------------
def greedy(model: Transformer, prompt: Sequence[int] = PROMPT, steps: int = STEPS) -> tuple[list[int], torch.Tensor]:
    """The prompt in one pass, then `steps` steps of one token each over the latent cache: the greedy tokens and
    every pass's float32 logits [steps + 1, V], on the CPU whatever device the model runs on."""
    cache = model.new_cache(len(prompt) + steps + 1)
    logits = model.forward(torch.tensor(list(prompt)), 0, cache, last_only=True)  # [1, V]
    seen, tokens = [logits], []
    for pos in range(len(prompt), len(prompt) + steps):
        tokens.append(int(logits[0].argmax()))
        logits = model.forward(torch.tensor(tokens[-1:]), pos, cache)  # [1, V]
        seen.append(logits)
    out = torch.cat(seen)  # [steps + 1, V]
    assert out.device.type == "cpu" and out.dtype == torch.float32 and bool(out.isfinite().all())
    return tokens, out


@contextmanager
def loaded(
    folder: Path,
    make_runtime: Callable[[Checkpoint], ExpertRuntime],
    device: str = "cpu",
    record: list[tuple[int, int]] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[Transformer, ExpertRuntime]]:
    """The `dtype` (float32) model of `folder` on `device` with the runtime `make_runtime(ckpt)` makes, closed on exit (an
    OffloadedExperts; its stats stay readable). `record` gets (experts on the GPU, experts on the CPU) of each
    OffloadedExperts layer call."""
    with open_checkpoint(folder) as ckpt:
        runtime = make_runtime(ckpt)
        try:
            if record is not None:
                assert isinstance(runtime, OffloadedExperts), "record spies on OffloadedExperts' GPU/CPU split"
                split = runtime._split

                def spy(*args):  # type: ignore[no-untyped-def]
                    on_gpu, on_cpu = split(*args)
                    record.append((len(on_gpu), len(on_cpu)))
                    return on_gpu, on_cpu

                runtime._split = spy  # type: ignore[method-assign]
            model = load_transformer(ckpt, runtime, dtype, device)
            assert model.norm.device.type == device
            assert model.embed.device.type == "cpu"
            yield model, runtime
        finally:
            if isinstance(runtime, OffloadedExperts):
                runtime.close()


# ---- cancelling --------------------------------------------------------------------------------------------------
class SetAfter(threading.Event):
    """An event that reads as set from its n-th check on: a cancel arriving in the middle of a pass."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.n


# ---- random INT4 weights ------------------------------------------------------------------------------------------
def random_int4(out_f: int, in_f: int, gen: torch.Generator) -> Int4Linear:
    """One Linear in the checkpoint's INT4 format, on the CPU: random packed words (every nibble value, sign bit
    included) and positive bf16 scales in [1/128, 3/128) (rows of `in_f` products stay of order one)."""
    packed = torch.randint(-(2**31), 2**31 - 1, (out_f, in_f // 8), dtype=torch.int32, generator=gen)  # [out, in/8]
    scale = ((torch.rand(out_f, in_f // 32, generator=gen) + 0.5) / 64).to(torch.bfloat16)  # [out, in/32]
    return packed, scale


def random_int4_expert(hidden: int, inter: int, gen: torch.Generator) -> Int4Expert:
    """(gate [I, D], up [I, D], down [D, I]), each from random_int4, in that order."""
    return random_int4(inter, hidden, gen), random_int4(inter, hidden, gen), random_int4(hidden, inter, gen)
