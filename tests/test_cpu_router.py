"""The native router (kernels/cpu_router.py) against the NumPy reference and against the torch path of
offload/model/router.py: the same experts in the same order, the same weights to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.cpu_router import route_cpu, route_ref
from offload.model.router import Router


def _router(e: int, d: int, k: int, n_group: int, topk_group: int, seed: int, norm: bool = True) -> Router:
    g = torch.Generator().manual_seed(seed)
    return Router(
        torch.randn(e, d, generator=g) * d**-0.5, torch.randn(e, generator=g) * 0.1, k, n_group, topk_group, norm, 2.5
    )


CASES = [(384, 256, 8, 1, 1), (64, 96, 6, 8, 3), (160, 128, 8, 8, 4), (16, 64, 1, 1, 1)]


@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("e", "d", "k", "n_group", "topk_group"), CASES)
def test_native_routing_is_the_reference(
    native_ggml: None, t: int, dtype: torch.dtype, e: int, d: int, k: int, n_group: int, topk_group: int
) -> None:
    r = _router(e, d, k, n_group, topk_group, seed=e + d + t)
    x = torch.randn(t, d, generator=torch.Generator().manual_seed(t)).to(dtype)
    got = route_cpu(x, r.weight, r.bias, k, n_group, topk_group, True, r.scaling)
    assert got is not None
    ids, w = got
    ref_ids, ref_w = route_ref(x.float().numpy(), r.weight.numpy(), r.bias.numpy(), k, n_group, topk_group, True, 2.5)
    np.testing.assert_array_equal(ids.numpy(), ref_ids)
    np.testing.assert_allclose(w.numpy(), ref_w, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(w.sum(dim=1).numpy(), 2.5, rtol=1e-5)  # normalized, then scaled
    if n_group > 1:  # every pick from the topk_group groups kept
        assert all(len({int(i) // (e // n_group) for i in row}) <= topk_group for row in ids)


@pytest.mark.parametrize(("e", "d", "k", "n_group", "topk_group"), CASES)
def test_router_takes_the_native_call_with_the_torch_paths_result(
    native_ggml: None, e: int, d: int, k: int, n_group: int, topk_group: int
) -> None:
    """Router(x) for a decode token (native) against its torch ops (`select`, then the weights as __call__ forms
    them on more tokens); unnormalized weights too."""
    for norm in (True, False):
        r = _router(e, d, k, n_group, topk_group, seed=7, norm=norm)
        x = torch.randn(1, d, generator=torch.Generator().manual_seed(8)).bfloat16()
        ids, w = r(x)
        ref_ids, scores = r.select(x)
        ref_w = scores.gather(1, ref_ids)
        if norm:
            ref_w = ref_w / (ref_w.sum(dim=-1, keepdim=True) + 1e-20)
        assert torch.equal(ids, ref_ids)
        torch.testing.assert_close(w, ref_w * r.scaling, rtol=2e-6, atol=1e-7)
        two = torch.cat([x, x])  # more tokens: the torch path, the same choice per token
        assert torch.equal(r(two)[0], torch.cat([ids, ids]))


def test_bad_arguments_are_refused(native_ggml: None) -> None:
    r = _router(64, 32, 4, 1, 1, seed=1)
    x = torch.randn(1, 32)
    with pytest.raises(ValueError, match=r"x: expected a float32 or bf16 CPU tensor"):
        route_cpu(x.half(), r.weight, r.bias, 4)
    with pytest.raises(ValueError, match=r"weight: expected a contiguous float32 \[E, 32\]"):
        route_cpu(x, r.weight.t().contiguous(), r.bias, 4)
    with pytest.raises(ValueError, match=r"bias: expected a contiguous float32 \[64\]"):
        route_cpu(x, r.weight, r.bias[:10], 4)
    with pytest.raises(ValueError, match=r"top_k 65, n_group 1, topk_group 1 do not fit 64 experts"):
        route_cpu(x, r.weight, r.bias, 65)
    with pytest.raises(ValueError, match=r"n_group 3"):
        route_cpu(x, r.weight, r.bias, 4, n_group=3)
    with pytest.raises(ValueError, match=r"64 groups of 1 experts"):
        route_cpu(x, r.weight, r.bias, 4, n_group=64, topk_group=2)
