"""The RAM tier of the routed experts: they stay mapped in the shards, and a byte budget bounds how many are resident.

An expert is resident once its pages have been read into the page cache (by the compute path on a miss, or by the
prefetcher ahead of time). Past the budget, the least valuable resident experts (segmented LRU; never one in use or
on its way in) have their pages released: unmapped here and dropped from the page cache. Accounting is in stored
bytes, ranges rounded to pages the way release rounds them, and is checked against mincore in the tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from offload.checkpoint import Checkpoint, MappedFile, pages
from offload.errors import OffloadError
from offload.experts.policy import SegmentedLRU

log = logging.getLogger(__name__)
Key = tuple[int, int]  # (layer, expert)


@dataclass(slots=True)
class StoreCounters:
    """What the store did; times are wall seconds of the thread that did the work."""

    ram: int = 0  # expert uses served from RAM (accounted resident, or found whole in the page cache)
    disk: int = 0  # expert uses that waited for the disk (a read on the compute path, or a prefetch in flight)
    disk_bytes: int = 0  # bytes the compute path read from disk
    disk_s: float = 0.0  # compute-path time spent reading or waiting for a prefetch in flight
    prefetched: int = 0  # experts read ahead by the prefetcher
    prefetch_bytes: int = 0
    prefetch_s: float = 0.0
    prefetch_used: int = 0  # prefetched experts later used while still resident
    prefetch_skipped: int = 0  # predictions dropped because the budget was full of experts in use or in flight
    released: int = 0
    released_bytes: int = 0
    peak_bytes: int = 0  # most bytes accounted resident at once
    held: int = 0  # experts a routing profile named, read in at load time and never given up (hold)
    held_bytes: int = 0  # bytes those reads brought from disk


@dataclass(frozen=True, slots=True)
class Span:
    shard: MappedFile
    start: int
    end: int


class BudgetError(OffloadError):
    """The RAM budget cannot hold what one step needs."""


class ExpertStore:
    """Resident routed experts under a byte budget (None: unbounded, nothing is released)."""

    def __init__(self, ckpt: Checkpoint, budget: int | None) -> None:
        self.ckpt = ckpt
        cfg = ckpt.config
        self._spans: dict[Key, tuple[Span, ...]] = {}
        # the largest layer's expert: a layer's experts share their tensors' types (GGUF files mix types by layer)
        self.expert_bytes = max((self._size((layer, 0)) for layer in cfg.moe_layers), default=0)
        if budget is not None and budget < self.expert_bytes:
            raise BudgetError(
                f"a RAM budget of {budget:,} bytes cannot hold one routed expert ({self.expert_bytes:,} bytes); "
                f"give --ram-budget at least {self.expert_bytes / 1e9:.4f} GB"
            )
        if budget is not None and not pages.SUPPORTED:
            log.warning("this OS has no mincore/MADV_DONTNEED: the RAM budget is accounted but pages are not released")
        self.regions: list[Span] = []  # runs of routed-expert bytes, per shard
        if budget is not None:
            self.regions = [Span(ckpt.file(r.path), r.start, r.end) for r in ckpt.expert_regions()]
            if pages.SUPPORTED:
                for shard in ckpt.files.values():  # reads bring in what was asked, no readahead past it (uncounted)
                    pages.no_readahead(shard)
                for r in self.regions:
                    pages.advise_random(r.shard, r.start, r.end)
        self.budget = budget
        self.policy = SegmentedLRU()
        self.counters = StoreCounters()
        self.resident_bytes = 0  # accounted: resident experts and those on their way in
        self._loading: dict[Key, threading.Event] = {}
        self._pinned: Counter[Key] = Counter()
        self._held: set[Key] = set()  # a profile's hottest: never victims
        self._fresh: set[Key] = set()  # prefetched and not used yet
        self._lock = threading.Lock()
        self._finished = threading.Condition(self._lock)  # notified when a read ends
        self._demand_reads = 0  # compute-path reads in progress; the prefetcher waits for none

    # ---- sizes --------------------------------------------------------------------------------------------------
    def spans(self, key: Key) -> tuple[Span, ...]:
        found = self._spans.get(key)
        if found is None:
            found = self._spans[key] = tuple(
                Span(self.ckpt.file(r.path), r.start, r.end) for r in self.ckpt.expert_ranges(*key)
            )
        return found

    def _size(self, key: Key) -> int:
        return sum(s.end - s.start for s in self.spans(key))

    @property
    def capacity(self) -> int | None:
        """Most experts one step may hold at once (None: unbounded): the budget's, less the held ones."""
        return None if self.budget is None else self.budget // self.expert_bytes - len(self._held)

    # ---- the compute path ----------------------------------------------------------------------------------------
    def acquire(self, keys: Sequence[Key]) -> list[str]:
        """Make `keys` resident and pin them until release(keys); returns each one's source, "ram" or "disk".
        Blocks on disk reads: the missing experts' reads are all requested at once (a deep disk queue), then
        awaited; experts the prefetcher is reading are waited for. len(keys) must be at most `capacity`. On an
        error, nothing stays pinned."""
        if self.capacity is not None and len(keys) > self.capacity:
            raise BudgetError(f"{len(keys)} experts at once exceed the RAM budget's {self.capacity}")
        plan: list[tuple[Key, str, threading.Event | None]] = []  # (key, "ram" | "mine" | "wait", read event)
        with self._lock:
            try:
                for key in keys:
                    self._pinned[key] += 1
                    waiting = self._loading.get(key)
                    if waiting is None and key in self._fresh:  # prefetched: its readahead may be in flight
                        plan.append((key, "fresh", None))
                    elif waiting is None and key in self.policy:
                        self._use(key)
                        self.counters.ram += 1
                        plan.append((key, "ram", None))
                    elif waiting is None:
                        plan.append((key, "reserving", None))
                        self._reserve(key, for_compute=True, own={k for k, kind, _ in plan if kind == "mine"})
                        plan[-1] = (key, "mine", self._loading.setdefault(key, threading.Event()))
                    else:
                        plan.append((key, "wait", waiting))
            except BaseException:
                for key, kind, _ in plan:
                    self._unpin(key)
                    if kind == "mine":
                        del self._loading[key]
                        self.resident_bytes -= self._size(key)
                raise
            if all(kind == "ram" for _, kind, _ in plan):  # every one resident (a warm decode token): done
                return ["ram"] * len(plan)
            mine = [(key, event) for key, kind, event in plan if kind == "mine" and event is not None]
            fresh = [key for key, kind, _ in plan if kind == "fresh"]
            if mine or fresh:
                self._demand_reads += 1
        read: dict[Key, int] = {}
        t0 = time.perf_counter()
        try:
            if mine or fresh:
                gaps = {key: self._gaps(key) for key in [*fresh, *(k for k, _ in mine)]}
                for spans in gaps.values():
                    for s, _ in spans:
                        pages.willneed(s.shard, s.start, s.end)
                for key in fresh:  # reading waits for the readahead in flight, and fetches what it missed
                    for s, _ in gaps[key]:
                        pages.read(s.shard, s.start, s.end, advise=False)
                    read[key] = sum(n for _, n in gaps[key])
                for key, event in mine:
                    for s, _ in gaps[key]:
                        pages.read(s.shard, s.start, s.end, advise=False)
                    read[key] = sum(n for _, n in gaps[key])
                    self._finish(key, event)
            for _, kind, pending in plan:
                if kind == "wait" and pending is not None:
                    pending.wait()
        except BaseException:
            with self._lock:
                for key, _kind, _ in plan:
                    self._unpin(key)
            for key, event in mine:
                if key not in read:
                    self._finish(key, event, failed=True)
            raise
        finally:
            if mine or fresh:
                with self._lock:
                    self._demand_reads -= 1
                    self._finished.notify_all()
        waited = time.perf_counter() - t0
        sources: list[str] = []
        retry: list[Key] = []
        with self._lock:
            for key, kind, _ in plan:
                if kind == "ram":
                    sources.append("ram")
                elif key not in self.policy:  # the prefetch it waited for failed: read it below
                    self._unpin(key)
                    retry.append(key)
                    sources.append("")
                else:
                    self._use(key)
                    if kind in ("mine", "fresh") and read[key] == 0:
                        self.counters.ram += 1  # it was whole in the page cache: no disk involved
                        sources.append("ram")
                    else:
                        self.counters.disk += 1
                        self.counters.disk_bytes += read.get(key, 0)
                        sources.append("disk")
            if len(sources) > len(retry) and any(src == "disk" for src in sources):
                self.counters.disk_s += waited
        for key in retry:
            sources[sources.index("")] = self.acquire([key])[0]
        return sources

    def _gaps(self, key: Key) -> list[tuple[Span, int]]:
        """The spans of `key` not wholly in the page cache, with the bytes missing from each (mincore)."""
        out = []
        for s in self.spans(key):
            try:
                have, total = pages.resident_pages(s.shard, s.start, s.end)
            except OSError:
                have, total = 0, 1
            if have < total:
                out.append((s, min((total - have) * pages.PAGE, s.end - s.start)))
        return out

    def release(self, keys: Sequence[Key]) -> None:
        """Unpin keys acquired together."""
        with self._lock:
            for key in keys:
                self._unpin(key)

    # ---- the prefetcher ------------------------------------------------------------------------------------------
    def prefetch(self, key: Key, wait: bool = False) -> bool:
        """Bring `key` into RAM ahead of use if the budget has room without evicting anything in use, in flight or
        itself prefetched and unused. wait=False only asks the kernel to start reading (readahead; returns at once,
        costs no CPU copy); wait=True reads it here, after any compute-path reads in progress. True when bytes were
        missing."""
        with self._lock:
            if wait:
                self._finished.wait_for(lambda: self._demand_reads == 0)  # the compute path's reads go first
            if key in self.policy or key in self._loading:
                return False
            if not self._reserve(key, for_compute=False):
                self.counters.prefetch_skipped += 1
                return False
            event = self._loading[key] = threading.Event()
        t0 = time.perf_counter()
        try:
            gaps = self._gaps(key)
            for span, _ in gaps:
                if wait:
                    pages.read(span.shard, span.start, span.end)
                else:
                    pages.willneed(span.shard, span.start, span.end)
        except BaseException:
            self._finish(key, event, failed=True)
            raise
        self._finish(key, event, fresh=True)
        read = sum(n for _, n in gaps)
        with self._lock:
            self.counters.prefetched += 1
            self.counters.prefetch_bytes += read
            self.counters.prefetch_s += time.perf_counter() - t0
        return read > 0

    def hold(self, keys: Sequence[Key], share: float = 0.5) -> int:
        """Keep the first of `keys` (a routing profile's hottest, most picked first) resident for good: read them
        now, in file order (near-sequential reads at the disk's pace instead of faults in the middle of a token),
        and never give them up for others. At most `share` of the budget is held, and never so much that the rest
        holds less than one layer's routed experts: the rest stays the working set the policy manages. Unbounded,
        nothing is released anyway and nothing is held. Returns how many."""
        if not 0.0 <= share < 1.0:
            raise ValueError(f"share = {share}; hold a fraction of the budget in [0, 1)")
        if self.budget is None:
            return 0
        total = self.budget // self.expert_bytes
        # what is not held must still take one layer's every expert at once (a prefill chunk can route to all of
        # them): measured, holding half of a 481-expert budget (384 experts a layer) cost 7% of prefill
        room = min(int(share * total), total - self.ckpt.config.n_routed_experts) - len(self._held)
        chosen = [k for k in dict.fromkeys(keys) if k not in self._held][: max(0, room)]
        chosen.sort(key=lambda k: [(str(s.shard.path), s.start) for s in self.spans(k)])
        held = 0
        for key in chosen:
            with self._lock:
                if key in self.policy or key in self._loading:
                    self._held.add(key)
                    held += 1
                    continue
                if not self._reserve(key, for_compute=False):
                    break
                event = self._loading[key] = threading.Event()
            try:
                gaps = self._gaps(key)
                for span, _ in gaps:
                    pages.read(span.shard, span.start, span.end)
            except BaseException:
                self._finish(key, event, failed=True)
                raise
            self._finish(key, event)
            with self._lock:
                self._held.add(key)
                self.counters.held_bytes += sum(n for _, n in gaps)
            held += 1
        with self._lock:
            self.counters.held += held
        return held

    def held(self) -> frozenset[Key]:
        with self._lock:
            return frozenset(self._held)

    def trim(self) -> int:
        """Release the pages of every routed expert the store does not count as resident (read-around from faults
        on the dense weights next to them brings such pages in). Returns the bytes released."""
        if self.budget is None or not pages.SUPPORTED:
            return 0
        with self._lock:
            keep: dict[int, list[tuple[int, int]]] = {}
            held: list[Key] = [*self.policy.order(), *self._loading]  # type: ignore[list-item]
            for key in held:
                for s in self.spans(key):
                    keep.setdefault(id(s.shard), []).append(pages.pages_out(s.start, s.end))
            released = 0
            for r in self.regions:
                at = r.start
                for lo, hi in sorted(keep.get(id(r.shard), [])):
                    if hi <= r.start or lo >= r.end:
                        continue
                    if lo > at:
                        released += pages.release(r.shard, at, lo)
                    at = max(at, hi)
                if at < r.end:
                    released += pages.release(r.shard, at, r.end)
            self.counters.released_bytes += released
            return released

    def resident(self, key: Key) -> bool:
        with self._lock:
            return key in self.policy

    # ---- internals (callers hold the lock unless said otherwise) ------------------------------------------------
    def _use(self, key: Key) -> None:
        if key in self._fresh:
            self._fresh.discard(key)
            self.counters.prefetch_used += 1
        if not self.policy.use(key):
            self.policy.admit(key)

    def _unpin(self, key: Key) -> None:
        self._pinned[key] -= 1
        if self._pinned[key] <= 0:
            del self._pinned[key]

    def _reserve(self, key: Key, for_compute: bool, own: set[Key] | None = None) -> bool:
        """Account `key`'s bytes, evicting victims first to stay within the budget. The compute path may evict
        prefetched experts not yet used; the prefetcher may not. False when it cannot make room."""
        size = self._size(key)
        if self.budget is not None:

            def keep(k: object) -> bool:
                return (
                    k in self._pinned or k in self._loading or k in self._held or (not for_compute and k in self._fresh)
                )

            while self.resident_bytes + size > self.budget:
                victim = self.policy.evict(keep)
                if victim is None:
                    if not for_compute:
                        return False
                    if any(k not in (own or ()) for k in self._loading):  # prefetches in flight hold the room:
                        # once read, they can be evicted (this call's own reads have not started: not those)
                        self._finished.wait()
                        continue
                    raise BudgetError(
                        f"the RAM budget ({self.budget:,} bytes) is full of experts in use or being read; "
                        f"raise --ram-budget"
                    )
                self._evict(victim)  # type: ignore[arg-type]
        self.resident_bytes += size
        self.counters.peak_bytes = max(self.counters.peak_bytes, self.resident_bytes)
        return True

    def _evict(self, key: Key) -> None:
        """Drop an expert the policy gave up: its accounting, then its pages."""
        self._fresh.discard(key)
        self.resident_bytes -= self._size(key)
        released = sum(pages.release(s.shard, s.start, s.end) for s in self.spans(key))
        self.counters.released += 1
        self.counters.released_bytes += released

    def _finish(self, key: Key, event: threading.Event, fresh: bool = False, failed: bool = False) -> None:
        """A read is over: the expert becomes resident (or, when the read failed, its bytes are unaccounted)."""
        with self._lock:
            del self._loading[key]
            if failed:
                self.resident_bytes -= self._size(key)
            else:
                self.policy.insert(key)
                if fresh:
                    self._fresh.add(key)
            self._finished.notify_all()
        event.set()
