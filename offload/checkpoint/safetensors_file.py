"""One safetensors shard: its header validated against the file, the file mapped once, zero-copy tensor views."""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from offload.errors import OffloadError
from offload.quant import DTYPE_BYTES

TORCH_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


class CheckpointError(OffloadError):
    """A checkpoint folder or shard is missing, truncated, corrupt, or disagrees with its config."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """Where one tensor's bytes are: absolute offsets in its shard file."""

    name: str
    dtype: str  # safetensors dtype string
    shape: tuple[int, ...]
    start: int  # absolute file offset of the first byte
    end: int  # one past the last byte

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate a shard's header: (tensors by name, __metadata__, file size). Reads no tensor data."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"shard {path} does not exist") from None
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"shard {path} is {size} bytes: too short for a safetensors header (truncated?)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise CheckpointError(
                f"shard {path}: header length {n} is absurd for a file of {size} bytes "
                "(corrupt or not a safetensors file)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"shard {path}: header JSON is corrupt ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"shard {path}: header must be a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"shard {path}: __metadata__ must be an object of strings, got {type(meta).__name__}")
    base = 8 + n
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_info(path, name, entry, base, size)
    _check_packed_back_to_back(path, tensors, base)
    return tensors, meta, size


def _check_packed_back_to_back(path: Path, tensors: dict[str, TensorInfo], base: int) -> None:
    """Tensor bytes must tile the data region with no overlap and no gap, as the safetensors format requires."""
    at = base
    for info in sorted(tensors.values(), key=lambda i: (i.start, i.end)):
        if info.start != at:
            what = "overlaps the tensor before it" if info.start < at else f"leaves a gap of {info.start - at} bytes"
            raise CheckpointError(f"shard {path}: tensor {info.name!r} at byte {info.start} {what} (corrupt header)")
        at = info.end


def _tensor_info(path: Path, name: str, entry: object, base: int, size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CheckpointError(f"shard {path}: header entry for {name!r} is not an object")
    dtype, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise CheckpointError(f"shard {path}: tensor {name!r} has unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise CheckpointError(f"shard {path}: tensor {name!r} has invalid shape {shape!r}")
    if not (
        isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs) and 0 <= offs[0] <= offs[1]
    ):
        raise CheckpointError(f"shard {path}: tensor {name!r} has invalid data_offsets {offs!r}")
    want = math.prod(shape) * DTYPE_BYTES[dtype]
    if offs[1] - offs[0] != want:
        raise CheckpointError(
            f"shard {path}: tensor {name!r} ({dtype} {shape}) needs {want} bytes but its data_offsets span "
            f"{offs[1] - offs[0]}"
        )
    start, end = base + offs[0], base + offs[1]
    if end > size:
        raise CheckpointError(
            f"shard {path} is truncated: tensor {name!r} ends at byte {end} but the file has {size} bytes "
            f"(re-download this shard)"
        )
    return TensorInfo(name, dtype, tuple(shape), start, end)


class SafetensorsFile:
    """A shard mapped once (private, read-only in practice); `view` hands out tensors without reading data."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tensors, self.metadata, self.size = read_header(self.path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            # ACCESS_COPY gives a writable buffer (torch.frombuffer wants one) that never writes back to the file
            self._mm: mmap.mmap | None = mmap.mmap(self._fd, 0, access=mmap.ACCESS_COPY)
        except OSError as e:
            os.close(self._fd)
            raise CheckpointError(f"shard {self.path}: cannot memory-map it ({e})") from None

    @property
    def mapping(self) -> mmap.mmap:
        if self._mm is None:
            raise CheckpointError(f"shard {self.path} is empty")
        return self._mm

    @property
    def fd(self) -> int:
        """The open file descriptor (for reads and page-cache advice)."""
        if self._fd < 0:
            raise CheckpointError(f"shard {self.path} is closed")
        return self._fd

    def view(self, name: str) -> torch.Tensor:
        """Zero-copy tensor over the mapping; touching it faults its pages in from the page cache or disk."""
        info = self.tensors[name]
        dt = TORCH_DTYPES.get(info.dtype)
        if dt is None:
            raise CheckpointError(f"shard {self.path}: tensor {name!r} has dtype {info.dtype}, which torch cannot view")
        n = math.prod(info.shape)
        if n == 0:
            return torch.empty(info.shape, dtype=dt)
        return torch.frombuffer(self.mapping, dtype=dt, count=n, offset=info.start).view(info.shape)

    def close(self) -> None:
        # Views hold a reference to the mmap object, so dropping ours unmaps only once the last view is gone;
        # an explicit mmap.close() here would leave live views pointing at unmapped memory.
        self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
