"""Rotary position embedding with YaRN frequency scaling, on interleaved pairs (Kimi) or halves (llama)."""

from __future__ import annotations

import math

import torch

from offload.config import ModelConfig, RopeScaling


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def inv_freq(dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """[dim / 2] float32 angular frequencies; YaRN blends interpolated (low-frequency) and original ones."""
    pos_freqs = theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # [dim/2]
    if scaling is None:
        return 1.0 / pos_freqs

    def correction_dim(rotations: float) -> float:
        return (
            dim * math.log(scaling.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(theta))
        )

    low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # 0: keep, 1: interpolate
    keep = 1 - ramp
    return (1.0 / (scaling.factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep


def cos_sin_factor(scaling: RopeScaling | None) -> float:
    """YaRN's multiplier on cos and sin (1 for Kimi K2.5, whose mscale equals mscale_all_dim)."""
    if scaling is None:
        return 1.0
    if scaling.attention_factor is not None:
        return scaling.attention_factor
    if scaling.mscale and scaling.mscale_all_dim:
        return yarn_mscale(scaling.factor, scaling.mscale) / yarn_mscale(scaling.factor, scaling.mscale_all_dim)
    return yarn_mscale(scaling.factor)


def softmax_scale(cfg: ModelConfig) -> float:
    """qk_head_dim^-0.5, times mscale(mscale_all_dim)^2 under YaRN."""
    scale = cfg.qk_head_dim**-0.5
    rs = cfg.rope_scaling
    if rs is not None and rs.mscale_all_dim:
        m = yarn_mscale(rs.factor, rs.mscale_all_dim)
        scale *= m * m
    return scale


class Rope:
    """cos/sin for given positions, and the rotation of the last dimension of q_pe / k_pe."""

    def __init__(self, cfg: ModelConfig, device: torch.device | str = "cpu") -> None:
        self.interleaved = cfg.rope_interleave
        self.inv_freq = inv_freq(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_scaling).to(device)  # [d/2]
        self.factor = cos_sin_factor(cfg.rope_scaling)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.float()[:, None] * self.inv_freq  # [T, d/2]
        return angles.cos() * self.factor, angles.sin() * self.factor

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [T, d] or [T, H, d] -> rotated, same shape and dtype (computed in float32)."""
        if x.dim() == 3:
            cos, sin = cos[:, None, :], sin[:, None, :]
        xf = x.float()
        if self.interleaved:  # pairs (x[2i], x[2i+1]) rotate together; output keeps the interleaved layout
            a, b = xf[..., 0::2], xf[..., 1::2]
            return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2).to(x.dtype)
        half = x.shape[-1] // 2  # pairs (x[i], x[i + d/2])
        a, b = xf[..., :half], xf[..., half:]
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1).to(x.dtype)
