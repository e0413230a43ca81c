"""GPU expert slots: a pool of N INT4 experts allocated once, which expert sits where, and copies into it.

The pool holds each matrix kind in one tensor ([N, out, in/8] packed int32 and [N, out, in/32] bf16 scales, the
checkpoint's own layout), so the Triton kernel indexes it through `slot_map(layer)`: expert -> slot, -1 when not
resident. On CUDA, copies go mapped checkpoint -> pinned staging buffer (two, used in turn) -> slot, on a side
stream; the compute stream waits for a copy only when it next reads the slot map. On the CPU (tests, GPU logic
without a GPU) the pool is plain memory and copies are synchronous.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels.cpu_int4 import Int4Expert
from offload.experts.policy import SegmentedLRU

Key = tuple[int, int]  # (layer, expert)


@dataclass(slots=True)
class SlotCounters:
    loads: int = 0  # copies into a slot (compute path and prefetcher)
    prefetch_loads: int = 0  # of which the prefetcher's
    evictions: int = 0


class GpuSlots:
    """`n` slots for routed experts of shape (hidden, inter) on `device`; thread-safe."""

    def __init__(
        self, n: int, n_layers: int, n_experts: int, hidden: int, inter: int, device: torch.device | str
    ) -> None:
        if n < 1:
            raise ValueError(f"{n} GPU slots: give at least 1, or run without slots")
        if hidden % 32 or inter % 32:
            raise ValueError(f"INT4 slots need hidden ({hidden}) and expert inter ({inter}) multiples of 32")
        self.n = n
        self.device = torch.device(device)
        shapes = {"gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}  # [out, in]
        self.pools = {
            kind: (
                torch.zeros(n, o, i // 8, dtype=torch.int32, device=self.device),  # [N, out, in/8]
                torch.zeros(n, o, i // 32, dtype=torch.bfloat16, device=self.device),  # [N, out, in/32]
            )
            for kind, (o, i) in shapes.items()
        }
        self.slot_bytes = sum(p.nbytes + s.nbytes for p, s in self.pools.values()) // n
        self._map_host = torch.full((n_layers, n_experts), -1, dtype=torch.int32)  # [L, E]
        self._map_dev = self._map_host.to(self.device) if self.device.type != "cpu" else self._map_host
        self._dirty: set[int] = set()
        self.key_of: list[Key | None] = [None] * n
        self._free = list(range(n - 1, -1, -1))
        self.policy = SegmentedLRU()
        self.counters = SlotCounters()
        self._lock = threading.Lock()
        self._cuda = self.device.type == "cuda"
        if self._cuda:
            self._stream = torch.cuda.Stream(self.device)
            self._staging = [
                {
                    kind: (
                        torch.empty(p.shape[1:], dtype=p.dtype).pin_memory(),
                        torch.empty(s.shape[1:], dtype=s.dtype).pin_memory(),
                    )
                    for kind, (p, s) in self.pools.items()
                }
                for _ in range(2)
            ]
            self._staged: list[torch.cuda.Event | None] = [None, None]
            self._turn = 0
            self._last_copy: torch.cuda.Event | None = None

    def lookup(self, layer: int, experts: list[int]) -> list[int]:
        """Each expert's slot (-1: not resident); a resident one counts as a use for the eviction policy."""
        with self._lock:
            row = self._map_host[layer]
            out = [int(row[e]) for e in experts]
            for e, s in zip(experts, out, strict=True):
                if s >= 0:
                    self.policy.use((layer, e))
            return out

    def has_free(self) -> bool:
        with self._lock:
            return bool(self._free)

    def load(
        self,
        key: Key,
        src: Int4Expert,
        keep: Callable[[object], bool] = lambda k: False,
        prefetch: bool = False,
        only_free: bool = False,
    ) -> int | None:
        """Copy expert `key` (gate, up, down as (packed, scale) on the CPU) into a free slot, or the policy's
        victim's (never one `keep` protects); None when no slot can be had. Returns the slot."""
        with self._lock:
            found = int(self._map_host[key[0], key[1]])
            if found >= 0:
                return found
            if self._free:
                slot = self._free.pop()
            elif only_free:
                return None
            else:
                victim = self.policy.evict(keep)
                if victim is None:
                    return None
                slot = int(self._map_host[victim[0], victim[1]])  # type: ignore[index]
                self._map_host[victim[0], victim[1]] = -1  # type: ignore[index]
                self._dirty.add(victim[0])  # type: ignore[index]
                self.counters.evictions += 1
            self._copy(slot, src)
            self.key_of[slot] = key
            self._map_host[key[0], key[1]] = slot
            self._dirty.add(key[0])
            if prefetch:
                self.policy.insert(key)
                self.counters.prefetch_loads += 1
            else:
                self.policy.admit(key)
            self.counters.loads += 1
            return slot

    def slot_map(self, layer: int) -> torch.Tensor:
        """[E] int32 on the device: expert -> slot or -1. Orders the compute stream after pending copies."""
        with self._lock:
            if self._cuda:
                if layer in self._dirty:
                    self._map_dev[layer].copy_(self._map_host[layer])
                if self._last_copy is not None:
                    torch.cuda.current_stream(self.device).wait_event(self._last_copy)
            self._dirty.discard(layer)
            return self._map_dev[layer]

    def resident(self) -> list[Key]:
        with self._lock:
            return [k for k in self.key_of if k is not None]

    def _copy(self, slot: int, src: Int4Expert) -> None:
        if not self._cuda:
            for (pool_p, pool_s), (p, s) in zip(self.pools.values(), src, strict=True):
                pool_p[slot].copy_(p)
                pool_s[slot].copy_(s)
            return
        turn = self._turn
        self._turn ^= 1
        staged = self._staged[turn]
        if staged is not None:
            staged.synchronize()  # the buffer's previous copy has left it
        buf = self._staging[turn]
        for kind, (p, s) in zip(self.pools, src, strict=True):
            buf[kind][0].copy_(p)  # reads the mapping: page faults land here, on this thread
            buf[kind][1].copy_(s)
        with torch.cuda.stream(self._stream):
            # a slot being replaced may still be read by kernels queued on the compute stream
            self._stream.wait_stream(torch.cuda.default_stream(self.device))
            for kind, (pool_p, pool_s) in self.pools.items():
                pool_p[slot].copy_(buf[kind][0], non_blocking=True)
                pool_s[slot].copy_(buf[kind][1], non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        self._staged[turn] = event
        self._last_copy = event
