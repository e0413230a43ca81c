"""The machine's limits, measured now: DRAM read and copy bandwidth, matmul rate, the checkpoint disk's sequential
read bandwidth with its pages dropped; and dropping a checkpoint from the page cache, checked with mincore."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from offload.checkpoint import pages
from offload.checkpoint.base import checkpoint_files
from offload.planner.profile import best_seconds, probe_cpu_gflops, probe_dram_gbs


@dataclass(frozen=True, slots=True)
class Limits:
    """Rates in GB/s (1e9 B/s) and GFLOP/s."""

    dram_read_gbs: float  # float32 sum over a buffer much larger than the caches, all threads
    dram_copy_gbs: float  # copy_, read + write bytes counted
    cpu_gflops: float  # float32 matmul, all threads
    disk_read_gbs: float  # the largest shard read cold, sequentially: the better of the two ways below
    disk_read_advised_gbs: float  # after one readahead request for the whole file
    disk_read_plain_gbs: float  # plain reads with the kernel's default readahead
    disk_file: str


def dram_read_gbs(nbytes: int = 1 << 30, reps: int = 3) -> float:
    return probe_dram_gbs(nbytes, reps)


def dram_copy_gbs(nbytes: int = 1 << 29, reps: int = 3) -> float:
    a, b = torch.ones(nbytes // 4), torch.zeros(nbytes // 4)
    return 2 * nbytes / best_seconds(lambda: b.copy_(a), reps) / 1e9


def read_files(files: list[Path]) -> None:
    """Read files once, 64 MiB at a time, so the page cache holds them (a warm start)."""
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass


def shard_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files (safetensors shards or GGUF parts)."""
    return checkpoint_files(folder)


def resident_bytes(folder: Path) -> int:
    """Bytes of the checkpoint's shards in the page cache now (mincore)."""
    return sum(pages.file_resident_bytes(f)[0] for f in shard_files(folder))


def drop_checkpoint(folder: Path) -> int:
    """Evict every shard from the page cache; returns the bytes still resident afterwards (0 when it worked; pages
    some process has mapped cannot be dropped)."""
    for f in shard_files(folder):
        pages.drop_file(f)
    return resident_bytes(folder)


def disk_read_gbs(path: Path, chunk: int = 8 << 20) -> tuple[float, float]:
    """(readahead-assisted, plain) sequential read rate of `path` with its pages dropped first, in GB/s."""
    rates = {}
    for advise in (True, False):
        pages.drop_file(path)
        fd = os.open(path, os.O_RDONLY)
        buf = bytearray(chunk)
        size = 0
        t0 = time.perf_counter()
        try:
            if advise and pages.SUPPORTED:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            while n := os.readv(fd, [buf]):
                size += n
        finally:
            os.close(fd)
        rates[advise] = size / (time.perf_counter() - t0) / 1e9
    pages.drop_file(path)
    return rates[True], rates[False]


def measure(folder: Path) -> Limits:
    """Every limit, timed now (a few seconds, plus one cold read of the largest shard)."""
    largest = max(shard_files(folder), key=lambda p: p.stat().st_size)
    advised, plain = disk_read_gbs(largest)
    return Limits(
        dram_read_gbs(), dram_copy_gbs(), probe_cpu_gflops(), max(advised, plain), advised, plain, str(largest)
    )
