"""Sampling filters against hand arithmetic, and seeded reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from offload.engine.sampling import Sampler, SamplingParams

P = torch.tensor([0.5, 0.3, 0.15, 0.05])
LOGITS = P.log()


def probs(**kw: float) -> torch.Tensor:
    return Sampler(SamplingParams(**{"temperature": 1.0, "top_p": 1.0, **kw})).probs(LOGITS)  # type: ignore[arg-type]


def test_no_filter_is_softmax():
    assert torch.allclose(probs(), P, atol=1e-6)


def test_temperature_sharpens_by_hand():
    want = P**2 / (P**2).sum()  # T = 0.5: exp(log p / 0.5) = p^2
    assert torch.allclose(probs(temperature=0.5), want, atol=1e-6)


def test_top_k_keeps_the_k_best():
    assert torch.allclose(probs(top_k=2), torch.tensor([0.625, 0.375, 0, 0]), atol=1e-6)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    assert torch.allclose(probs(top_p=0.8), torch.tensor([0.625, 0.375, 0, 0]), atol=1e-6)  # 0.5 + 0.3 reaches 0.8
    assert torch.allclose(probs(top_p=0.81), torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95, atol=1e-6)
    assert torch.allclose(probs(top_p=0.01), torch.tensor([1.0, 0, 0, 0]))  # the best token always survives


def test_min_p_drops_below_a_fraction_of_the_best():
    assert torch.allclose(probs(min_p=0.2), torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95, atol=1e-6)  # below 0.1 goes


def test_filters_compose_in_order():
    assert torch.allclose(probs(top_k=3, top_p=0.6, min_p=0.5), torch.tensor([0.625, 0.375, 0, 0]), atol=1e-6)


def test_greedy_is_argmax_and_ignores_the_seed():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert Sampler(SamplingParams(temperature=0, seed=1))(logits) == int(logits.argmax())


def test_seed_reproduces_and_draws_follow_the_distribution():
    def draws(seed: int) -> list[int]:
        s = Sampler(SamplingParams(temperature=1.0, top_p=1.0, seed=seed))
        return [s(LOGITS) for _ in range(4000)]

    a = draws(3)
    assert a == draws(3) and a != draws(4)
    freq = torch.bincount(torch.tensor(a), minlength=4).float() / len(a)
    assert torch.allclose(freq, P, atol=0.03)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.0}, "min_p"),
    ],
)
def test_bad_params_are_clear_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SamplingParams(**kw)


def test_huge_logits_stay_finite():
    logits = torch.tensor([1e4, 1e4 - 1, -math.inf, 0.0])
    p = Sampler(SamplingParams(temperature=1.0, top_p=0.9, seed=0)).probs(logits)
    assert torch.isfinite(p).all() and p[2] == 0 and abs(p.sum().item() - 1) < 1e-6


@pytest.mark.parametrize("t", [math.nan, math.inf])
def test_non_finite_temperature_is_refused(t):
    with pytest.raises(ValueError, match="positive finite"):
        SamplingParams(temperature=t)


def test_tiny_temperature_acts_like_greedy():
    logits = torch.randn(500, generator=torch.Generator().manual_seed(2)) * 30
    s = Sampler(SamplingParams(temperature=1e-45, top_p=1.0, seed=0))
    assert all(s(logits) == int(logits.argmax()) for _ in range(5))


def test_seed_out_of_range_is_refused():
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=2**64)


def test_tiny_temperature_and_top_p_do_not_make_nan():
    """Issue 19: temperature 1e-300 divided the logits to NaN, top_p 5e-324 (0 in float32) dropped every token."""
    from offload.engine.sampling import GREEDY_BELOW, Sampler, SamplingParams

    logits = torch.tensor([0.5, 2.0, 1.0, 2.0 - 1e-7])
    for t in (1e-300, 5e-324, GREEDY_BELOW / 2):
        assert SamplingParams(temperature=t).greedy and Sampler(SamplingParams(temperature=t))(logits) == 1
    assert not SamplingParams(temperature=GREEDY_BELOW).greedy
    for top_p in (5e-324, 1e-300, 1e-8):
        s = Sampler(SamplingParams(temperature=1.0, top_p=top_p, seed=0))
        probs = s.probs(logits)
        assert torch.isfinite(probs).all() and probs[1] == 1.0 and s(logits) == 1
