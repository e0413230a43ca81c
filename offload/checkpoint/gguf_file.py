"""One GGUF file, opened from its header: the metadata, each tensor's ggml type, shape and byte range, and the file
mapped once (zero-copy views; page-cache advice through its descriptor).

The layout (little-endian): magic "GGUF", version (2 or 3), tensor count, metadata count (uint64 each); the metadata
as (key, value type, value); per tensor its name, dims, `ne` (fastest axis first), type and offset; the data section
at the next multiple of `general.alignment` (32 by default), offsets relative to it. Nothing here reads tensor data.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import mmap
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from offload.checkpoint.safetensors_file import CheckpointError, TensorInfo

log = logging.getLogger(__name__)

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# metadata value type -> (struct format, size) for the fixed-size ones
_SCALARS = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_NUMPY = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING, _ARRAY = 8, 9
MAX_DIMS = 4


def ggml_type(type_id: int) -> tuple[str, int, int] | None:
    """(name, weights per block, bytes per block) of a ggml type id, from llama.cpp's own gguf package; None when
    the id is unknown."""
    try:
        t = gguf.GGMLQuantizationType(type_id)
    except ValueError:
        return None
    block, size = gguf.GGML_QUANT_SIZES[t]
    return t.name, block, size


TORCH_VIEWABLE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32}


@dataclass(frozen=True, slots=True)
class GgufTensor:
    """One tensor as the header gives it: `ne` in ggml order (fastest axis first) and its absolute byte range."""

    name: str
    type_name: str  # "Q4_K", "F32", ...
    ne: tuple[int, ...]
    start: int
    end: int

    @property
    def shape(self) -> tuple[int, ...]:
        """NumPy / torch order (slowest axis first): ne reversed."""
        return tuple(reversed(self.ne))

    @property
    def info(self) -> TensorInfo:
        return TensorInfo(self.name, self.type_name, self.shape, self.start, self.end)


class _Cursor:
    """Reads the header from the mapping, naming the file when it ends early."""

    def __init__(self, path: Path, buf: memoryview) -> None:
        self.path, self.buf, self.pos = path, buf, 0

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.buf):
            raise CheckpointError(
                f"{self.path}: the header ends early (reading {what} at byte {self.pos:,} of a {len(self.buf):,}-byte "
                "file): truncated or not a GGUF file (re-download it)"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str, size: int, what: str) -> Any:
        return struct.unpack(fmt, self.take(size, what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", 8, what)
        raw = self.take(n, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: {what} is not valid UTF-8") from None

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _SCALARS:
            return self.scalar(*_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype = self.scalar("<I", 4, what)
            count = self.scalar("<Q", 8, what)
            if etype in _NUMPY:  # numbers: one read, not a loop
                width = _SCALARS[etype][1]
                arr = np.frombuffer(self.take(count * width, what), dtype=_NUMPY[etype])
                return (arr.astype(bool) if etype == 7 else arr).tolist()
            if etype not in (_STRING, _ARRAY):
                raise CheckpointError(f"{self.path}: {what} is an array of unknown value type {etype}")
            return [self.value(etype, what) for _ in range(count)]
        raise CheckpointError(f"{self.path}: {what} has unknown value type {vtype}; not a GGUF this reader knows")


def _map(fd: int, path: Path) -> mmap.mmap:
    """The whole file mapped. ACCESS_COPY gives torch.frombuffer the writable buffer it wants, never writing back;
    a private mapping larger than the kernel's overcommit allowance (a 48 GB part on a small machine) is refused, and
    then the file is mapped read-only (shared): the same pages, and our tensors are never written."""
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    except OSError as e:
        if e.errno != errno.ENOMEM:
            raise CheckpointError(f"{path}: cannot memory-map it ({e})") from None
        log.debug("%s: private mapping refused (%s); mapping it read-only", path, e)
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)


def _frombuffer(buf: mmap.mmap, dtype: torch.dtype, count: int, offset: int) -> torch.Tensor:
    with warnings.catch_warnings():  # a read-only mapping: torch warns once per call that it is not writable
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(buf, dtype=dtype, count=count, offset=offset)


class GgufFile:
    """A GGUF file mapped once; implements offload.checkpoint.MappedFile."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path} does not exist (incomplete download?)")
        self.size = self.path.stat().st_size
        if self.size < 24:
            raise CheckpointError(f"{self.path}: {self.size} bytes is too short for a GGUF header")
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self._mm: mmap.mmap | None = _map(self._fd, self.path)
            self.metadata, self.tensors, self.data_start = self._parse()
        except BaseException:
            self.close()
            raise

    # ---- header ----------------------------------------------------------------------------------------------
    def _parse(self) -> tuple[dict[str, Any], dict[str, GgufTensor], int]:
        cur = _Cursor(self.path, memoryview(self.mapping))
        magic = bytes(cur.take(4, "the magic"))
        if magic != MAGIC:
            raise CheckpointError(f"{self.path}: starts with {magic!r}, not {MAGIC!r}: not a GGUF file")
        version = cur.scalar("<I", 4, "the version")
        if version not in VERSIONS:
            swapped = struct.unpack(">I", struct.pack("<I", version))[0]
            hint = " (a big-endian file: convert it on a little-endian machine)" if swapped in VERSIONS else ""
            raise CheckpointError(f"{self.path}: GGUF version {version} is not supported (2 or 3){hint}")
        n_tensors = cur.scalar("<Q", 8, "the tensor count")
        n_kv = cur.scalar("<Q", 8, "the metadata count")
        if n_tensors > self.size // 24 or n_kv > self.size // 12:
            raise CheckpointError(
                f"{self.path}: the header claims {n_tensors:,} tensors and {n_kv:,} keys, more than a "
                f"{self.size:,}-byte file holds: truncated or corrupt (re-download it)"
            )
        meta: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key {i}")
            vtype = cur.scalar("<I", 4, f"the type of {key}")
            meta[key] = cur.value(vtype, key)
        align = meta.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise CheckpointError(f"{self.path}: general.alignment = {align!r}; expected a power of two")
        raw: list[tuple[str, int, tuple[int, ...], int]] = []
        for i in range(n_tensors):
            name = cur.string(f"tensor name {i}")
            n_dims = cur.scalar("<I", 4, f"the dims of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise CheckpointError(f"{self.path}: tensor {name!r} has {n_dims} dimensions; ggml allows 1 to 4")
            ne = tuple(cur.scalar("<Q", 8, f"the shape of {name}") for _ in range(n_dims))
            ttype = cur.scalar("<I", 4, f"the type of {name}")
            offset = cur.scalar("<Q", 8, f"the offset of {name}")
            raw.append((name, ttype, ne, offset))
        data_start = -(-cur.pos // align) * align
        tensors: dict[str, GgufTensor] = {}
        for name, ttype, ne, offset in raw:
            known = ggml_type(ttype)
            if known is None:
                raise CheckpointError(f"{self.path}: tensor {name!r} has ggml type {ttype}, which ggml does not know")
            type_name, block, size = known
            if ne[0] % block:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} ({type_name}) has rows of {ne[0]} values, not a multiple of its "
                    f"block of {block}"
                )
            if offset % align:
                raise CheckpointError(f"{self.path}: tensor {name!r} starts at offset {offset}, not {align}-aligned")
            nbytes = math.prod(ne[1:]) * (ne[0] // block * size)
            start = data_start + offset
            if start + nbytes > self.size:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} ends at byte {start + nbytes:,}, past the end of the file "
                    f"({self.size:,} bytes): truncated (re-download this file)"
                )
            if name in tensors:
                raise CheckpointError(f"{self.path}: tensor {name!r} appears twice in the header")
            tensors[name] = GgufTensor(name, type_name, ne, start, start + nbytes)
        spans = sorted((t.start, t.end, t.name) for t in tensors.values())
        for (_, end, before), (start, _, name) in itertools.pairwise(spans):
            if start < end:
                raise CheckpointError(f"{self.path}: tensor {name!r} overlaps {before!r}")
        return meta, tensors, data_start

    # ---- MappedFile ------------------------------------------------------------------------------------------
    @property
    def mapping(self) -> mmap.mmap:
        if self._mm is None:
            raise CheckpointError(f"{self.path} is closed")
        return self._mm

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise CheckpointError(f"{self.path} is closed")
        return self._fd

    # ---- views -----------------------------------------------------------------------------------------------
    def raw(self, name: str) -> torch.Tensor:
        """Zero-copy uint8 [rows, row_bytes] over a tensor's blocks (rows: every axis but the fastest)."""
        t = self.tensors[name]
        rows = math.prod(t.ne[1:])
        return _frombuffer(self.mapping, torch.uint8, t.end - t.start, t.start).view(rows, -1)

    def view(self, name: str) -> torch.Tensor:
        """Zero-copy tensor of a float (or I32) tensor in its own dtype and NumPy-order shape."""
        t = self.tensors[name]
        dt = TORCH_VIEWABLE.get(t.type_name)
        if dt is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} is {t.type_name}; only float types can be viewed")
        return _frombuffer(self.mapping, dt, math.prod(t.ne), t.start).view(t.shape)

    def close(self) -> None:
        # views keep the mmap object alive; dropping ours unmaps once the last view is gone
        self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The key-value metadata of a GGUF file (its header only)."""
    f = GgufFile(path)
    try:
        return f.metadata
    finally:
        f.close()
