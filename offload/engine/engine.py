"""A loaded model ready to generate: checkpoint, tokenizer, chat format, transformer and expert runtime."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from offload.checkpoint import Checkpoint
from offload.engine.chat import ChatTurn
from offload.engine.chat_format import ChatFormat
from offload.engine.generate import Generation, StopConditions
from offload.engine.sampling import SamplingParams
from offload.engine.tokenizer import Tokenizer
from offload.experts.cost import CostModel
from offload.experts.offloaded import OffloadConfig, OffloadedExperts
from offload.experts.stats import ExpertStats
from offload.model.loader import load_transformer
from offload.planner.plan import Plan, RuntimeConfig, make_plan
from offload.planner.profile import Profile, detect_profile

log = logging.getLogger(__name__)


class PlanError(RuntimeError):
    """The run does not fit the machine; the message has the numbers and the flags to change."""


def resolve_device(device: str) -> str:
    """auto -> cuda when torch sees a CUDA device, else cpu; cuda without one is an error that says what to do."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {device!r}; choose auto, cpu or cuda")
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise PlanError(f"--device cuda, but torch {torch.__version__} sees no CUDA device; run with --device cpu "
                        "(or auto), or install a CUDA build of torch")  # fmt: skip
    return "cuda" if device == "auto" and has_cuda else device if device != "auto" else "cpu"


class Engine:
    """Everything `generate`, `chat` and `serve` need from one checkpoint folder."""

    def __init__(
        self, folder: str | Path, dtype: torch.dtype = torch.bfloat16, max_context: int | None = None,
        profile: Profile | None = None, on_bytes: Callable[[int], None] | None = None, device: str = "auto",
        ram_budget_gb: float | None = None, gpu_slots: int | None = None, prefetch: bool = True,
        prefetch_mode: str = "advise",
    ) -> None:  # fmt: skip
        """device: auto, cpu or cuda. ram_budget_gb / gpu_slots: None takes the plan's. prefetch: read the next
        layer's predicted experts ahead of use."""
        self.folder = Path(folder)
        self.device = resolve_device(device)
        self.ckpt = Checkpoint(self.folder)
        cfg = self.ckpt.config
        self.max_context = min(max_context or cfg.max_position_embeddings, cfg.max_position_embeddings)
        prof = profile or detect_profile(probe=False)
        runtime = RuntimeConfig(
            context=self.max_context, device="cuda" if self.device == "cuda" else "cpu",
            cpu_dtype="f32" if dtype == torch.float32 else "bf16", gpu_slots=gpu_slots, ram_budget_gb=ram_budget_gb,
        )  # fmt: skip
        self.plan: Plan = make_plan(str(self.folder), cfg, prof, runtime)
        if not self.plan.fits:
            self.ckpt.close()
            raise PlanError(self.plan.refusal())
        budget = self.plan.ram_budget["expert_page_cache"]
        on_gpu = self.device == "cuda"
        offload = OffloadConfig(
            ram_budget=None if budget >= self.plan.routed_expert_bytes else budget,
            gpu_slots=self.plan.gpu_expert_slots if on_gpu else 0, prefetch=prefetch, prefetch_mode=prefetch_mode,
            device=self.device,
        )  # fmt: skip
        cost = CostModel(
            self.plan.expert_bytes, 3 * cfg.hidden_size * cfg.moe_intermediate_size, prof.dram_gbs, prof.nvme_gbs,
            prof.cpu_gflops, prof.pcie_gbs if on_gpu else 0.0, prof.gpu_tflops if on_gpu else 0.0,
        )  # fmt: skip
        try:
            self.tokenizer = Tokenizer.from_dir(self.folder)
            self.chat_format = ChatFormat.from_dir(self.folder, self.tokenizer)
            self.experts = OffloadedExperts(self.ckpt, dtype, offload, cost)
        except BaseException:
            self.ckpt.close()
            raise
        try:
            self.model = load_transformer(self.ckpt, self.experts, dtype, self.device, on_bytes=on_bytes)
        except BaseException:
            self.close()
            raise
        self.dtype = dtype
        self.stop_ids = self.tokenizer.stop_ids | frozenset(cfg.eos_token_ids)
        log.info("loaded %s (%s, %d layers, %s compute on %s)", self.folder, cfg.layout, cfg.num_hidden_layers, dtype,
                 self.device)  # fmt: skip

    def stats(self) -> ExpertStats:
        """The expert runtime's counters since loading (subtract two snapshots for one answer)."""
        return self.experts.stats()

    def generate(
        self, prompt_ids: Sequence[int], sampling: SamplingParams | None = None, max_tokens: int = 256,
        stop_strings: Sequence[str] = (), ignore_eos: bool = False,
    ) -> Generation:  # fmt: skip
        """A generation to iterate (streaming text) or `.run()`; stops on [EOS], <|im_end|> and `stop_strings`
        (with ignore_eos, only on max_tokens and stop strings: benchmarks)."""
        if isinstance(stop_strings, str):
            raise ValueError(f"stop_strings = {stop_strings!r}; pass a sequence of strings, e.g. [{stop_strings!r}]")
        stop = StopConditions(max_tokens, frozenset() if ignore_eos else self.stop_ids, tuple(stop_strings))
        return Generation(
            self.model, self.tokenizer, prompt_ids, sampling or SamplingParams(), stop, self.max_context,
            vocab_limit=min(self.tokenizer.vocab_size, self.ckpt.config.vocab_size),
        )  # fmt: skip

    def chat(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> ChatTurn:
        """One assistant reply (see ChatTurn for the options: tools, thinking, sampling, max_tokens, stop)."""
        return ChatTurn(self, messages, **kwargs)

    def close(self) -> None:
        """Stop the expert runtime's workers, then unmap the checkpoint; a worker's unreported error is raised."""
        try:
            self.experts.close()
        finally:
            self.ckpt.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
