"""RMSNorm as DeepSeek-V3 computes it: statistics in float32, then back to the input dtype, then the weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.cpu_norm import rms_norm_bf16_cpu

# q_a_layernorm and kv_a_layernorm are built without the config's eps in the reference code: always 1e-6
LATENT_NORM_EPS = 1e-6


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., n] -> same shape and dtype. bf16 on the CPU: one native call (kernels/cpu_norm.py, the same
    arithmetic); else torch's fused rms_norm on the float32 copy: the same x * rsqrt(mean(x^2) + eps), 4 ops where
    the spelled-out form takes 8 (it runs ~45 times per decode step)."""
    if x.dtype == torch.bfloat16 and x.is_cpu:
        y = rms_norm_bf16_cpu(x.contiguous(), weight, eps)
        if y is not None:
            return y
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
