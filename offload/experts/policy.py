"""Which cached expert to give up: a segmented LRU (recency within two frequency classes), pure and O(1)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass


@dataclass(slots=True)
class PolicyCounters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class SegmentedLRU:
    """Keys used once sit in `probation`, keys used again in `protected`; both in LRU order.

    Victims come from probation first (a one-off, e.g. a wrong prediction, cannot push out an expert the router
    keeps choosing), then from protected. Protected holds at most `protected_share` of the keys; when it is full its
    least recent key drops back to probation (the share is checked on promotion, and at least one key may be
    protected). Counts of uses are kept per key (for frequency comparisons).
    """

    def __init__(self, protected_share: float = 0.8) -> None:
        if not 0.0 <= protected_share <= 1.0:
            raise ValueError(f"protected_share = {protected_share}; expected a fraction in [0, 1]")
        self.protected_share = protected_share
        self.probation: OrderedDict[Hashable, None] = OrderedDict()  # least recent first
        self.protected: OrderedDict[Hashable, None] = OrderedDict()
        self.uses: dict[Hashable, int] = {}
        self.counters = PolicyCounters()

    def __contains__(self, key: Hashable) -> bool:
        return key in self.uses

    def __len__(self) -> int:
        return len(self.uses)

    def insert(self, key: Hashable) -> None:
        """A key becomes cached without being used yet (a prefetch): least protected, most recent."""
        if key in self.uses:
            return
        self.uses[key] = 0
        self.probation[key] = None

    def use(self, key: Hashable) -> bool:
        """Record a use; True when the key was cached (a hit). A miss is not inserted: call insert() when cached."""
        if key not in self.uses:
            self.counters.misses += 1
            return False
        self.counters.hits += 1
        self.uses[key] += 1
        if key in self.protected:
            self.protected.move_to_end(key)
        elif self.uses[key] >= 2:
            del self.probation[key]
            self.protected[key] = None
            limit = int(self.protected_share * len(self.uses))
            while len(self.protected) > max(1, limit):
                demoted, _ = self.protected.popitem(last=False)
                self.probation[demoted] = None
        else:
            self.probation.move_to_end(key)
        return True

    def admit(self, key: Hashable) -> None:
        """A used key becomes cached (after a miss): inserted and counted as its first use."""
        self.insert(key)
        self.uses[key] = max(self.uses[key], 1)
        if key in self.probation:
            self.probation.move_to_end(key)

    def remove(self, key: Hashable) -> None:
        if key not in self.uses:
            return
        del self.uses[key]
        self.probation.pop(key, None)
        self.protected.pop(key, None)

    def order(self) -> Iterator[Hashable]:
        """Keys from the first to give up to the last."""
        yield from self.probation
        yield from self.protected

    def victim(self, keep: Callable[[Hashable], bool] = lambda key: False) -> Hashable | None:
        """The key to evict next, skipping those `keep` protects (pinned, in flight); None when every key is kept."""
        for key in self.order():
            if not keep(key):
                return key
        return None

    def evict(self, keep: Callable[[Hashable], bool] = lambda key: False) -> Hashable | None:
        """Remove and return victim(keep)."""
        key = self.victim(keep)
        if key is not None:
            self.remove(key)
            self.counters.evictions += 1
        return key
