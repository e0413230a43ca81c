"""Drawing synthetic tensors: deterministic per tensor, numerically healthy, fast enough for GB-sized models.

Each tensor has its own random stream keyed by (seed, module, role), so the same seed gives the same weights in
every layout and in any writing order. Linear weights have std 1/sqrt(fan_in) (residual outputs scaled down by
1/sqrt(2 * layers)), so activations keep their size through the network; norms are near 1; the router's bias
(e_score_correction_bias) can skew expert popularity as trained routers do.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from offload.checkpoint.layout import TensorSpec
from offload.config import ModelConfig

# Symmetric INT4 levels in [-7, 7] (as K2.5's QAT weights are), one per nibble value: mean 0, variance 13.5.
_LEVELS = np.array([-7, -5, -4, -3, -2, -2, -1, 0, 0, 1, 2, 2, 3, 4, 5, 7], dtype=np.int64)
_LEVEL_STD = float(np.sqrt((_LEVELS.astype(np.float64) ** 2).mean()))
# byte -> byte with both nibbles mapped through _LEVELS (stored offset-binary: q + 8)
_BYTE_LUT = ((_LEVELS[np.arange(256) & 0xF] + 8) | ((_LEVELS[np.arange(256) >> 4] + 8) << 4)).astype(np.uint8)
_TORCH_FLOAT = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def rng_for(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _target_std(cfg: ModelConfig, spec: TensorSpec) -> float:
    std = spec.fan_in**-0.5
    if spec.module.endswith(("o_proj", "down_proj")):
        std /= (2 * cfg.num_hidden_layers) ** 0.5
    return std


def _as_bytes(t: torch.Tensor) -> np.ndarray:
    """A torch tensor's raw bytes as a NumPy array (bf16 and fp8 have no NumPy dtype)."""
    return t.contiguous().view(torch.uint8).numpy()


def draw(cfg: ModelConfig, spec: TensorSpec, seed: int, skew: float = 0.0) -> np.ndarray:
    """The data of one tensor, as an array with exactly the bytes the checkpoint stores."""
    rng = rng_for(seed, f"{spec.module}.{spec.role}")
    dtype = spec.dtypes[0]
    shape = spec.shape
    if spec.role == "weight_packed":
        raw = np.frombuffer(rng.bytes(int(np.prod(shape)) * 4), dtype=np.uint8)
        return _BYTE_LUT[raw].view(np.int32).reshape(shape)
    if spec.role == "weight_scale":
        s = _target_std(cfg, spec) / _LEVEL_STD * rng.uniform(0.8, 1.2, size=shape)
        return _as_bytes(torch.from_numpy(s.astype(np.float32)).to(torch.bfloat16))
    if spec.role == "weight_shape":
        return np.array([spec.fan_out, spec.fan_in], dtype=np.int32)
    if spec.role == "weight_scale_inv":
        return (_target_std(cfg, spec) * rng.uniform(0.8, 1.2, size=shape)).astype(np.float32)
    if spec.role == "weight" and dtype == "F8_E4M3":
        w = rng.standard_normal(size=shape, dtype=np.float32).clip(-448, 448)
        return _as_bytes(torch.from_numpy(w).to(torch.float8_e4m3fn))
    if spec.role == "bias":
        b = 0.02 * rng.standard_normal(shape) + skew * rng.standard_normal(shape)
        return _float(b, dtype)
    if spec.role == "norm":
        return _float(1.0 + 0.1 * rng.standard_normal(shape), dtype)
    if spec.role == "embed":
        return _float(rng.standard_normal(size=shape, dtype=np.float32), dtype)
    if spec.role == "weight":
        return _float(_target_std(cfg, spec) * rng.standard_normal(size=shape, dtype=np.float32), dtype)
    raise ValueError(f"no drawing rule for {spec.name} (role {spec.role!r})")


def _float(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype not in _TORCH_FLOAT:
        raise ValueError(f"cannot draw floats as {dtype}; expected one of {', '.join(_TORCH_FLOAT)}")
    return _as_bytes(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(_TORCH_FLOAT[dtype]))
