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
from offload.experts.dequantized import DequantizedExperts
from offload.model.loader import load_transformer
from offload.planner.plan import Plan, RuntimeConfig, make_plan
from offload.planner.profile import Profile, detect_profile

log = logging.getLogger(__name__)


class PlanError(RuntimeError):
    """The run does not fit the machine; the message has the numbers and the flags to change."""


class Engine:
    """Everything `generate`, `chat` and `serve` need from one checkpoint folder."""

    def __init__(
        self, folder: str | Path, dtype: torch.dtype = torch.bfloat16, max_context: int | None = None,
        profile: Profile | None = None, on_bytes: Callable[[int], None] | None = None,
    ) -> None:  # fmt: skip
        self.folder = Path(folder)
        self.ckpt = Checkpoint(self.folder)
        cfg = self.ckpt.config
        self.max_context = min(max_context or cfg.max_position_embeddings, cfg.max_position_embeddings)
        # the same plan `kimi-offload plan` prints; this runtime computes on the CPU until the GPU path lands
        runtime = RuntimeConfig(
            context=self.max_context, device="cpu", cpu_dtype="f32" if dtype == torch.float32 else "bf16"
        )
        self.plan: Plan = make_plan(str(self.folder), cfg, profile or detect_profile(probe=False), runtime)
        if not self.plan.fits:
            self.ckpt.close()
            raise PlanError(self.plan.refusal())
        try:
            self.tokenizer = Tokenizer.from_dir(self.folder)
            self.chat_format = ChatFormat.from_dir(self.folder, self.tokenizer)
            self.experts = DequantizedExperts(self.ckpt, dtype)
            self.model = load_transformer(self.ckpt, self.experts, dtype, on_bytes=on_bytes)
        except BaseException:
            self.ckpt.close()
            raise
        self.dtype = dtype
        self.stop_ids = self.tokenizer.stop_ids | frozenset(cfg.eos_token_ids)
        log.info("loaded %s (%s, %d layers, %s compute)", self.folder, cfg.layout, cfg.num_hidden_layers, dtype)

    def generate(
        self, prompt_ids: Sequence[int], sampling: SamplingParams | None = None, max_tokens: int = 256,
        stop_strings: Sequence[str] = (),
    ) -> Generation:  # fmt: skip
        """A generation to iterate (streaming text) or `.run()`; stops on [EOS], <|im_end|> and `stop_strings`."""
        if isinstance(stop_strings, str):
            raise ValueError(f"stop_strings = {stop_strings!r}; pass a sequence of strings, e.g. [{stop_strings!r}]")
        stop = StopConditions(max_tokens, self.stop_ids, tuple(stop_strings))
        return Generation(
            self.model, self.tokenizer, prompt_ids, sampling or SamplingParams(), stop, self.max_context,
            vocab_limit=min(self.tokenizer.vocab_size, self.ckpt.config.vocab_size),
        )  # fmt: skip

    def chat(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> ChatTurn:
        """One assistant reply (see ChatTurn for the options: tools, thinking, sampling, max_tokens, stop)."""
        return ChatTurn(self, messages, **kwargs)

    def close(self) -> None:
        self.ckpt.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
