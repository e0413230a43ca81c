"""The native bf16 RMSNorm against torch's path (offload/model/norm.py's arithmetic) and the float64 definition."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels import cpu_norm
from offload.model.norm import rms_norm
from tests.conftest import REQUIRE_NATIVE


@pytest.fixture(scope="module")
def native_norm() -> None:
    if not cpu_norm.available():
        if os.environ.get(REQUIRE_NATIVE) == "1":
            pytest.fail(f"{REQUIRE_NATIVE}=1 but the native RMSNorm did not build")
        pytest.skip("the native RMSNorm is not available here")


def torch_path(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 64), (2, 2051), (1, 7168)])
def test_native_rms_norm_is_torchs_to_one_rounding(native_norm: None, shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(shape[1])
    x = (torch.randn(shape, generator=g) * torch.exp(torch.randn(shape[0], 1, generator=g))).bfloat16()
    w = (torch.rand(shape[1], generator=g) * 2 + 0.05).bfloat16()
    y = cpu_norm.rms_norm_bf16_cpu(x, w, 1e-6)
    assert y is not None and y.dtype == torch.bfloat16 and y.shape == x.shape
    ref = torch_path(x, w, 1e-6).float()
    got = y.float()
    # the sum of squares is added in another order: at most one bf16 rounding step apart, nearly always equal
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=2.0**-7, atol=0)
    assert float((got == ref).float().mean()) > 0.97
    exact = cpu_norm.rms_norm_ref(x.float().numpy(), w.float().numpy(), 1e-6)
    np.testing.assert_allclose(got.numpy(), exact, rtol=2 * 2.0**-8 + 1e-6, atol=0)


def test_zero_rows_and_eps(native_norm: None) -> None:
    x = torch.zeros(2, 32, dtype=torch.bfloat16)
    w = torch.ones(32, dtype=torch.bfloat16)
    y = cpu_norm.rms_norm_bf16_cpu(x, w, 1e-6)
    assert y is not None and torch.equal(y, x)  # 0 * rsqrt(eps) = 0, no NaN
    big = torch.full((1, 16), 3.0, dtype=torch.bfloat16)
    y = cpu_norm.rms_norm_bf16_cpu(big, w[:16], 9.0)  # eps dominates: 3 / sqrt(9 + 9)
    assert y is not None and torch.allclose(y.float(), torch.full((1, 16), 3 / 18**0.5), rtol=2.0**-7)


def test_other_inputs_are_left_to_torch(native_norm: None) -> None:
    x = torch.randn(2, 64).bfloat16()
    w = torch.ones(64, dtype=torch.bfloat16)
    assert cpu_norm.rms_norm_bf16_cpu(x.float(), w, 1e-6) is None  # float32: torch's path (exact parity)
    assert cpu_norm.rms_norm_bf16_cpu(x, w.float(), 1e-6) is None
    assert cpu_norm.rms_norm_bf16_cpu(x.t(), w, 1e-6) is None  # not contiguous
    assert cpu_norm.rms_norm_bf16_cpu(x, w[:32], 1e-6) is None  # widths differ
    wide = torch.randn(4, 128).bfloat16()
    sliced = wide[:, :64]  # the model's rms_norm makes a slice contiguous and still takes the native call
    np.testing.assert_allclose(
        rms_norm(sliced, w, 1e-6).float().numpy(), torch_path(sliced, w, 1e-6).float().numpy(), rtol=2.0**-7
    )
    xf = torch.randn(3, 64)
    assert torch.equal(rms_norm(xf, w.float(), 1e-6), torch_path(xf, w.float(), 1e-6))  # float32: bit-exact
