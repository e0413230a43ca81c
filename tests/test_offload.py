"""The offloading runtime: numerically invisible, within its RAM budget (as the kernel sees it), clean to stop."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest
import torch

from offload.checkpoint import Checkpoint, open_checkpoint, pages
from offload.experts.cost import CostModel
from offload.experts.dequantized import DequantizedExperts
from offload.experts.offloaded import OffloadConfig, OffloadedExperts
from offload.experts.prefetcher import PrefetchError
from offload.experts.store import BudgetError, ExpertStore
from offload.model.loader import load_transformer
from tests.harness import PROMPT, STEPS, greedy, loaded

# a machine where copying an expert to the GPU wins from 2 tokens on (so the slot path runs in decode and prefill)
EAGER_GPU = dict(dram_gbs=20.0, nvme_gbs=1.0, cpu_gflops=1.0, pcie_gbs=50.0, gpu_tflops=100.0)


def offloaded(budget_experts: int | None, prefetch: bool, slots: int = 0):
    def make(ckpt: Checkpoint) -> OffloadedExperts:
        eb = ExpertStore(ckpt, None).expert_bytes
        cfg = ckpt.config
        cost = CostModel(eb, 3 * cfg.hidden_size * cfg.moe_intermediate_size, **EAGER_GPU)
        budget = None if budget_experts is None else budget_experts * eb
        return OffloadedExperts(ckpt, torch.float32, OffloadConfig(budget, slots, prefetch, predict=True), cost)

    return make


def drop(folder: Path) -> None:
    """Evict the checkpoint from the page cache; mappings left by earlier tests are collected first (mapped pages
    cannot be dropped)."""
    gc.collect()
    for shard in folder.glob("*.safetensors"):
        pages.drop_file(shard)
        assert pages.file_resident_bytes(shard)[0] == 0, f"{shard} is still mapped somewhere"


@pytest.fixture(scope="module")
def reference(mini_k25: Path) -> tuple[list[int], torch.Tensor]:
    with loaded(mini_k25, lambda ckpt: DequantizedExperts(ckpt, torch.float32)) as (model, _):
        return greedy(model)


@pytest.mark.parametrize(
    ("budget", "prefetch", "slots"),
    [(None, False, 0), (None, True, 0), (12, True, 0), (12, False, 0), (20, True, 2), (9, False, 1)],
    ids=["resident", "resident+prefetch", "budget12+prefetch", "budget12", "budget20+prefetch+2slots", "budget9+1slot"],
)
def test_offloading_is_numerically_invisible(mini_k25, reference, budget, prefetch, slots):
    """Same greedy tokens, logits within 1e-4 (fp32), whatever the budget, prefetch and slots (slots on the CPU
    here: the GPU executor's logic, with the pool in RAM)."""
    drop(mini_k25)
    with loaded(mini_k25, offloaded(budget, prefetch, slots)) as (model, runtime):
        tokens, logits = greedy(model)
    assert tokens == reference[0]
    assert float((logits - reference[1]).abs().max()) < 1e-4
    stats = runtime.stats()
    decode = stats.phases["decode"]
    assert decode.tokens == STEPS and decode.expert_uses == STEPS * 32  # 4 MoE layers x top-8
    assert stats.phases["prefill"].tokens == len(PROMPT)
    if budget is not None:
        assert stats.peak_resident_bytes <= budget * stats.expert_bytes
        assert stats.released_bytes > 0 and decode.from_disk > 0  # the budget really bites on mini
    if slots:
        assert decode.slot_copies + decode.from_gpu > 0 and decode.gpu_s > 0
    if prefetch:
        assert stats.prefetched > 0
    assert 0 < decode.recall <= 1 and decode.predicted > 0


def test_budget_holds_in_the_kernels_view(mini_k25):
    """After a budgeted run, mincore finds at most the budget's bytes of expert-only pages resident, and the pages
    of the experts the store counts as resident are there."""
    drop(mini_k25)
    budget = 10
    with open_checkpoint(mini_k25) as ckpt:
        runtime = offloaded(budget, prefetch=True)(ckpt)
        try:
            model = load_transformer(ckpt, runtime, torch.float32)
            cache = model.new_cache(32)
            model.forward(torch.tensor(PROMPT), 0, cache)
            for pos in range(len(PROMPT), len(PROMPT) + 4):
                model.forward(torch.tensor([pos % 300]), pos, cache)
            runtime.wait_prefetch()
            store = runtime.store
            resident_keys = set(store.policy.order())
            counted = kernel = 0
            for layer in ckpt.config.moe_layers:
                for expert in range(ckpt.config.n_routed_experts):
                    inner = 0
                    for span in store.spans((layer, expert)):
                        lo, hi = pages.pages_in(span.start, span.end)
                        if hi > lo:
                            inner += pages.resident_pages(span.shard, lo, hi)[0] * pages.PAGE
                    kernel += inner
                    if (layer, expert) in resident_keys:
                        counted += store._size((layer, expert))
                        assert inner > 0, f"expert {(layer, expert)} is counted resident but mincore finds no page"
            assert counted == store.resident_bytes <= budget * store.expert_bytes
            # read-around of faults on dense tensors can bring in a few pages of the experts next to them (at the
            # start of each run of expert tensors); anything more would be a leak
            assert kernel <= store.resident_bytes + 2 * len(store.regions) * store.expert_bytes
            assert len(resident_keys) >= budget - 2  # the budget is used, not left empty
        finally:
            runtime.close()


def test_budget_smaller_than_one_expert_is_refused(mini_k25):
    with open_checkpoint(mini_k25) as ckpt:
        eb = ExpertStore(ckpt, None).expert_bytes
        with pytest.raises(BudgetError, match=r"cannot hold one routed expert .* --ram-budget at least"):
            ExpertStore(ckpt, eb - 1)
        store = ExpertStore(ckpt, 3 * eb)
        with pytest.raises(BudgetError, match="4 experts at once exceed the RAM budget's 3"):
            store.acquire([(1, e) for e in range(4)])
        assert store.acquire([(1, 0), (1, 1), (1, 2)]) and not store.prefetch((1, 3))  # full of pinned experts
        assert store.counters.prefetch_skipped == 1
        store.release([(1, 0), (1, 1), (1, 2)])
        store.prefetch((1, 3))
        assert store.resident((1, 3)) and store.resident_bytes == 3 * eb  # one evicted to make room


def kimi_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("kimi-")]


def test_workers_stop_on_close_and_errors_are_not_lost(tiny_k25, monkeypatch):
    with open_checkpoint(tiny_k25) as ckpt:
        runtime = offloaded(None, prefetch=True)(ckpt)
        assert kimi_threads() == ["kimi-prefetch"]
        runtime.close()
        assert kimi_threads() == []

        def fail(key, wait=False):
            raise OSError("disk on fire")

        runtime = offloaded(None, prefetch=True)(ckpt)
        monkeypatch.setattr(runtime.store, "prefetch", fail)
        model = load_transformer(ckpt, runtime, torch.float32)
        cache = model.new_cache(16)
        model.forward(torch.tensor([1, 2]), 0, cache)  # layer 1 hands the worker a guess for layer 2; it fails
        assert runtime.wait_prefetch(timeout=30)
        with pytest.raises(PrefetchError, match="disk on fire"):
            model.forward(torch.tensor([3]), 2, cache)  # the next hand-over reports it
        runtime.close()  # reported once, not again
        assert kimi_threads() == []

        runtime = offloaded(None, prefetch=True)(ckpt)
        monkeypatch.setattr(runtime.store, "prefetch", fail)
        model = load_transformer(ckpt, runtime, torch.float32)
        model.forward(torch.tensor([1, 2]), 0, model.new_cache(16))
        assert runtime.wait_prefetch(timeout=30)
        with pytest.raises(PrefetchError, match="disk on fire"):
            runtime.close()  # not reported yet: close raises it
        assert kimi_threads() == []


def test_ctrl_c_inside_a_layer_leaves_no_thread(tiny_k25, monkeypatch):
    with open_checkpoint(tiny_k25) as ckpt:
        with pytest.raises(KeyboardInterrupt), offloaded(None, prefetch=True)(ckpt) as runtime:
            model = load_transformer(ckpt, runtime, torch.float32)

            def interrupted(*args, **kwargs):
                raise KeyboardInterrupt

            monkeypatch.setattr(runtime.cpu, "compute", interrupted)
            model.forward(torch.tensor([1, 2, 3]), 0, model.new_cache(8))
        assert kimi_threads() == []
        assert runtime.store._pinned == {}  # the interrupted layer's experts were unpinned


def test_guesses_are_made_only_when_they_can_be_acted_on(tiny_k25):
    with open_checkpoint(tiny_k25) as ckpt:
        for budget, slots, prefetch, want in (
            (None, 0, True, False),
            (10**6, 0, False, False),
            (10**6, 0, True, True),
            (None, 1, True, True),
        ):
            with OffloadedExperts(ckpt, torch.float32, OffloadConfig(budget, slots, prefetch)) as runtime:
                assert runtime.predicting is want, (budget, slots, prefetch)


def test_routing_skew_by_hand():
    from offload.experts.stats import PHASES, ExpertStats, PhaseCounts

    phases = {p: PhaseCounts() for p in PHASES}
    now = ExpertStats(phases=phases, choices={1: (6, 1, 1, 1, 1, 1, 0, 0, 0, 0), 2: (0,) * 10})
    then = ExpertStats(phases=phases, choices={1: (1, 0, 0, 0, 0, 0, 0, 0, 0, 0)})
    assert now.top_share(0.1) == pytest.approx(6 / 11)  # layer 2 routed nothing: not averaged in
    assert (now - then).choices[1] == (5, 1, 1, 1, 1, 1, 0, 0, 0, 0)
    assert (now - then).top_share(0.1) == pytest.approx(0.5) and (now - then).top_share(0.25) == pytest.approx(0.6)
    assert now.to_dict()["routing"]["picks"] == 11


def test_mincore_counts_only_the_resident_bit():
    """mincore's bytes: bit 0 is residency, the other bits are reserved; the count ignores them."""
    assert pages._LOW_BIT == bytes(b & 1 for b in range(256))
    assert bytes([0, 1, 2, 3, 0xFE, 0xFF]).translate(pages._LOW_BIT).count(1) == 3
