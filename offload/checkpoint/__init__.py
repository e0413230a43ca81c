"""Reading and writing checkpoints in the published safetensors layout."""

from offload.checkpoint.reader import ByteRange, Checkpoint
from offload.checkpoint.safetensors_file import CheckpointError, SafetensorsFile, TensorInfo

__all__ = ["ByteRange", "Checkpoint", "CheckpointError", "SafetensorsFile", "TensorInfo"]
