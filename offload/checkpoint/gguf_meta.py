"""A GGUF file's metadata as a plain dict: key -> str, int, float, bool, or a list of them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from offload.checkpoint.safetensors_file import CheckpointError

if TYPE_CHECKING:
    import gguf


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Every metadata key of a GGUF file (the header's own GGUF.* fields left out); reads no tensor data."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} does not exist")
    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, OSError, IndexError) as e:  # gguf raises these for a bad magic, version or a truncated file
        raise CheckpointError(f"{path} is not a readable GGUF file (not GGUF, or truncated): {e}") from e
    return metadata_of(reader, path)


def metadata_of(reader: gguf.GGUFReader, path: Path) -> dict[str, Any]:
    """The metadata of an open GGUFReader as Python values."""
    from gguf import GGUFValueType

    out: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):  # version, tensor_count, kv_count: the reader's view of the header
            continue
        if field.types[:2] == [GGUFValueType.ARRAY, GGUFValueType.ARRAY]:
            raise CheckpointError(f"{path}: metadata key {name!r} is an array of arrays, which is not supported")
        try:
            out[name] = field.contents()
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{path}: metadata key {name!r} holds a string that is not UTF-8: {e}") from e
    return out
