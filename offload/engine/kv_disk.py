"""Cached sequences on disk, so that they survive a restart (llama-server's slot save/restore, KTransformers' disk
KV): one safetensors file per sequence under a byte budget.

A file holds `ids` [n] (int64), `latent` [L, n, kv_lora_rank] and `k_pe` [L, n, rope] in the cache's dtype, and
metadata: the format, the model's identity (its config and samples of its weight files' bytes), the dtype, the
token count and a CRC-32 of the three tensors' bytes. An entry from another model or dtype, a truncated or corrupt
file, or one whose CRC does not match is skipped with a warning and never used. Writes go to a temporary name in
the same folder, are fsynced and renamed into place, so a crash mid-write leaves no entry that loads; they run on
a writer thread so that a generation does not wait for the disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from offload.config import ModelConfig
from offload.engine.prefix_cache import CachedSequence, common_prefix

log = logging.getLogger(__name__)

FORMAT = "kimi-offload-kv/1"
SUFFIX = ".kv.safetensors"
SAMPLE = 1 << 16  # bytes read at the start, middle and end of each weight file for the identity


def model_identity(config: ModelConfig, files: Iterable[Path]) -> str:
    """A hash of the architecture and of the weight files (names, sizes, and three samples of each one's bytes):
    another model, or the same shapes with other weights, gives another identity."""
    h = hashlib.sha256(repr(config).encode())
    for path in sorted(files, key=lambda p: p.name):
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            for at in (0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)):
                f.seek(at)
                h.update(f.read(SAMPLE))
    return h.hexdigest()[:32]


def _crc(*tensors: torch.Tensor) -> int:
    crc = 0
    for t in tensors:
        crc = zlib.crc32(t.contiguous().view(torch.uint8).numpy().data, crc)
    return crc


@dataclass
class _Indexed:
    path: Path
    ids: np.ndarray
    nbytes: int
    used: int  # last write or load, ns (from the file's mtime at start-up)


class KVDiskStore:
    """Entries of one model and dtype in `folder`, at most `budget_bytes` of them (oldest use out first)."""

    def __init__(self, folder: Path, budget_bytes: int, identity: str, dtype: torch.dtype) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes = {budget_bytes}; give 0 or more")
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot use {self.folder} for the KV cache: {e.strerror or e}") from None
        self.budget, self.identity, self.dtype = budget_bytes, identity, dtype
        self._lock = threading.Lock()
        self._index: dict[Path, _Indexed] = {}
        self.skipped = 0
        self.writes = 0
        self._last = 0  # the latest eviction-order stamp handed out
        self._scan()
        self._queue: queue.Queue[CachedSequence | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="kimi-offload-kv-writer", daemon=True)
        self._writer.start()

    # ---- reading -----------------------------------------------------------------------------------------------
    def _scan(self) -> None:
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            entry = self._read_header(path)
            if entry is not None:
                self._index[path] = entry

    def _read_header(self, path: Path) -> _Indexed | None:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                problem = self._foreign(meta)
                ids = None if problem else f.get_tensor("ids").numpy()
        except Exception as e:  # truncated, not safetensors, a tensor missing: never used
            problem = f"unreadable ({type(e).__name__}: {e})"
        if not problem and ids is not None and len(ids) != int(meta.get("tokens", -1)):
            problem = f"{len(ids)} ids, but its metadata says {meta.get('tokens')}"
        if problem or ids is None:
            self._skip(path, problem)
            return None
        st = path.stat()
        return _Indexed(path, ids, st.st_size, st.st_mtime_ns)

    def _foreign(self, meta: dict[str, str]) -> str:
        if meta.get("format") != FORMAT:
            return f"not a {FORMAT} entry (format {meta.get('format')!r})"
        if meta.get("model") != self.identity:
            return "made by another model (or other weights): its identity differs"
        if meta.get("dtype") != str(self.dtype).removeprefix("torch."):
            return f"its cache dtype is {meta.get('dtype')}, this run's {str(self.dtype).removeprefix('torch.')}"
        return ""

    def _skip(self, path: Path, why: str) -> None:
        log.warning("KV cache entry %s skipped: %s", path, why)
        self.skipped += 1

    def load_longest(self, ids: np.ndarray, better_than: int, limit: int) -> CachedSequence | None:
        """The entry sharing the longest prefix (more than `better_than` tokens, counted up to `limit`) with `ids`,
        loaded and checked; None if there is none or it fails its check."""
        with self._lock:
            ranked = sorted(
                ((min(common_prefix(e.ids, ids), limit), e) for e in self._index.values()),
                key=lambda x: -x[0],
            )
        for k, entry in ranked:
            if k <= better_than:
                return None
            seq = self._load(entry)
            if seq is not None:
                return seq
        return None

    def _load(self, entry: _Indexed) -> CachedSequence | None:
        try:
            with safe_open(str(entry.path), framework="pt") as f:
                meta = f.metadata() or {}
                problem = self._foreign(meta)
                tensors = {} if problem else {name: f.get_tensor(name) for name in ("ids", "latent", "k_pe")}
        except Exception as e:
            problem = f"unreadable ({type(e).__name__}: {e})"
        if not problem and _crc(tensors["ids"], tensors["latent"], tensors["k_pe"]) != int(meta.get("crc32", -1)):
            problem = "its bytes do not match their CRC-32 (corrupt)"
        seq = None
        if not problem:
            try:
                seq = CachedSequence(tensors["ids"].numpy(), tensors["latent"], tensors["k_pe"])
            except ValueError as e:
                problem = str(e)
        if seq is None:
            with self._lock:
                self._index.pop(entry.path, None)
            self._skip(entry.path, problem)
            return None
        os.utime(entry.path)  # recently used: last to be evicted, this run and the next
        with self._lock:
            entry.used = self._now()
        return seq

    def _now(self) -> int:
        """A strictly increasing time stamp (ns), for the eviction order (caller holds the lock)."""
        self._last = max(time.time_ns(), self._last + 1)
        return self._last

    # ---- writing -----------------------------------------------------------------------------------------------
    def write(self, seq: CachedSequence) -> None:
        """Queue a sequence for the writer thread."""
        if seq.nbytes <= self.budget:
            self._queue.put(seq)

    def flush(self) -> None:
        """Wait until every queued write is on disk."""
        self._queue.join()

    def _write_loop(self) -> None:
        while True:
            seq = self._queue.get()
            try:
                if seq is None:
                    return
                self._write(seq)
            except Exception:
                log.exception("writing a KV cache entry to %s failed", self.folder)
            finally:
                self._queue.task_done()

    def _write(self, seq: CachedSequence) -> None:
        ids = torch.from_numpy(seq.ids)
        name = hashlib.blake2b(seq.ids.tobytes(), digest_size=12).hexdigest() + SUFFIX
        final, tmp = self.folder / name, self.folder / f".{name}.{os.getpid()}.tmp"
        meta = {
            "format": FORMAT,
            "model": self.identity,
            "dtype": str(self.dtype).removeprefix("torch."),
            "tokens": str(len(seq)),
            "crc32": str(_crc(ids, seq.latent, seq.k_pe)),
        }
        save_file({"ids": ids, "latent": seq.latent.contiguous(), "k_pe": seq.k_pe.contiguous()}, str(tmp), meta)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.writes += 1
        with self._lock:
            for path, e in list(self._index.items()):  # entries this one extends hold nothing it does not
                if path != final and len(e.ids) <= len(seq) and common_prefix(e.ids, seq.ids) == len(e.ids):
                    self._index.pop(path)
                    path.unlink(missing_ok=True)
            self._index[final] = _Indexed(final, seq.ids.copy(), final.stat().st_size, self._now())
            self._evict()

    def _evict(self) -> None:
        while sum(e.nbytes for e in self._index.values()) > self.budget:
            oldest = min(self._index.values(), key=lambda e: e.used)
            self._index.pop(oldest.path)
            oldest.path.unlink(missing_ok=True)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._index),
                "bytes": sum(e.nbytes for e in self._index.values()),
                "budget_bytes": self.budget,
                "writes": self.writes,
                "skipped": self.skipped,
            }

    def close(self) -> None:
        """Finish the queued writes and stop the writer."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
