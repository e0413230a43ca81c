"""The offloading runtime's GPU side on CUDA: slots (copies, slot map, eviction, stream order), the slotted-expert
executor against the CPU path, and whole models on CUDA against the CPU reference runtime.

Every test here needs CUDA and is skipped without it (scripts/gpu_check.sh runs this file on a GPU machine).
Nothing imports Triton at module level: tests/test_triton_kernels.py must be the first to import it (interpreter).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kernels.cpu_int4 import Int4Expert
from kernels.dequant import StoredWeight
from kernels.int4 import dequantize_int4
from offload.checkpoint import Checkpoint, open_checkpoint
from offload.experts.cost import CostModel
from offload.experts.dequantized import DequantizedExperts
from offload.experts.gpu_executor import run_slotted
from offload.experts.offloaded import OffloadConfig, OffloadedExperts
from offload.experts.slots import GpuSlots
from offload.experts.store import ExpertStore
from tests.harness import greedy, loaded, random_int4_expert
from tests.test_offload import EAGER_GPU

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="needs CUDA (a CUDA build of torch and a GPU)")

# copying to a slot always wins, even for one token on a RAM-resident expert: every expert goes to a slot
ALWAYS_GPU = dict(dram_gbs=1.0, nvme_gbs=1.0, cpu_gflops=1e-3, pcie_gbs=1e3, gpu_tflops=1e3)
# the CPU wins for any batch here: only the prefetcher fills slots (free ones, during decode), from its own thread
CPU_FIRST = dict(dram_gbs=20.0, nvme_gbs=1.0, cpu_gflops=1e3, pcie_gbs=1.0, gpu_tflops=100.0)
SLEEP_CYCLES = 200_000_000  # torch.cuda._sleep: ~0.1 s of GPU clock, far longer than the host needs to queue work
LOGIT_TOL = 1e-3


@pytest.fixture(autouse=True)
def _no_tf32() -> Iterator[None]:
    """fp32 matmuls in fp32 (TF32 would round inputs to 10 bits and hide nothing but real differences)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# ---- helpers --------------------------------------------------------------------------------------------------
def slot_holds(slots: GpuSlots, slot: int, expert: Int4Expert) -> bool:
    """Slot `slot` holds exactly `expert` (read on the current stream, after slot_map ordered it)."""
    return all(
        torch.equal(pool_p[slot].cpu(), p) and torch.equal(pool_s[slot].cpu(), s)
        for (pool_p, pool_s), (p, s) in zip(slots.pools.values(), expert, strict=True)
    )


def routed_reference(
    experts: dict[int, Int4Expert],
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    only: list[int],
    round_h: bool,
) -> torch.Tensor:
    """sum over (t, k) with ids[t, k] in `only` of weights[t, k] * expert(x[t]) in float64 from the source weights
    (not from any slot); round_h rounds the hidden activation to x.dtype, as the GPU kernel does."""
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
    for e in only:
        tok, k = torch.nonzero(ids == e, as_tuple=True)
        gate, up, down = (dequantize_int4(p, s, p.shape[1] * 8).double() for p, s in experts[e])
        xe = x[tok].double()
        h = F.silu(xe @ gate.T) * (xe @ up.T)
        if round_h:
            h = h.to(x.dtype).double()
        out.index_add_(0, tok, (h @ down.T) * weights[tok, k, None].double())
    return out.float()


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert ref.abs().max() > 0, "the reference is all zeros: the test would check nothing"
    return float((y.cpu().float() - ref).abs().max() / ref.abs().max())


# ---- (a) GpuSlots on CUDA -------------------------------------------------------------------------------------
D, INTER, E, L = 128, 64, 8, 3  # hidden, expert inter, experts per layer, layers


def test_slots_load_map_and_evict() -> None:
    gen = torch.Generator().manual_seed(1)
    experts = {(1, e): random_int4_expert(D, INTER, gen) for e in range(4)}
    slots = GpuSlots(2, L, E, D, INTER, "cuda")
    assert all(t.is_cuda for pool in slots.pools.values() for t in pool)
    assert slots.slot_map(1).cpu().tolist() == [-1] * E  # nothing resident yet

    s0, s1 = slots.load((1, 0), experts[(1, 0)]), slots.load((1, 1), experts[(1, 1)])
    assert {s0, s1} == {0, 1}
    assert slots.load((1, 0), experts[(1, 0)]) == s0  # already resident: same slot, no copy
    assert slots.counters.loads == 2
    row = slots.slot_map(1)
    assert row.is_cuda and row.dtype == torch.int32 and row.shape == (E,)
    assert row.cpu().tolist() == [s0, s1] + [-1] * (E - 2)
    assert slots.slot_map(0).cpu().tolist() == [-1] * E and slots.slot_map(2).cpu().tolist() == [-1] * E
    assert slot_holds(slots, s0, experts[(1, 0)]) and slot_holds(slots, s1, experts[(1, 1)])
    assert slots.lookup(1, [0, 1, 2]) == [s0, s1, -1] and sorted(slots.resident()) == [(1, 0), (1, 1)]

    # full: only_free gives up, a `keep` that protects everything gives up, nothing changes
    assert not slots.has_free()
    assert slots.load((1, 2), experts[(1, 2)], only_free=True) is None
    assert slots.load((1, 2), experts[(1, 2)], keep=lambda k: True) is None
    assert slots.slot_map(1).cpu().tolist() == [s0, s1] + [-1] * (E - 2)

    # eviction: the policy's victim gives up its slot, the newcomer takes that very slot
    victim = slots.policy.victim()
    assert victim in {(1, 0), (1, 1)}
    victim_slot = s0 if victim == (1, 0) else s1
    other, other_slot = ((1, 1), s1) if victim == (1, 0) else ((1, 0), s0)
    assert slots.load((1, 2), experts[(1, 2)]) == victim_slot
    assert slots.counters.evictions == 1
    row = slots.slot_map(1).cpu().tolist()
    assert row[victim[1]] == -1 and row[2] == victim_slot and row[other[1]] == other_slot
    assert slot_holds(slots, victim_slot, experts[(1, 2)]) and slot_holds(slots, other_slot, experts[other])

    # `keep` steers the victim: protecting (1, 2) makes the other one go
    assert slots.load((1, 3), experts[(1, 3)], keep=lambda k: k == (1, 2)) == other_slot
    row = slots.slot_map(1).cpu().tolist()
    assert row[:4] == [-1, -1, victim_slot, other_slot]
    assert slot_holds(slots, other_slot, experts[(1, 3)])


def test_slot_is_not_overwritten_under_a_kernel_still_reading_it() -> None:
    """The copy into an evicted slot waits for the compute stream's work queued before it."""
    gen = torch.Generator().manual_seed(2)
    old, new = random_int4_expert(D, INTER, gen), random_int4_expert(D, INTER, gen)
    slots = GpuSlots(1, L, E, D, INTER, "cuda")
    slot = slots.load((1, 0), old)
    slots.slot_map(1)
    torch.cuda.synchronize()
    torch.cuda._sleep(SLEEP_CYCLES)  # the compute stream is busy ...
    seen = slots.pools["gate"][0][slot].clone()  # ... then reads the old expert's weights
    assert slots.load((2, 5), new) == slot  # evicts (1, 0): its copy must not land before the read above
    torch.cuda.synchronize()
    assert torch.equal(seen.cpu(), old[0][0]), "the slot was overwritten while queued work still read it"
    assert slots.slot_map(2).cpu().tolist()[5] == slot and slots.slot_map(1).cpu().tolist()[0] == -1
    assert slot_holds(slots, slot, new)


def test_compute_stream_reads_a_slot_only_after_its_copy() -> None:
    """slot_map() orders the compute stream after the side stream's copies."""
    gen = torch.Generator().manual_seed(3)
    expert = random_int4_expert(D, INTER, gen)
    slots = GpuSlots(2, L, E, D, INTER, "cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(slots._stream):
        torch.cuda._sleep(SLEEP_CYCLES)  # the copy stream is busy: the next copy lands late
    slot = slots.load((1, 4), expert)
    assert slot is not None
    row = slots.slot_map(1)
    seen = slots.pools["down"][0][slot].clone()  # on the compute stream, after slot_map
    seen_row = row.clone()
    torch.cuda.synchronize()
    assert torch.equal(seen.cpu(), expert[2][0]), "the compute stream read the slot before its copy landed"
    assert seen_row.cpu().tolist()[4] == slot


def test_staging_buffers_are_not_reused_before_their_copy_left() -> None:
    """Three copies in a row through the two pinned staging buffers while the copy stream is held back."""
    gen = torch.Generator().manual_seed(4)
    experts = [random_int4_expert(D, INTER, gen) for _ in range(5)]
    slots = GpuSlots(5, L, E, D, INTER, "cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(slots._stream):
        torch.cuda._sleep(SLEEP_CYCLES)
    placed = [slots.load((1, e), experts[e]) for e in range(5)]
    slots.slot_map(1)
    torch.cuda.synchronize()
    assert sorted(placed) == list(range(5))  # type: ignore[type-var]
    for e, slot in enumerate(placed):
        assert slot is not None and slot_holds(slots, slot, experts[e]), f"slot {slot} does not hold expert {e}"


# ---- (b) run_slotted on CUDA against the CPU path -------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 2e-3)], ids=str)
@pytest.mark.parametrize("tokens", [1, 7])
def test_run_slotted_matches_the_cpu_path(dtype: torch.dtype, tol: float, tokens: int) -> None:
    gen = torch.Generator().manual_seed(5 + tokens)
    k, layer = 4, 1
    experts = {e: random_int4_expert(D, INTER, gen) for e in range(E)}
    resident = [0, 2, 3, 5, 6]
    gpu, cpu = GpuSlots(6, L, E, D, INTER, "cuda"), GpuSlots(6, L, E, D, INTER, "cpu")
    for e in resident:
        assert gpu.load((layer, e), experts[e]) is not None and cpu.load((layer, e), experts[e]) is not None
    # every token routes to 4 distinct experts, among them slotted, unslotted and (expert 6) resident but sent
    # to the CPU by the caller: run_slotted must leave that one out, as the split decided
    ids = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(tokens)])  # [T, k] int64
    ids[0] = torch.tensor([6, 0, 1, 3])
    slotted = sorted({int(e) for e in ids.flatten()} & {0, 2, 3, 5})
    x = torch.randn(tokens, D, generator=gen).to(dtype)
    weights = torch.rand(tokens, k, generator=gen)  # float32

    y = run_slotted(gpu, layer, x.cuda(), ids.cuda(), weights.cuda(), slotted)
    assert y.is_cuda and y.dtype == torch.float32 and y.shape == (tokens, D)
    ref = routed_reference(experts, x, ids, weights, slotted, round_h=dtype != torch.float32)
    assert rel_err(y, ref) <= tol
    wrong = routed_reference(experts, x, ids, weights, [*slotted, 6], round_h=dtype != torch.float32)
    assert rel_err(wrong, ref) > 10 * tol  # expert 6 matters: the check above would catch it run here

    y_cpu = run_slotted(cpu, layer, x, ids, weights, slotted)  # the same function, the pool in RAM
    assert rel_err(y_cpu, routed_reference(experts, x, ids, weights, slotted, round_h=False)) <= 1e-5
    if dtype == torch.float32:
        assert rel_err(y, y_cpu) <= tol


def test_run_slotted_matches_the_triton_reference() -> None:
    """The whole pool through kernels.triton_int4.int4_grouped_ffn_ref (rows sorted by expert, float64)."""
    from kernels.triton_int4 import int4_grouped_ffn_ref

    gen = torch.Generator().manual_seed(6)
    k, layer, tokens = 3, 2, 9
    experts = {e: random_int4_expert(D, INTER, gen) for e in range(E)}
    slots = GpuSlots(E, L, E, D, INTER, "cuda")
    for e in range(E):
        slots.load((layer, e), experts[e])
    ids = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(tokens)])
    x, weights = torch.randn(tokens, D, generator=gen), torch.rand(tokens, k, generator=gen)
    y = run_slotted(slots, layer, x.cuda(), ids.cuda(), weights.cuda(), list(range(E)))

    slot_of = slots.slot_map(layer).cpu()
    pools = [(p.cpu(), s.cpu()) for p, s in slots.pools.values()]
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    offsets = torch.zeros(E + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(torch.bincount(flat, minlength=E), 0)
    tok = order // k
    per_row = int4_grouped_ffn_ref(x[tok], *pools, slot_of, offsets, torch.arange(E, dtype=torch.int32))
    ref = torch.zeros(tokens, D).index_add_(0, tok, per_row * weights.flatten()[order, None])
    assert rel_err(y, ref) <= 1e-4


# ---- (c) whole models on CUDA against the CPU reference runtime -----------------------------------------------
def offloaded_cuda(slots: int, prefetch: bool, rates: dict[str, float], budget_experts: int | None = None):
    def make(ckpt: Checkpoint) -> OffloadedExperts:
        eb = ExpertStore(ckpt, None).expert_bytes
        cfg = ckpt.config
        cost = CostModel(eb, 3 * cfg.hidden_size * cfg.moe_intermediate_size, **rates)
        budget = None if budget_experts is None else budget_experts * eb
        return OffloadedExperts(ckpt, torch.float32, OffloadConfig(budget, slots, prefetch, device="cuda"), cost)

    return make


_references: dict[Path, tuple[list[int], torch.Tensor]] = {}


def cpu_reference(folder: Path) -> tuple[list[int], torch.Tensor]:
    """The CPU model with DequantizedExperts (every expert on the CPU, every call), once per checkpoint."""
    if folder not in _references:
        with loaded(folder, lambda ckpt: DequantizedExperts(ckpt, torch.float32)) as (model, _):
            tokens, logits = greedy(model)
        assert len(set(tokens)) > 1, "the reference repeats one token: a weak check"
        _references[folder] = tokens, logits
    return _references[folder]


CASES = {  # preset, slots, prefetch, cost rates, RAM budget in experts, what must happen on the way
    # mini (top-8 of 384; EAGER_GPU sends every expert to a slot): 2 slots never hold a layer's experts, so the
    # CPU worker thread and the GPU run together, and slots the previous layer's kernel read are evicted
    "mini-2slots-prefetch": ("mini", 2, True, EAGER_GPU, None, {"mixed", "evictions"}),
    "mini-2slots-budget12": ("mini", 2, False, EAGER_GPU, 12, {"mixed", "evictions"}),
    # every mini expert has a slot and only the prefetcher fills them, while the layers it guessed for run
    "mini-allslots-prefetch-fills": ("mini", 4 * 384, True, CPU_FIRST, None, {"mixed", "prefetch_loads"}),
    # tiny (top-4 of 16, MoE layers 1 and 2): 32 slots hold every expert, so whole layers run on the GPU alone
    "tiny-32slots-always-gpu": ("tiny", 32, True, ALWAYS_GPU, None, {"gpu_only"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_model_on_cuda_matches_the_cpu_reference(case: str, request: pytest.FixtureRequest) -> None:
    preset, slots, prefetch, rates, budget, expect = CASES[case]
    folder: Path = request.getfixturevalue(f"{preset}_k25")
    ref_tokens, ref_logits = cpu_reference(folder)
    record: list[tuple[int, int]] = []
    with loaded(folder, offloaded_cuda(slots, prefetch, rates, budget), "cuda", record) as (model, runtime):
        tokens, logits = greedy(model)
    diff = float((logits - ref_logits).abs().max())
    assert tokens == ref_tokens, f"greedy tokens differ (max logit diff {diff:.2e})"
    assert diff < LOGIT_TOL

    # the GPU really ran slotted experts, on CUDA
    assert isinstance(runtime, OffloadedExperts) and runtime.slots is not None
    assert runtime.slots.device.type == "cuda"
    stats = runtime.stats()
    assert stats.device.startswith("cuda")
    used = [p for p in stats.phases.values() if p.slot_copies + p.from_gpu > 0]
    assert used and all(p.gpu_s > 0 for p in used)
    assert runtime.slots.counters.loads > 0
    assert any(g > 0 for g, _ in record)
    if "mixed" in expect:
        assert any(g > 0 and c > 0 for g, c in record), "no layer ran experts on the GPU and the CPU together"
    if "evictions" in expect:
        assert runtime.slots.counters.evictions > 0
    if "prefetch_loads" in expect:
        assert runtime.slots.counters.prefetch_loads > 0
    if "gpu_only" in expect:
        assert all(c == 0 for _, c in record), "an expert ran on the CPU although every expert had a slot"
    if budget is not None:
        assert stats.peak_resident_bytes <= budget * stats.expert_bytes


def test_engine_on_cuda_matches_the_cpu_reference(tiny_k25: Path) -> None:
    """The same through Engine (plan, cost model from this machine's profile, device="cuda")."""
    from offload.engine.engine import Engine
    from offload.planner.plan import RuntimeConfig

    ref_tokens, ref_logits = cpu_reference(tiny_k25)
    with Engine(tiny_k25, RuntimeConfig(dtype="float32", device="cuda", gpu_slots=2)) as engine:
        assert engine.device == "cuda" and engine.experts.device.type == "cuda"
        assert engine.experts.slots is not None and engine.experts.slots.n == 2
        assert engine.experts.slots.device.type == "cuda"
        model = engine.model
        assert model.lm_head.device.type == "cuda"
        tokens, logits = greedy(model)
        stats = engine.stats()
    assert tokens == ref_tokens
    assert float((logits - ref_logits).abs().max()) < LOGIT_TOL
    assert stats.device.startswith("cuda") and stats.gpu_slots == 2


@pytest.mark.parametrize(("layout", "experts"), [("deepseek-v3", "fp8"), ("k2", "fp8"), ("k2.5", "bf16")])
def test_fp8_and_bf16_checkpoints_on_cuda_with_default_flags(
    tiny_dirs: dict[tuple[str, str], Path], layout: str, experts: str
) -> None:
    """Issue 14's bug: on CUDA with default flags, FP8/bf16 checkpoints load (no slots: their experts run on the
    CPU) and decode the CPU reference's tokens; the FP8 weights kept on the GPU are dequantized there by the Triton
    kernel (kernels/dequant.py), which must match the CPU dequantization bit for bit."""
    from offload.engine.engine import Engine
    from offload.planner.plan import RuntimeConfig

    folder = tiny_dirs[(layout, experts)]
    ref_tokens, ref_logits = cpu_reference(folder)
    with Engine(folder, RuntimeConfig(dtype="float32", device="cuda")) as engine:
        assert engine.experts.slots is None and engine.plan.offload.gpu_slots == 0
        tokens, logits = greedy(engine.model)
        if layout == "deepseek-v3":  # its attention weights are FP8 blocks: the Triton path ran
            from kernels.dequant import dequantize

            stored = _first_fp8(engine.ckpt)
            on_gpu, on_cpu = dequantize(stored.to("cuda"), torch.float32), dequantize(stored, torch.float32)
            assert torch.equal(on_gpu.cpu(), on_cpu)
    assert tokens == ref_tokens
    assert float((logits - ref_logits).abs().max()) < LOGIT_TOL


def _first_fp8(ckpt: Checkpoint) -> StoredWeight:
    """The first non-expert linear weight the checkpoint stores in FP8."""
    from offload.parts import model_modules

    for m in model_modules(ckpt.config, routed=False):
        if m.kind == "linear" and (w := ckpt.weight(m.name)).fmt == "fp8":
            return w
    raise AssertionError("no FP8 non-expert weight in a deepseek-v3 layout checkpoint")


def test_a_gguf_on_cuda_matches_the_cpu_reference(tmp_path: Path) -> None:
    """GGUF: Q8_0 attention and Q4_K shared experts moved to the GPU as stored and dequantized there (torch ggml
    paths), Q4_0 routed experts on the CPU (no slots for ggml types): the CPU reference's tokens."""
    import dataclasses

    from offload.engine.engine import Engine
    from offload.planner.plan import RuntimeConfig
    from offload.synth.generator import write_model
    from offload.synth.gguf_export import write_gguf
    from offload.synth.presets import preset_config

    tiny = preset_config("tiny")
    model = dataclasses.replace(tiny.model, hidden_size=256, moe_intermediate_size=256, intermediate_size=256)
    src = write_model(dataclasses.replace(tiny, model=model), tmp_path / "tiny256")
    types = {"routed_experts": "q4_0", "attention": "q8_0", "shared_experts": "q4_k", "dense_mlp": "q6_k"}
    q = write_gguf(src, tmp_path / "q.gguf", types)[0]
    ref_tokens, ref_logits = cpu_reference(q)
    with Engine(q, RuntimeConfig(dtype="float32", device="cuda")) as engine:
        assert engine.experts.slots is None
        tokens, logits = greedy(engine.model)
    assert tokens == ref_tokens
    assert float((logits - ref_logits).abs().max()) < LOGIT_TOL
