"""Finished sequences' latent caches, kept so that a prompt starting the same way prefills only the rest.

An entry is a token sequence and the latent cache of all its positions (every layer), copied to RAM: K2.5 keeps
70,272 bytes a token, so a 5,000-token system prompt with tools is 0.35 GB. `match` finds the entry sharing the
longest prefix with a new prompt (at most its length - 1: the last prompt token is always computed, for the
logits); the generation copies that prefix into its own cache and, when it ends (finished or cancelled), `store`
keeps the positions it completed. Entries are LRU under a byte budget; one that another entry extends is dropped.
With a KVDiskStore (offload/engine/kv_disk.py) they are also written to disk and found there after a restart.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from offload.engine.kv_disk import KVDiskStore

log = logging.getLogger(__name__)


@dataclass(eq=False)
class CachedSequence:
    """Token ids [n] and their latent cache: latent [L, n, kv_lora_rank], k_pe [L, n, rope] (CPU tensors)."""

    ids: np.ndarray
    latent: torch.Tensor
    k_pe: torch.Tensor
    used: int = 0  # LRU clock

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.latent.shape[1] != n or self.k_pe.shape[1] != n:
            raise ValueError(f"{n} ids but cache tensors of {self.latent.shape[1]} / {self.k_pe.shape[1]} positions")

    @property
    def nbytes(self) -> int:
        return self.latent.nbytes + self.k_pe.nbytes + self.ids.nbytes

    def __len__(self) -> int:
        return len(self.ids)


def _extends(longer: CachedSequence, shorter: CachedSequence) -> bool:
    """`shorter`'s ids are a prefix of `longer`'s (or equal)."""
    return len(shorter) <= len(longer) and common_prefix(longer.ids, shorter.ids) == len(shorter)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two id arrays."""
    m = min(len(a), len(b))
    if m == 0:
        return 0
    differ = np.flatnonzero(a[:m] != b[:m])
    return int(differ[0]) if len(differ) else m


@dataclass
class PrefixStats:
    lookups: int = 0
    hits: int = 0  # lookups that reused at least one token
    tokens_saved: int = 0  # prompt tokens not prefilled, summed
    stored: int = 0
    evicted: int = 0
    disk_loads: int = 0
    entries: int = 0
    bytes_held: int = 0
    budget_bytes: int = 0
    disk: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class PrefixCache:
    """Cached sequences under `budget_bytes` of RAM, least recently used first out; thread-safe."""

    def __init__(self, budget_bytes: int, disk: KVDiskStore | None = None) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes = {budget_bytes}; give 0 (nothing kept) or more")
        self.budget = budget_bytes
        self.disk = disk
        self._entries: list[CachedSequence] = []
        self._clock = itertools.count(1)
        self._lock = threading.Lock()
        self._stats = PrefixStats(budget_bytes=budget_bytes)

    # ---- lookup ------------------------------------------------------------------------------------------------
    def match(self, prompt: list[int] | np.ndarray) -> tuple[CachedSequence | None, int]:
        """The entry sharing the longest prefix with `prompt` and that length (< len(prompt)); (None, 0) if none.
        A longer match on disk is loaded into RAM first."""
        ids = np.asarray(prompt, dtype=np.int64)
        limit = len(ids) - 1
        with self._lock:
            self._stats.lookups += 1
            best, n = self._best(ids, limit)
        if self.disk is not None and limit > n:
            loaded = self.disk.load_longest(ids, n, limit)
            if loaded is not None:
                with self._lock:
                    self._stats.disk_loads += 1
                    self._insert(loaded)
                    best, n = self._best(ids, limit)
        with self._lock:
            if best is not None and n > 0:
                best.used = next(self._clock)
                self._stats.hits += 1
                self._stats.tokens_saved += n
                return best, n
        return None, 0

    def _best(self, ids: np.ndarray, limit: int) -> tuple[CachedSequence | None, int]:
        best, n = None, 0
        for e in self._entries:
            k = min(common_prefix(e.ids, ids), limit)
            if k > n:
                best, n = e, k
        return best, n

    # ---- storing -----------------------------------------------------------------------------------------------
    def store(self, ids: list[int] | np.ndarray, latent: torch.Tensor, k_pe: torch.Tensor) -> bool:
        """Keep a sequence and its cache (copies the caller will not change); False when it is not kept (larger
        than the budget, or already held within a longer entry)."""
        seq = CachedSequence(np.asarray(ids, dtype=np.int64).copy(), latent, k_pe)
        if len(seq) == 0:
            return False
        with self._lock:
            holder = next((e for e in self._entries if _extends(e, seq)), None)
            if holder is not None:  # an entry as long or longer already holds it
                holder.used = next(self._clock)
                return False
            kept = self._insert(seq)
        if kept and self.disk is not None:
            self.disk.write(seq)
        return kept

    def _insert(self, seq: CachedSequence) -> bool:
        if seq.nbytes > self.budget:
            log.debug("a %d-token sequence (%d bytes) is over the prefix cache's budget", len(seq), seq.nbytes)
            return False
        # entries the new one extends hold nothing it does not
        self._entries = [e for e in self._entries if not _extends(seq, e)]
        seq.used = next(self._clock)
        self._entries.append(seq)
        self._stats.stored += 1
        while sum(e.nbytes for e in self._entries) > self.budget:
            oldest = min(self._entries, key=lambda e: e.used)
            self._entries.remove(oldest)
            self._stats.evicted += 1
        return seq in self._entries

    def clear(self) -> None:
        """Drop every entry held in RAM (the disk store keeps its files)."""
        with self._lock:
            self._entries.clear()

    def stats(self) -> PrefixStats:
        with self._lock:
            s = PrefixStats(**{**self._stats.__dict__})
            s.entries = len(self._entries)
            s.bytes_held = sum(e.nbytes for e in self._entries)
        if self.disk is not None:
            s.disk = self.disk.stats()
        return s

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()
