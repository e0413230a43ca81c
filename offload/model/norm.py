"""RMSNorm as DeepSeek-V3 computes it: statistics in float32, then back to the input dtype, then the weight."""

from __future__ import annotations

import torch

# q_a_layernorm and kv_a_layernorm are built without the config's eps in the reference code: always 1e-6
LATENT_NORM_EPS = 1e-6


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., n] -> same shape and dtype."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)
