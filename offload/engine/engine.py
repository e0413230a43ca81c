"""A loaded model ready to generate: checkpoint, tokenizer, chat format, transformer and expert runtime."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from offload.checkpoint import open_checkpoint
from offload.engine.chat import ChatTurn
from offload.engine.chat_format import ChatFormat
from offload.engine.generate import Generation, PromptError, StopConditions
from offload.engine.gguf_vocab import chat_template_from_gguf, tokenizer_from_gguf
from offload.engine.kv_disk import KVDiskStore, model_identity
from offload.engine.prefix_cache import PrefixCache
from offload.engine.sampling import SamplingParams
from offload.engine.tokenizer import Tokenizer
from offload.errors import OffloadError
from offload.experts.offloaded import OffloadedExperts
from offload.experts.profile import load_profile
from offload.experts.stats import ExpertStats
from offload.model.loader import load_transformer
from offload.planner.plan import Plan, RuntimeConfig, make_plan
from offload.planner.profile import Profile, detect_profile

log = logging.getLogger(__name__)

DISK_KV_BYTES = 20 * 10**9  # default disk budget for --kv-cache-dir


class PlanError(OffloadError):
    """The run does not fit the machine; the message has the numbers and the flags to change."""


def resolve_device(device: str) -> str:
    """auto -> cuda when torch sees a CUDA device, else cpu; cuda without one is an error that says what to do."""
    if device not in ("auto", "cpu", "cuda"):
        raise PlanError(f"device {device!r}; choose auto, cpu or cuda")
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise PlanError(
            f"--device cuda, but torch {torch.__version__} sees no CUDA device; run with --device cpu "
            "(or auto), or install a CUDA build of torch"
        )
    return "cuda" if device == "auto" and has_cuda else device if device != "auto" else "cpu"


class Engine:
    """Everything `generate`, `chat`, `serve` and `bench` need from one checkpoint, planned for this machine."""

    def __init__(
        self,
        model: str | Path,
        runtime: RuntimeConfig | None = None,
        profile: Profile | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """model: a checkpoint path. runtime: what this run wants (context, device, dtype, RAM budget, GPU slots,
        prefetch); None takes the defaults. profile: the machine (None: detected, not probed). `progress` hears
        (stored bytes of a weight just prepared, stored bytes of all weights to prepare): a progress bar."""
        rt = runtime or RuntimeConfig()
        if rt.threads is not None:  # torch's pool is the native kernels' too (one libgomp); its default: physical cores
            torch.set_num_threads(rt.threads)
        self.device = resolve_device(rt.device)
        self.ckpt = open_checkpoint(model)
        self.folder = self.ckpt.path
        cfg = self.ckpt.config
        self.max_context = min(rt.context, cfg.max_position_embeddings)
        rt = replace(rt, context=self.max_context, device=self.device)  # type: ignore[arg-type]
        self.plan: Plan = make_plan(
            str(self.folder), cfg, self.ckpt.storage, profile or detect_profile(probe=False), rt
        )
        if not self.plan.fits:
            self.ckpt.close()
            raise PlanError(self.plan.refusal())
        self.dtype = torch.float32 if rt.dtype == "float32" else torch.bfloat16
        self.prefill_chunk = rt.prefill_chunk  # prompt tokens per pass through the layers
        self.prefix_cache: PrefixCache | None = None  # off until enable_prefix_cache (chat, serve)
        try:
            meta = self.ckpt.metadata
            if "tokenizer.ggml.model" in meta:  # a GGUF carries its tokenizer and template in its header
                self.tokenizer = tokenizer_from_gguf(meta, self.folder)
                self.chat_format = ChatFormat(self.tokenizer, chat_template_from_gguf(meta))
            else:
                self.tokenizer = Tokenizer.from_dir(self.folder)
                self.chat_format = ChatFormat.from_dir(self.folder, self.tokenizer)
            offload = self.plan.offload
            if rt.expert_profile is not None:  # checked before anything is read: a bad file costs nothing
                hot = load_profile(Path(rt.expert_profile), cfg).hottest()
                offload = replace(offload, hot=tuple(hot))
            self.experts = OffloadedExperts(self.ckpt, self.dtype, offload, self.plan.cost)
        except BaseException:
            self.ckpt.close()
            raise
        try:
            total = self.ckpt.storage.nonexpert_bytes
            on_bytes = None if progress is None else (lambda n: progress(n, total))
            self.model = load_transformer(
                self.ckpt, self.experts, self.dtype, self.device, on_bytes=on_bytes, cpu_weights=rt.cpu_weights
            )
        except BaseException:
            self.close()
            raise
        self.vocab_size = min(self.tokenizer.vocab_size, cfg.vocab_size)
        self.stop_ids = self.tokenizer.stop_ids | frozenset(cfg.eos_token_ids)
        log.info(
            "loaded %s (%s, %d layers, %s compute on %s)",
            self.folder,
            self.ckpt.layout,
            cfg.num_hidden_layers,
            self.dtype,
            self.device,
        )

    def check_prompt(self, ids: Sequence[int]) -> None:
        """Refuse token ids the model cannot embed (OffloadError, naming them and the range)."""
        vocab = self.ckpt.config.vocab_size
        if bad := [i for i in ids if not (isinstance(i, int) and 0 <= i < vocab)]:
            raise PromptError(
                f"token ids {bad[:8]}{' ...' if len(bad) > 8 else ''} are outside 0..{vocab - 1}, the "
                "model's vocabulary"
            )

    def stats(self) -> ExpertStats:
        """The expert runtime's counters since loading (subtract two snapshots for one answer)."""
        return self.experts.stats()

    def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingParams | None = None,
        max_tokens: int = 256,
        stop_strings: Sequence[str] = (),
        ignore_eos: bool = False,
    ) -> Generation:
        """A generation to iterate (streaming text) or `.run()`; stops on [EOS], <|im_end|> and `stop_strings`
        (with ignore_eos, only on max_tokens and stop strings: benchmarks)."""
        if isinstance(stop_strings, str):
            raise OffloadError(f"stop_strings = {stop_strings!r}; pass a sequence of strings, e.g. [{stop_strings!r}]")
        self.check_prompt(prompt_ids)
        stop = StopConditions(max_tokens, frozenset() if ignore_eos else self.stop_ids, tuple(stop_strings))
        return Generation(
            self.model,
            self.tokenizer,
            prompt_ids,
            sampling or SamplingParams(),
            stop,
            self.max_context,
            vocab_limit=self.vocab_size,
            prefill_chunk=self.prefill_chunk,
            prefix=self.prefix_cache,
        )

    def chat(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> ChatTurn:
        """One assistant reply (see ChatTurn for the options: tools, thinking, sampling, max_tokens, stop)."""
        return ChatTurn(self, messages, **kwargs)

    def enable_prefix_cache(
        self, budget_bytes: int | None = None, disk_dir: Path | None = None, disk_bytes: int = DISK_KV_BYTES
    ) -> PrefixCache:
        """Keep finished sequences' caches (in RAM, `budget_bytes`, default the plan's kv_reuse_bytes) so that a
        prompt sharing their start prefills only the rest; with `disk_dir`, also on disk across restarts."""
        disk = None
        if disk_dir is not None:
            identity = model_identity(self.ckpt.config, [f.path for f in self.ckpt.files.values()])
            disk = KVDiskStore(disk_dir, disk_bytes, identity, self.dtype)
        budget = self.plan.kv_reuse_bytes if budget_bytes is None else budget_bytes
        self.prefix_cache = PrefixCache(budget, disk)
        log.info("prefix cache: up to %.2f GB in RAM%s", budget / 1e9, f", {disk_dir} on disk" if disk_dir else "")
        return self.prefix_cache

    def close(self) -> None:
        """Stop the expert runtime's workers (and the KV writer), then unmap the checkpoint; a worker's unreported
        error is raised."""
        try:
            if self.prefix_cache is not None:
                self.prefix_cache.close()
            self.experts.close()
        finally:
            self.ckpt.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
