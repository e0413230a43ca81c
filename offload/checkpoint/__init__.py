"""Checkpoints: one interface (base.Checkpoint, open_checkpoint) and its readers (safetensors folders)."""

from offload.checkpoint.base import ByteRange, Checkpoint, MappedFile, open_checkpoint
from offload.checkpoint.reader import SafetensorsCheckpoint
from offload.checkpoint.safetensors_file import CheckpointError, SafetensorsFile, TensorInfo

__all__ = [
    "ByteRange",
    "Checkpoint",
    "CheckpointError",
    "MappedFile",
    "SafetensorsCheckpoint",
    "SafetensorsFile",
    "TensorInfo",
    "open_checkpoint",
]
