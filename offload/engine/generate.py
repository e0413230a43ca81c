"""The generate loop: prefill the prompt, then decode one token at a time until a stop condition."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from offload.engine.prefix_cache import PrefixCache
from offload.engine.sampling import Sampler, SamplingParams
from offload.errors import OffloadError
from offload.model.cache import LatentCache
from offload.model.cancel import Cancelled
from offload.model.transformer import Transformer

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled"]


class PromptError(OffloadError):
    """A prompt the model cannot take: empty, longer than the context, or with token ids outside the vocabulary."""


class TextStream(Protocol):
    def push(self, token_id: int) -> str: ...
    def flush(self) -> str: ...


class Detokenizer(Protocol):
    def stream(self, skip_special: bool = False) -> TextStream: ...
    def is_special(self, token_id: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class StopConditions:
    """Generation ends at the first of: a stop token, a stop string in the text, max_tokens generated."""

    max_tokens: int = 256
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise OffloadError(f"max_tokens = {self.max_tokens}; generate at least one token")
        if isinstance(self.stop_strings, str) or not all(isinstance(s, str) and s for s in self.stop_strings):
            raise OffloadError(f"stop_strings = {self.stop_strings!r}; expected a tuple of non-empty strings")


@dataclass(slots=True)
class GenerationResult:
    """What one generation produced and how long its two phases took."""

    token_ids: list[int] = field(default_factory=list)  # every generated id, the stop token included
    text: str = ""  # the decoded text, without the stop token or stop string
    finish_reason: FinishReason = "length"
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose cache came from an earlier sequence (not prefilled)
    prefill_s: float = 0.0  # prompt forward + first token
    decode_s: float = 0.0  # every later token

    @property
    def prefill_tok_s(self) -> float:
        """Prompt tokens computed (not reused) per second; 0 when the prefill did not finish (cancelled)."""
        done = self.prompt_tokens - self.cached_tokens
        return done / self.prefill_s if self.prefill_s and self.token_ids else 0.0

    @property
    def decode_tok_s(self) -> float:
        n = len(self.token_ids) - 1
        return n / self.decode_s if n > 0 and self.decode_s else 0.0


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _first_stop(text: str, stops: Sequence[str], start: int, special: list[tuple[int, int]]) -> int:
    """Index of the earliest stop string in text[start:] that does not overlap a special token's text; -1 if none."""
    best = -1
    for s in stops:
        i = text.find(s, start)
        while i >= 0 and any(a < i + len(s) and i < b for a, b in special):
            i = text.find(s, i + 1)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


class Generation:
    """One run of the loop: iterate it for text pieces as they become final; `result` is complete afterwards."""

    def __init__(
        self,
        model: Transformer,
        detok: Detokenizer,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        stop: StopConditions,
        max_context: int | None = None,
        vocab_limit: int | None = None,
        prefill_chunk: int = 4096,
        prefix: PrefixCache | None = None,
    ) -> None:
        """`prefix`: finished sequences' caches to start from (the longest shared prefix is not prefilled), and
        where this one's is kept when it ends."""
        if not prompt_ids:
            raise PromptError("the prompt is empty; give at least one token")
        limit = max_context or model.cfg.max_position_embeddings
        if len(prompt_ids) >= limit:
            raise PromptError(f"the prompt has {len(prompt_ids)} tokens; the context holds {limit}")
        self.model = model
        self.detok = detok
        self.prompt_ids = list(prompt_ids)
        self.prompt = torch.tensor(self.prompt_ids, dtype=torch.long)
        self.sampler = Sampler(sampling)
        self.stop = stop
        self.max_new = min(stop.max_tokens, limit - len(prompt_ids))
        self.vocab_limit = vocab_limit  # ids past the tokenizer's (a padded embedding) are never sampled
        self.prefill_chunk = prefill_chunk  # prompt tokens per pass through the layers
        self.prefix = prefix
        self.result = GenerationResult(prompt_tokens=len(prompt_ids))
        self._started = False
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop after the current step (thread-safe): a client went away, or the user pressed Ctrl-C."""
        self._cancel.set()

    def _next(self, logits: torch.Tensor) -> int:
        return self.sampler(logits[: self.vocab_limit] if self.vocab_limit else logits)

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("a Generation runs once; call Engine.generate again for another run")
        self._started = True
        t0 = time.perf_counter()
        cache = self.model.new_cache(len(self.prompt) + self.max_new)
        if self.prefix is not None:
            seq, n = self.prefix.match(self.prompt_ids)
            if seq is not None:
                cache.load(seq.latent[:, :n], seq.k_pe[:, :n])
                self.result.cached_tokens = n
        try:
            yield from self._steps(cache, t0)
        finally:
            if self.prefix is not None and cache.filled:
                self._keep(self.prefix, cache)

    def _keep(self, prefix: PrefixCache, cache: LatentCache) -> None:
        """Hand the positions this generation completed to the prefix cache (finished or cancelled alike)."""
        ids = self.prompt_ids + self.result.token_ids
        try:
            prefix.store(ids[: cache.filled], *cache.prefix(cache.filled))
        except Exception:  # keeping the cache is an optimisation: the answer stands
            log.exception("keeping a finished sequence's cache failed")

    def _steps(self, cache: LatentCache, t0: float) -> Iterator[str]:
        r, stop = self.result, self.stop
        longest_stop = max((len(s) for s in stop.stop_strings), default=0)
        text_stream = self.detok.stream()
        emitted = 0  # characters of r.text already yielded
        cut = False  # a stop string ended the text; what the detokenizer holds back is past it
        special: list[tuple[int, int]] = []  # character spans of special tokens in r.text
        start = r.cached_tokens
        try:
            logits = self.model.prefill(self.prompt, cache, self.prefill_chunk, stop=self._cancel, start=start)[0]
        except Cancelled:  # the client left during prefill: no token was made
            r.finish_reason = "cancelled"
            r.prefill_s = time.perf_counter() - t0
            return
        pos = len(self.prompt)
        while True:
            token = self._next(logits)
            r.token_ids.append(token)
            if len(r.token_ids) == 1:
                r.prefill_s = time.perf_counter() - t0
                t0 = time.perf_counter()
            if token in stop.stop_ids:
                r.finish_reason = "stop"
                break
            piece = text_stream.push(token)
            if self.detok.is_special(token):  # "<think>" is a marker, not text a stop string may match inside
                special.append((len(r.text), len(r.text) + len(piece)))
            r.text += piece
            tail = max(0, len(r.text) - len(piece) - longest_stop)  # a new match must end in the new piece
            hit = _first_stop(r.text, stop.stop_strings, tail, special)
            if hit >= 0:
                r.text, r.finish_reason, cut = r.text[:hit], "stop", True
                break
            safe = len(r.text) - _held_back(r.text, stop.stop_strings)
            if safe > emitted:
                yield r.text[emitted:safe]
                emitted = safe
            if len(r.token_ids) >= self.max_new:
                break
            if self._cancel.is_set():
                r.finish_reason = "cancelled"
                break
            logits = self.model.forward(torch.tensor([token]), pos, cache)[0]
            pos += 1
        if not cut:
            r.text += text_stream.flush()
        if len(r.token_ids) > 1:
            r.decode_s = time.perf_counter() - t0
        if len(r.text) > emitted:
            yield r.text[emitted:]

    def run(self) -> GenerationResult:
        """Run to the end without streaming."""
        for _ in self:
            pass
        return self.result
