"""Checkpoints: one interface (base.Checkpoint, open_checkpoint) and its readers (safetensors folders, GGUF files)."""

from offload.checkpoint.base import ByteRange, Checkpoint, MappedFile, TypeUse, open_checkpoint
from offload.checkpoint.gguf_reader import GgufCheckpoint
from offload.checkpoint.reader import SafetensorsCheckpoint
from offload.checkpoint.safetensors_file import CheckpointError, SafetensorsFile, TensorInfo

__all__ = [
    "ByteRange",
    "Checkpoint",
    "CheckpointError",
    "GgufCheckpoint",
    "MappedFile",
    "SafetensorsCheckpoint",
    "SafetensorsFile",
    "TensorInfo",
    "TypeUse",
    "open_checkpoint",
]
