"""Writing safetensors shards tensor by tensor, so a checkpoint never has to sit in memory whole."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offload.quant import DTYPE_BYTES


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    dtype: str  # safetensors dtype string
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


def shard_order(entries: Sequence[Entry]) -> list[Entry]:
    """The safetensors library's order: wider dtypes first (keeps every tensor aligned), then by name."""
    return sorted(entries, key=lambda e: (-DTYPE_BYTES[e.dtype], e.dtype, e.name))


def header_bytes(entries: Sequence[Entry], metadata: dict[str, str] | None = None) -> bytes:
    """The length-prefixed JSON header for `entries` laid out back to back, padded to 8 bytes with spaces."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_shard(
    path: Path,
    entries: Sequence[Entry],
    fill: Callable[[Entry], np.ndarray] | None,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Write one shard with `entries` in shard order, asking `fill` for each tensor's data (a C-contiguous array of
    exactly the entry's size). With fill=None the data region is left as a hole (a sparse file of the full size:
    a header-only replica, for tests on real shapes). Returns the file size."""
    ordered = shard_order(entries)
    head = header_bytes(ordered)
    total = len(head) + sum(e.nbytes for e in ordered)
    with open(path, "wb") as f:
        f.write(head)
        if fill is None:
            f.truncate(total)
            return total
        for e in ordered:
            data = fill(e)
            if data.nbytes != e.nbytes or not data.flags.c_contiguous:
                raise ValueError(
                    f"fill gave {data.nbytes} bytes for {e.name} ({e.dtype} {e.shape}); expected {e.nbytes}"
                )
            f.write(data.data.cast("B"))
            if on_bytes is not None:
                on_bytes(e.nbytes)
    return total
