"""The checkpoint seam: what every reader gives the layers above it, and `open_checkpoint`, which picks the reader.

A reader yields a ModelConfig (what the model is), a Storage (how it is stored), a tensor index (name -> stored
format, shape, byte range), zero-copy tensors and format-tagged Linear weights, each routed expert's byte ranges, and
the mapped files whose pages the expert store advises and drops. Nothing above `offload/checkpoint` asks which reader
it has; kernels are chosen by each weight's format tag.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from kernels.dequant import StoredWeight
from offload.checkpoint.safetensors_file import TensorInfo
from offload.config import ModelConfig
from offload.storage import Storage


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A contiguous run of bytes in one mapped file."""

    path: Path
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def merge_ranges(spans: Iterable[tuple[Path, int, int]]) -> list[ByteRange]:
    """(path, start, end) spans, sorted, with adjacent ones in the same file merged into one ByteRange."""
    out: list[ByteRange] = []
    for path, start, end in sorted(spans):
        if out and out[-1].path == path and out[-1].end == start:
            out[-1] = ByteRange(path, out[-1].start, end)
        else:
            out.append(ByteRange(path, start, end))
    return out


@dataclass(frozen=True, slots=True)
class TypeUse:
    """How much of one part a stored type holds."""

    tensors: int = 0
    bytes: int = 0
    weights: int = 0  # logical weights (scales and shapes count bytes, not weights)

    def add(self, nbytes: int, weights: int, tensors: int = 1) -> TypeUse:
        return TypeUse(self.tensors + tensors, self.bytes + nbytes, self.weights + weights)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes / self.weights if self.weights else 0.0


class MappedFile(Protocol):
    """A checkpoint file mapped once: its path, size, mapping and descriptor (for reads and page-cache advice)."""

    path: Path
    size: int

    @property
    def mapping(self) -> mmap.mmap: ...

    @property
    def fd(self) -> int: ...


class Checkpoint(Protocol):
    """An open checkpoint, whatever its file format."""

    path: Path  # what was opened
    config: ModelConfig
    layout: str  # how the files lay the model out, for people: "kimi_k25", "kimi_k2", "deepseek_v3", "gguf"
    tensor_prefix: str  # what stored names carry before the model's names ("language_model." in K2.5's release)
    storage: Storage
    files: dict[str, MappedFile]  # file name -> mapped file

    @property
    def metadata(self) -> Mapping[str, Any]:
        """GGUF: the header's key-value metadata (tokenizer, template); safetensors: empty (they are files)."""
        ...

    def __contains__(self, name: str) -> bool: ...

    def info(self, name: str) -> TensorInfo:
        """Where tensor `name` (the model's name, no layout prefix) lies: stored dtype, shape, byte range."""
        ...

    def tensor(self, name: str) -> torch.Tensor:
        """Zero-copy view of a plain tensor (norms, embedding, router); reads nothing until touched."""
        ...

    def embedding(self) -> StoredWeight:
        """The token embedding [vocab, hidden] as stored, zero-copy (a GGUF's may be quantized)."""
        ...

    def weight(self, module: str) -> StoredWeight:
        """The stored weight of Linear `module`, tagged with its format (zero-copy views)."""
        ...

    def all_tensors(self) -> Sequence[tuple[MappedFile, TensorInfo]]:
        """Every tensor in the checkpoint, the text model's and any other (vision tower, MTP layers)."""
        ...

    def expert_ranges(self, layer: int, expert: int) -> list[ByteRange]:
        """The byte ranges holding routed expert (layer, expert), adjacent ones merged."""
        ...

    def expert_regions(self) -> list[ByteRange]:
        """Maximal runs of routed-expert bytes in each file."""
        ...

    def file(self, path: Path) -> MappedFile:
        """The mapped file at `path` (as named in a ByteRange)."""
        ...

    def bytes_by_part(self) -> dict[str, int]:
        """Stored bytes by model part; tensors outside the text model count as 'other'."""
        ...

    def types_by_part(self) -> dict[str, dict[str, TypeUse]]:
        """Per model part, per stored format ("int4 g32", "bf16", "Q4_K", ...): tensors, bytes, weights."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Checkpoint: ...

    def __exit__(self, *exc: object) -> None: ...


def locate(path: str | Path) -> tuple[Path, bool]:
    """(the local path, whether it is GGUF) of a checkpoint given as a path or a Hugging Face repo id (`owner/name`,
    `owner/name:QUANT`, looked up in the local Hugging Face cache, offline)."""
    from offload.checkpoint.hub import is_repo_id, resolve_repo

    p = Path(path)
    if is_repo_id(str(path)):  # owner/name[:QUANT] that is no local path
        p = resolve_repo(str(path))
    gguf = p.suffix == ".gguf" or (p.is_dir() and not (p / "config.json").exists() and any(p.glob("*.gguf")))
    return p, gguf


def checkpoint_files(path: str | Path) -> list[Path]:
    """The files a checkpoint's weights are in: its safetensors shards, or every part of its GGUF set."""
    from offload.checkpoint.gguf_reader import gguf_files

    p, gguf = locate(path)
    return gguf_files(p) if gguf else sorted(p.glob("*.safetensors"))


def open_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint at `path`, opened from its headers by the reader its files call for: a `.gguf` file (or a
    part of a split set), or a folder of GGUF files without config.json, by the GGUF reader; a folder otherwise by
    the safetensors reader. A Hugging Face repo id is looked up in the local cache (see `locate`)."""
    from offload.checkpoint.gguf_reader import GgufCheckpoint
    from offload.checkpoint.reader import SafetensorsCheckpoint

    p, gguf = locate(path)
    return GgufCheckpoint(p) if gguf else SafetensorsCheckpoint(p)
