"""The offloading expert runtime: RAM budget, next-layer prediction and prefetch, GPU slots, CPU and GPU executors.

One MoE layer, as the MoE module calls it:
1. guess the next MoE layer's experts (its router on this layer's residual stream) and hand them to the prefetcher;
2. one host sync: which experts this batch needs and how many tokens each;
3. split them: in a GPU slot -> GPU; otherwise the cost model picks "copy to a slot" or "compute on the CPU";
4. the CPU experts run (on a worker thread when the model is on CUDA) while the GPU runs the slotted experts and
   the shared expert; outputs are summed in float32.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from offload.checkpoint import Checkpoint
from offload.experts.config import OffloadConfig
from offload.experts.cost import CostModel
from offload.experts.cpu_executor import CpuExecutor
from offload.experts.gpu_executor import run_slotted
from offload.experts.predictor import Predictor
from offload.experts.prefetcher import Job, Prefetcher
from offload.experts.runtime import NextLayer
from offload.experts.slots import GpuSlots
from offload.experts.stats import PHASES, ExpertStats, PhaseCounts
from offload.experts.store import ExpertStore

log = logging.getLogger(__name__)


def _prior_to(nxt: NextLayer, device: torch.device) -> NextLayer:
    """The predictor's frequency prior is a CPU tensor; the router it is added to sits on `device`."""

    def guess(top_n: int, prior: torch.Tensor | None) -> torch.Tensor:
        return nxt.guess(top_n, None if prior is None else prior.to(device))

    return NextLayer(nxt.layer, guess)


class OffloadedExperts:
    """ExpertRuntime over a checkpoint's mapped experts; call close() (or use `with`) to stop its workers."""

    def __init__(
        self, ckpt: Checkpoint, dtype: torch.dtype, config: OffloadConfig | None = None, cost: CostModel | None = None
    ) -> None:
        cfg = ckpt.config
        config = config or OffloadConfig()
        self.config = config
        self.device = torch.device(config.device)
        self.n_experts = cfg.n_routed_experts
        self.first_layer = cfg.moe_layers[0] if len(cfg.moe_layers) else -1
        self.moe_layers = list(cfg.moe_layers)
        self.cpu = CpuExecutor(ckpt, dtype)
        self.store = ExpertStore(ckpt, config.ram_budget)
        if config.hot:
            n = self.store.hold(config.hot, config.hold_share)
            held_gb = self.store.counters.held_bytes / 1e9
            log.info("experts: %d of a profile's hottest held in RAM (%.3f GB read)", n, held_gb)
        self.cost = cost
        self.predictor = Predictor(
            cfg.num_hidden_layers,
            cfg.n_routed_experts,
            cfg.num_experts_per_tok,
            config.predict_extra,
            config.freq_weight,
        )
        self.slots: GpuSlots | None = None
        if config.gpu_slots:
            if not self.cpu.fused:
                raise ValueError(
                    f"GPU slots hold INT4 group-32 experts; this checkpoint's experts are "
                    f"{ckpt.storage.expert_label}: run with --gpu-slots 0"
                )
            self.slots = GpuSlots(
                config.gpu_slots,
                cfg.num_hidden_layers,
                cfg.n_routed_experts,
                cfg.hidden_size,
                cfg.moe_intermediate_size,
                self.device,
            )
        self._phases = {p: PhaseCounts() for p in PHASES}
        self._gpu_events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._events_lock = threading.Lock()
        cuda = self.device.type == "cuda"
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="kimi-cpu-experts") if cuda else None
        self.prefetcher = Prefetcher(self._fetch) if config.prefetch else None
        useful = config.prefetch and (config.ram_budget is not None or config.gpu_slots > 0)
        self.predicting = useful if config.predict is None else config.predict
        self.calls = 0
        self.expert_runs = 0
        self._passes = 0
        log.info(
            "experts: RAM budget %s, %d GPU slots on %s, prefetch %s",
            "unbounded" if config.ram_budget is None else f"{config.ram_budget / 1e9:.3f} GB",
            config.gpu_slots,
            self.device,
            "on" if config.prefetch else "off",
        )

    # ---- the MoE layer's call -------------------------------------------------------------------------------------
    def run(
        self,
        layer: int,
        x: torch.Tensor,
        ids: torch.Tensor,
        weights: torch.Tensor,
        shared: Callable[[], torch.Tensor] | None = None,
        next_layer: NextLayer | None = None,
    ) -> torch.Tensor:
        n_tok = x.shape[0]
        name = "decode" if n_tok == 1 else "prefill"
        phase = self._phases[name]
        self._begin(layer, n_tok, phase, next_layer)
        counts = torch.bincount(ids.reshape(-1), minlength=self.n_experts).cpu()  # [E]: the layer's one host sync
        needed = torch.nonzero(counts).flatten().tolist()
        self.expert_runs += len(needed)
        self.predictor.observe(layer, needed, counts, name)
        on_gpu, on_cpu = self._split(layer, needed, counts, phase)

        if self._pool is not None and on_cpu:  # CUDA: cold experts on the CPU while the GPU works
            # the inputs come to the CPU here, before the GPU work below is queued: the worker's own copy would
            # wait for that work (same stream), and the CPU experts would start only once the GPU's were done
            host = x.float().cpu(), ids.cpu(), weights.cpu()
            pending = self._pool.submit(self._run_cpu, layer, *host, on_cpu, phase)
            y_gpu = self._run_gpu(layer, x, ids, weights, on_gpu, name)
            side = shared() if shared is not None else None
            y_cpu = pending.result()
            out = y_cpu.to(self.device, non_blocking=True)
            if y_gpu is not None:
                out = out + y_gpu
        elif self._pool is not None:  # CUDA, every expert in a GPU slot: nothing for the CPU (its zeros are on the CPU)
            y_gpu = self._run_gpu(layer, x, ids, weights, on_gpu, name)
            out = torch.zeros(n_tok, x.shape[1], dtype=torch.float32, device=self.device) if y_gpu is None else y_gpu
            side = shared() if shared is not None else None
        else:
            out = self._run_cpu(layer, x, ids, weights, on_cpu, phase)
            y_gpu = self._run_gpu(layer, x, ids, weights, on_gpu, name)
            if y_gpu is not None:
                out = out + y_gpu
            side = shared() if shared is not None else None
        return out if side is None else out + side.float()

    def native_experts(self, layer: int) -> tuple[str, tuple[str, str, str], int] | None:
        """How `run_decode` hands this layer's experts to a native decode layer (CpuExecutor.native_kind); None
        where decode tokens take `run` (experts on a GPU, GPU slots, a budget below one token's experts, torch
        experts)."""
        if self.device.type != "cpu" or self.slots is not None:
            return None
        if self.store.capacity is not None and self.store.capacity < self.predictor.top_k:
            return None
        return self.cpu.native_kind(layer)

    def run_decode(
        self,
        layer: int,
        ids: list[int],
        weights: list[float],
        finish: Callable[[list[int], list[float]], None],
        next_layer: NextLayer | None = None,
    ) -> None:
        """One decode token's routed experts `ids` (weights `weights`), where native_experts(layer) said how:
        guesses and prefetches the next layer as `run` does, pins the experts in the store (reading the missing
        ones), and calls finish(pointers, weights) with their weight pointers (CpuExecutor.pointers, sorted by
        expert id) and weights in that order, the native layer's second half, which adds their sum (and the
        shared expert) to the residual stream itself."""
        phase = self._phases["decode"]
        self._begin(layer, 1, phase, next_layer)
        pairs = sorted(zip(ids, weights, strict=True))
        needed = [e for e, _ in pairs]
        if len(set(needed)) != len(needed):
            raise ValueError(f"layer {layer}: the router listed an expert twice ({ids}); top-k picks distinct ones")
        self.expert_runs += len(needed)
        self.predictor.observe(layer, needed, None, "decode")
        t0 = time.perf_counter()
        keys = [(layer, e) for e in needed]
        before = self.store.counters.disk_bytes, self.store.counters.disk_s
        sources = self.store.acquire(keys)
        try:
            finish([p for e in needed for p in self.cpu.pointers(layer, e)], [w for _, w in pairs])
        finally:
            self.store.release(keys)
        for source in sources:
            self._count_source(phase, source, None)
        self._count_disk(phase, before)
        phase.cpu_s += time.perf_counter() - t0

    # ---- steps ----------------------------------------------------------------------------------------------------
    def _begin(self, layer: int, n_tok: int, phase: PhaseCounts, next_layer: NextLayer | None) -> None:
        """A MoE layer's call begins: pass bookkeeping at the first MoE layer, then the next layer's guess handed to
        the prefetcher (first, so that it reads while this layer computes)."""
        if layer == self.first_layer:
            if self._passes == 1:
                # the first pass faulted in every dense weight; read-around brought neighbouring expert pages in
                # with them, uncounted: give those back once, so the budget holds in the kernel's view too
                self.store.trim()
            self._passes += 1
            phase.tokens += n_tok
            phase.passes += 1
            self.predictor.forget_pending()  # guesses of a pass that stopped early
        self.calls += 1
        if next_layer is not None and self.predicting:
            if self.device.type != "cpu":
                next_layer = _prior_to(next_layer, self.device)
            guess = self.predictor.guess(next_layer)
            if self.prefetcher is not None:
                self.prefetcher.submit(Job(next_layer.layer, tuple(guess), n_tok, self._on_prefetched(phase)))

    def _split(
        self, layer: int, needed: list[int], counts: torch.Tensor, phase: PhaseCounts
    ) -> tuple[list[int], list[int]]:
        """(experts to run from GPU slots, experts to run on the CPU); copies into slots what the cost model wants
        on the GPU."""
        if self.slots is None:
            return [], needed
        slot_of = self.slots.lookup(layer, needed)
        on_gpu = [e for e, s in zip(needed, slot_of, strict=True) if s >= 0]
        phase.from_gpu += len(on_gpu)
        on_cpu = []
        used_keys = {(layer, e) for e in needed}
        for e, s in zip(needed, slot_of, strict=True):
            if s >= 0:
                continue
            tokens = int(counts[e])
            if self.cost is None or self.cost.choose(tokens, False, self.store.resident((layer, e))) == "cpu":
                on_cpu.append(e)
                continue
            key = (layer, e)
            before = self.store.counters.disk_bytes, self.store.counters.disk_s
            (source,) = self.store.acquire([key])
            try:
                slot = self.slots.load(key, self.cpu.packed(layer, e), keep=lambda k: k in used_keys)
            finally:
                self.store.release([key])
            self._count_disk(phase, before)  # the read happened either way
            if slot is None:
                on_cpu.append(e)  # every slot holds an expert this layer uses; the CPU path counts its source
            else:
                on_gpu.append(e)
                phase.slot_copies += 1
                self._count_source(phase, source, None)
        return on_gpu, on_cpu

    def _run_cpu(
        self,
        layer: int,
        x: torch.Tensor,
        ids: torch.Tensor,
        weights: torch.Tensor,
        experts: list[int],
        phase: PhaseCounts,
    ) -> torch.Tensor:
        """The CPU experts, in groups that fit the RAM budget: [T, D] float32 on the CPU."""
        t0 = time.perf_counter()
        if not x.is_cpu:
            x, ids, weights = x.float().cpu(), ids.cpu(), weights.cpu()
        out: torch.Tensor | None = None
        cap = self.store.capacity or max(1, len(experts))
        for i in range(0, len(experts), cap):
            chunk = experts[i : i + cap]
            keys = [(layer, e) for e in chunk]
            before = self.store.counters.disk_bytes, self.store.counters.disk_s
            sources = self.store.acquire(keys)
            try:
                y = self.cpu.compute(layer, x, ids, weights, chunk)  # [T, D] float32
            finally:
                self.store.release(keys)
            for source in sources:
                self._count_source(phase, source, None)
            self._count_disk(phase, before)
            out = y if out is None else out.add_(y)
        phase.cpu_s += time.perf_counter() - t0
        if out is None:
            out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32)
        return out

    def _run_gpu(
        self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, experts: list[int], name: str
    ) -> torch.Tensor | None:
        if self.slots is None or not experts:
            return None
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            y = run_slotted(self.slots, layer, x, ids, weights, experts)
            end.record()
            with self._events_lock:
                self._gpu_events.append((name, start, end))
            if len(self._gpu_events) >= 1024:  # nobody asked for stats (a server): fold the finished ones in
                self._collect_gpu_times(wait=False)
            return y
        t0 = time.perf_counter()
        y = run_slotted(self.slots, layer, x, ids, weights, experts)
        self._phases[name].gpu_s += time.perf_counter() - t0
        return y

    # ---- the prefetcher's work ------------------------------------------------------------------------------------
    def _fetch(self, layer: int, expert: int, tokens: int) -> tuple[int, float]:
        """Read one guessed expert into RAM; with free GPU slots and a batch worth it, copy it there too."""
        t0 = time.perf_counter()
        key = (layer, expert)
        before = self.store.counters.prefetch_bytes
        self.store.prefetch(key, wait=self.config.prefetch_mode == "read")
        read = self.store.counters.prefetch_bytes - before
        slots = self.slots
        if slots is not None and self.cost is not None and slots.has_free() and self.store.resident(key):
            per_expert = max(1, tokens * self.predictor.top_k // self.n_experts)
            if tokens == 1 or self.cost.choose(per_expert, False, True) == "gpu":  # free slots cost nothing to fill
                slots.load(key, self.cpu.packed(layer, expert), prefetch=True, only_free=True)
        return read, time.perf_counter() - t0

    @staticmethod
    def _on_prefetched(phase: PhaseCounts) -> Callable[[int, int, float], None]:
        def done(expert: int, read: int, seconds: float) -> None:
            phase.prefetch_bytes += read
            phase.prefetch_s += seconds

        return done

    # ---- counting -------------------------------------------------------------------------------------------------
    def _count_source(self, phase: PhaseCounts, source: str, disk_before: tuple[int, float] | None) -> None:
        if source == "ram":
            phase.from_ram += 1
        else:
            phase.from_disk += 1
        if disk_before is not None:
            self._count_disk(phase, disk_before)

    def _count_disk(self, phase: PhaseCounts, before: tuple[int, float]) -> None:
        phase.disk_bytes += self.store.counters.disk_bytes - before[0]
        phase.disk_wait_s += self.store.counters.disk_s - before[1]

    def _collect_gpu_times(self, wait: bool) -> None:
        """Add the timed GPU work to its phase's gpu_s: all of it (waiting for the GPU), or what has finished."""
        with self._events_lock:
            done = 0
            for name, start, end in self._gpu_events:
                if not wait and not end.query():
                    break  # recorded in order on one stream: the later ones are not done either
                end.synchronize()
                self._phases[name].gpu_s += start.elapsed_time(end) / 1e3
                done += 1
            del self._gpu_events[:done]

    def stats(self) -> ExpertStats:
        """A snapshot of every counter (waits for the GPU's timing events)."""
        self._collect_gpu_times(wait=True)
        phases = {}
        for name, c in self._phases.items():
            g = self.predictor.total(name)
            phases[name] = PhaseCounts(
                **{
                    **{f: getattr(c, f) for f in c.__dataclass_fields__},
                    "predicted": g.predicted,
                    "chosen": g.chosen,
                    "hit": g.hit,
                }
            )
        layers = {
            layer: (g.predicted, g.chosen, g.hit) for (p, layer), g in self.predictor.scores.items() if p == "decode"
        }
        sc = self.store.counters
        return ExpertStats(
            phases=phases,
            calls=self.calls,
            expert_runs=self.expert_runs,
            layer_recall=layers,
            ram_budget_bytes=self.store.budget,
            choices={layer: tuple(int(c) for c in self.predictor.counts[layer].tolist()) for layer in self.moe_layers},
            resident_bytes=self.store.resident_bytes,
            peak_resident_bytes=sc.peak_bytes,
            released_bytes=sc.released_bytes,
            expert_bytes=self.store.expert_bytes,
            gpu_slots=self.slots.n if self.slots else 0,
            slot_evictions=self.slots.counters.evictions if self.slots else 0,
            prefetch=self.prefetcher is not None,
            prefetched=sc.prefetched,
            prefetch_used=sc.prefetch_used,
            prefetch_skipped=sc.prefetch_skipped,
            held=sc.held,
            held_bytes=sc.held_bytes,
            device=str(self.device),
        )

    # ---- lifetime -------------------------------------------------------------------------------------------------
    def wait_prefetch(self, timeout: float | None = None) -> bool:
        """Block until the prefetcher is idle (tests, benchmarks)."""
        return True if self.prefetcher is None else self.prefetcher.wait_idle(timeout)

    def close(self) -> None:
        """Stop and join every worker; raises a worker's error that was not reported yet."""
        try:
            if self.prefetcher is not None:
                self.prefetcher.close()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def __enter__(self) -> OffloadedExperts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
