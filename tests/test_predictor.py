"""Predictor and Guesses (offload/experts/predictor.py) with fake NextLayer routers over hand-made scores."""

from __future__ import annotations

import pytest
import torch

from offload.experts.predictor import Guesses, Predictor
from offload.experts.runtime import NextLayer

E = 6


class FakeRouter:
    """top_n experts per token by `scores` [T, E] (+ prior [E]); records what it was asked."""

    def __init__(self, scores: list[list[float]]) -> None:
        self.scores = torch.tensor(scores, dtype=torch.float32)
        self.calls: list[tuple[int, torch.Tensor | None]] = []

    def __call__(self, top_n: int, prior: torch.Tensor | None) -> torch.Tensor:
        self.calls.append((top_n, None if prior is None else prior.clone()))
        s = self.scores if prior is None else self.scores + prior
        return torch.topk(s, top_n, dim=-1).indices


# top-2 per token: t0 {2, 0}, t1 {2, 1}, t2 {2, 0}  ->  votes 2: 3, 0: 2, 1: 1  ->  ranked [2, 0, 1]
SCORES = [
    [4.0, 0.0, 5.0, 0.0, 0.0, 0.0],
    [0.0, 4.0, 5.0, 0.0, 0.0, 0.0],
    [4.0, 0.0, 5.0, 1.0, 0.0, 0.0],
]


def next_layer(layer: int, scores: list[list[float]] = SCORES) -> tuple[NextLayer, FakeRouter]:
    router = FakeRouter(scores)
    return NextLayer(layer=layer, guess=router), router


def counts(**by_expert: int) -> torch.Tensor:
    """[E] int64 router counts, e.g. counts(e2=3, e3=1)."""
    out = torch.zeros(E, dtype=torch.int64)
    for name, n in by_expert.items():
        out[int(name[1:])] = n
    return out


def score(p: Predictor, phase: str, layer: int) -> tuple[int, int, int, int]:
    s = p.scores[(phase, layer)]
    return s.steps, s.predicted, s.chosen, s.hit


def test_guess_ranks_experts_by_votes() -> None:
    p = Predictor(n_layers=4, n_experts=E, top_k=2)
    nxt, router = next_layer(1)
    assert p.guess(nxt) == [2, 0, 1]
    assert router.calls == [(2, None)]  # top_k experts per token, no prior by default


def test_guess_ties_keep_expert_order() -> None:
    # top-1 per token: t0 -> 4, t1 -> 1, t2 -> 4, t3 -> 1, t4 -> 3: votes 1: 2, 4: 2, 3: 1 (ties by expert id)
    scores = [[0.0] * E for _ in range(5)]
    for t, e in enumerate([4, 1, 4, 1, 3]):
        scores[t][e] = 1.0
    p = Predictor(n_layers=2, n_experts=E, top_k=1)
    nxt, _ = next_layer(0, scores)
    assert p.guess(nxt) == [1, 4, 3]


def test_observe_scores_pending_guess() -> None:
    p = Predictor(n_layers=4, n_experts=E, top_k=2)
    nxt, _ = next_layer(1)
    p.guess(nxt)  # {2, 0, 1}
    p.observe(1, [2, 3], counts(e2=3, e3=3), "decode")
    # predicted 3, chosen 2, both: {2}
    assert score(p, "decode", 1) == (1, 3, 2, 1)
    g = p.scores[("decode", 1)]
    assert g.precision == pytest.approx(1 / 3)
    assert g.recall == pytest.approx(1 / 2)
    assert list(p.scores) == [("decode", 1)]


def test_observe_without_pending_guess_is_not_scored() -> None:
    p = Predictor(n_layers=4, n_experts=E, top_k=2)
    p.observe(1, [2, 3], counts(e2=1, e3=1), "decode")
    assert p.scores == {}
    assert p.total("decode") == Guesses()
    # a guess for another layer is not scored by this layer's observation, and stays pending for its own
    nxt, _ = next_layer(2)
    p.guess(nxt)
    p.observe(1, [2, 3], counts(e2=1, e3=1), "decode")
    assert p.scores == {}
    p.observe(2, [0, 1], counts(e0=1, e1=1), "decode")
    assert score(p, "decode", 2) == (1, 3, 2, 2)


def test_a_guess_is_scored_once() -> None:
    p = Predictor(n_layers=4, n_experts=E, top_k=2)
    nxt, _ = next_layer(1)
    p.guess(nxt)
    p.observe(1, [2, 0], counts(e2=2, e0=2), "decode")
    p.observe(1, [2, 0], counts(e2=2, e0=2), "decode")  # no new guess: not scored again
    assert score(p, "decode", 1) == (1, 3, 2, 2)


def test_scores_and_counts_accumulate() -> None:
    p = Predictor(n_layers=4, n_experts=E, top_k=2)
    nxt, _ = next_layer(1)
    p.guess(nxt)  # {2, 0, 1}
    p.observe(1, [2, 3], counts(e2=2, e3=1), "decode")  # hit 1
    p.guess(nxt)
    p.observe(1, [0, 1, 2, 5], counts(e0=1, e1=1, e2=1, e5=3), "decode")  # hit 3
    assert score(p, "decode", 1) == (2, 6, 6, 4)
    g = p.scores[("decode", 1)]
    assert g.precision == pytest.approx(4 / 6)
    assert g.recall == pytest.approx(4 / 6)
    assert p.counts.dtype == torch.float32
    assert p.counts[1].tolist() == [1.0, 1.0, 3.0, 1.0, 0.0, 3.0]
    assert p.counts[[0, 2, 3]].sum().item() == 0.0  # other layers untouched


def test_a_later_guess_replaces_the_pending_one() -> None:
    p = Predictor(n_layers=4, n_experts=E, top_k=2)
    nxt, _ = next_layer(1)
    p.guess(nxt)  # {2, 0, 1}
    other, _ = next_layer(1, [[0.0, 0.0, 0.0, 2.0, 1.0, 0.0]])
    assert p.guess(other) == [3, 4]
    p.observe(1, [3, 5], counts(e3=1, e5=1), "prefill")
    assert score(p, "prefill", 1) == (1, 2, 2, 1)


def test_freq_weight_prior_scaled_to_most_frequent_expert() -> None:
    p = Predictor(n_layers=4, n_experts=E, top_k=2, freq_weight=0.5)
    nxt, router = next_layer(1)
    assert p.guess(nxt) == [2, 0, 1]
    assert router.calls[-1] == (2, None)  # no history yet: no prior
    p.observe(1, [1, 2, 5], counts(e1=2, e2=4, e5=1), "prefill")
    p.observe(3, [0], counts(e0=100), "prefill")  # another layer's history does not count for layer 1
    p.guess(nxt)
    top_n, prior = router.calls[-1]
    assert top_n == 2
    assert prior is not None
    # counts [0, 2, 4, 0, 0, 1] * 0.5 / 4
    assert prior.tolist() == [0.0, 0.25, 0.5, 0.0, 0.0, 0.125]


def test_freq_weight_prior_changes_the_guess() -> None:
    # without a prior, top-1 of each token is expert 0; expert 3 is close behind and the router's favourite
    scores = [[1.0, 0.0, 0.0, 0.9, 0.0, 0.0], [1.0, 0.0, 0.0, 0.8, 0.0, 0.0]]
    p = Predictor(n_layers=2, n_experts=E, top_k=1, freq_weight=0.5)
    nxt, _ = next_layer(0, scores)
    assert p.guess(nxt) == [0]
    p.observe(0, [3], counts(e3=10), "decode")  # prior: 0.5 for expert 3, 0 elsewhere
    assert p.guess(nxt) == [3]


def test_zero_freq_weight_passes_no_prior() -> None:
    p = Predictor(n_layers=2, n_experts=E, top_k=2)
    nxt, router = next_layer(0)
    p.observe(0, [2], counts(e2=5), "decode")
    p.guess(nxt)
    assert router.calls == [(2, None)]


def test_extra_widens_the_guess() -> None:
    # distinct scores: top-3 per token t0 {0, 1, 2}, t1 {1, 2, 3}  ->  votes 1: 2, 2: 2, 0: 1, 3: 1
    scores = [[6.0, 5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 6.0, 5.0, 4.0, 3.0, 2.0]]
    p = Predictor(n_layers=2, n_experts=E, top_k=1, extra=2)
    nxt, router = next_layer(0, scores)
    assert p.guess(nxt) == [1, 2, 0, 3]
    assert router.calls == [(3, None)]
    p.observe(0, [1], counts(e1=2), "decode")
    assert score(p, "decode", 0) == (1, 4, 1, 1)
    assert p.scores[("decode", 0)].precision == pytest.approx(1 / 4)
    assert p.scores[("decode", 0)].recall == 1.0


def test_forget_pending_drops_unscored_guesses() -> None:
    p = Predictor(n_layers=4, n_experts=E, top_k=2)
    for layer in (1, 2):
        nxt, _ = next_layer(layer)
        p.guess(nxt)
    p.forget_pending()
    p.observe(1, [2], counts(e2=1), "prefill")
    p.observe(2, [2], counts(e2=1), "prefill")
    assert p.scores == {}
    assert p.counts[1, 2].item() == 1.0  # frequencies still count
    # guesses made after forgetting are scored as usual
    nxt, _ = next_layer(1)
    p.guess(nxt)
    p.observe(1, [2], counts(e2=1), "prefill")
    assert score(p, "prefill", 1) == (1, 3, 1, 1)


def test_total_sums_one_phase() -> None:
    p = Predictor(n_layers=4, n_experts=E, top_k=2)
    for layer, chosen, phase in [
        (1, [2, 3], "prefill"),  # predicted 3, chosen 2, hit 1
        (2, [0, 1, 2, 4], "prefill"),  # predicted 3, chosen 4, hit 3
        (1, [5], "decode"),  # predicted 3, chosen 1, hit 0
        (2, [2], "prefill"),  # predicted 3, chosen 1, hit 1
    ]:
        nxt, _ = next_layer(layer)
        p.guess(nxt)
        p.observe(layer, chosen, counts(), phase)
    assert score(p, "prefill", 2) == (2, 6, 5, 4)
    pre = p.total("prefill")
    assert (pre.steps, pre.predicted, pre.chosen, pre.hit) == (3, 9, 7, 5)
    assert pre.precision == pytest.approx(5 / 9)
    assert pre.recall == pytest.approx(5 / 7)
    dec = p.total("decode")
    assert (dec.steps, dec.predicted, dec.chosen, dec.hit) == (1, 3, 1, 0)
    assert dec.precision == 0.0 and dec.recall == 0.0
    assert p.total("other") == Guesses()
    # total() builds a new object: the per-layer scores are unchanged
    assert score(p, "prefill", 1) == (1, 3, 2, 1)


def test_guesses_empty_and_add() -> None:
    g = Guesses()
    assert g.precision == 0.0 and g.recall == 0.0
    g.add(Guesses(steps=1, predicted=4, chosen=2, hit=2))
    g.add(Guesses(steps=2, predicted=6, chosen=8, hit=3))
    assert g == Guesses(steps=3, predicted=10, chosen=10, hit=5)
    assert g.precision == 0.5 and g.recall == 0.5
    assert Guesses(predicted=5, chosen=0, hit=0).recall == 0.0
    assert Guesses(predicted=0, chosen=5, hit=0).precision == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(top_k=2, extra=-1),
        dict(top_k=4, extra=3),  # 7 > 6 experts
        dict(top_k=7),
        dict(top_k=2, freq_weight=-0.1),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="extra and freq_weight"):
        Predictor(n_layers=2, n_experts=E, **kwargs)  # type: ignore[arg-type]


def test_guessing_every_expert_is_allowed() -> None:
    p = Predictor(n_layers=2, n_experts=E, top_k=2, extra=4)
    nxt, router = next_layer(0)
    assert sorted(p.guess(nxt)) == list(range(E))
    assert router.calls == [(E, None)]
    assert p.counts.shape == (2, E)
