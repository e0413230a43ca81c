"""SegmentedLRU (offload/experts/policy.py) against hand-worked sequences of inserts, admits, uses and evictions."""

from __future__ import annotations

import pytest

from offload.experts.policy import SegmentedLRU


def segments(p: SegmentedLRU) -> tuple[list[object], list[object]]:
    """(probation, protected), each least recent first."""
    return list(p.probation), list(p.protected)


def counters(p: SegmentedLRU) -> tuple[int, int, int]:
    return p.counters.hits, p.counters.misses, p.counters.evictions


def test_empty() -> None:
    p = SegmentedLRU()
    assert len(p) == 0
    assert 1 not in p
    assert list(p.order()) == []
    assert p.victim() is None
    assert p.evict() is None
    assert counters(p) == (0, 0, 0)


def test_insert_is_cached_but_unused_and_idempotent() -> None:
    p = SegmentedLRU()
    p.insert(1)
    p.insert(2)
    p.insert(1)  # already cached: nothing moves
    assert len(p) == 2
    assert 1 in p and 2 in p and 3 not in p
    assert p.uses == {1: 0, 2: 0}
    assert segments(p) == ([1, 2], [])
    assert counters(p) == (0, 0, 0)  # inserting is not a use


def test_use_of_absent_key_is_a_miss_and_does_not_insert() -> None:
    p = SegmentedLRU()
    assert p.use(7) is False
    assert p.use(7) is False
    assert 7 not in p
    assert len(p) == 0
    assert counters(p) == (0, 2, 0)


def test_inserted_key_needs_two_uses_to_be_protected() -> None:
    p = SegmentedLRU()
    p.insert(1)
    p.insert(2)
    assert p.use(1) is True  # first use: stays in probation, becomes most recent there
    assert p.uses[1] == 1
    assert segments(p) == ([2, 1], [])
    assert p.use(1) is True  # second use: promoted
    assert p.uses[1] == 2
    assert segments(p) == ([2], [1])
    assert counters(p) == (2, 0, 0)


def test_admitted_key_counts_its_first_use_so_one_more_use_protects_it() -> None:
    p = SegmentedLRU()
    assert p.use(1) is False  # the miss ...
    p.admit(1)  # ... then the key becomes cached, used once
    assert p.uses[1] == 1
    assert segments(p) == ([1], [])
    assert counters(p) == (0, 1, 0)  # admit itself counts no hit or miss
    assert p.use(1) is True
    assert segments(p) == ([], [1])
    assert counters(p) == (1, 1, 0)


def test_admit_of_prefetched_key_makes_it_most_recent_in_probation() -> None:
    p = SegmentedLRU()
    p.insert(1)
    p.insert(2)
    p.insert(3)
    p.admit(1)  # already inserted (uses 0): now uses 1 and most recent
    assert p.uses == {1: 1, 2: 0, 3: 0}
    assert segments(p) == ([2, 3, 1], [])
    assert len(p) == 3


def test_lru_order_within_probation() -> None:
    p = SegmentedLRU()
    for k in (1, 2, 3, 4):
        p.insert(k)
    p.use(2)
    p.use(1)
    assert segments(p) == ([3, 4, 2, 1], [])
    assert list(p.order()) == [3, 4, 2, 1]
    assert p.victim() == 3


def test_lru_order_within_protected() -> None:
    p = SegmentedLRU(protected_share=1.0)
    for k in (1, 2, 3):
        p.admit(k)
    p.use(1)
    p.use(2)
    p.use(3)
    assert segments(p) == ([], [1, 2, 3])
    p.use(1)  # a protected hit moves to the most recent end of protected
    assert segments(p) == ([], [2, 3, 1])
    assert p.uses == {1: 3, 2: 2, 3: 2}
    assert list(p.order()) == [2, 3, 1]


def test_probation_is_evicted_before_protected() -> None:
    p = SegmentedLRU(protected_share=1.0)
    p.admit(1)
    p.use(1)  # 1 protected
    p.insert(2)  # 2, 3 in probation, more recent than 1 overall
    p.insert(3)
    assert list(p.order()) == [2, 3, 1]
    assert p.evict() == 2
    assert p.evict() == 3
    assert p.evict() == 1
    assert p.evict() is None
    assert len(p) == 0
    assert counters(p) == (1, 0, 3)


def test_protected_share_demotes_least_recent_protected_key() -> None:
    # share 0.5 with 4 keys: protected holds at most int(0.5 * 4) = 2.
    p = SegmentedLRU(protected_share=0.5)
    for k in (1, 2, 3, 4):
        p.admit(k)
    assert segments(p) == ([1, 2, 3, 4], [])
    p.use(1)
    assert segments(p) == ([2, 3, 4], [1])
    p.use(2)
    assert segments(p) == ([3, 4], [1, 2])
    p.use(3)  # protected would be [1, 2, 3]: 1 (least recent) drops back to probation, as its most recent key
    assert segments(p) == ([4, 1], [2, 3])
    assert list(p.order()) == [4, 1, 2, 3]
    assert p.uses == {1: 2, 2: 2, 3: 2, 4: 1}
    # the demoted key keeps its use count: its next use promotes it at once, demoting 2 in turn
    p.use(1)
    assert segments(p) == ([4, 2], [3, 1])
    assert p.uses[1] == 3
    assert counters(p) == (4, 0, 0)


def test_protected_share_limit_counts_every_cached_key() -> None:
    # share 0.5 with 6 keys: protected holds int(0.5 * 6) = 3, so three promotions demote nothing.
    p = SegmentedLRU(protected_share=0.5)
    for k in range(6):
        p.admit(k)
    for k in (0, 1, 2):
        p.use(k)
    assert segments(p) == ([3, 4, 5], [0, 1, 2])
    p.use(3)
    assert segments(p) == ([4, 5, 0], [1, 2, 3])


def test_protected_share_zero_still_protects_one_key() -> None:
    # the limit is max(1, int(share * keys)): a promoted key is never demoted straight away
    p = SegmentedLRU(protected_share=0.0)
    p.admit(1)
    p.admit(2)
    p.use(1)
    assert segments(p) == ([2], [1])
    p.use(2)
    assert segments(p) == ([1], [2])


def test_victim_skips_kept_keys_and_does_not_remove() -> None:
    p = SegmentedLRU(protected_share=1.0)
    p.admit(1)
    p.use(1)  # protected
    p.insert(2)
    p.insert(3)
    assert list(p.order()) == [2, 3, 1]
    assert p.victim() == 2
    assert p.victim(lambda k: k == 2) == 3
    assert p.victim(lambda k: k in (2, 3)) == 1
    assert p.victim(lambda k: True) is None
    assert len(p) == 3  # victim() only names
    assert counters(p) == (1, 0, 0)


def test_evict_removes_counts_and_honours_keep() -> None:
    p = SegmentedLRU()
    for k in (1, 2, 3):
        p.insert(k)
    assert p.evict(lambda k: k == 1) == 2
    assert 2 not in p
    assert 2 not in p.uses
    assert segments(p) == ([1, 3], [])
    assert p.counters.evictions == 1
    assert p.evict(lambda k: True) is None  # nothing evictable: nothing removed, nothing counted
    assert len(p) == 2
    assert p.counters.evictions == 1
    assert p.evict() == 1
    assert p.counters.evictions == 2
    assert segments(p) == ([3], [])


def test_remove_from_either_segment_and_absent_key_is_noop() -> None:
    p = SegmentedLRU(protected_share=1.0)
    p.admit(1)
    p.use(1)  # protected
    p.insert(2)
    p.remove(99)  # absent: no error, no change
    assert segments(p) == ([2], [1])
    assert counters(p) == (1, 0, 0)
    p.remove(1)
    assert segments(p) == ([2], [])
    assert 1 not in p
    p.remove(2)
    assert segments(p) == ([], [])
    assert len(p) == 0
    assert p.counters.evictions == 0  # remove is not an eviction
    p.remove(2)  # removing twice is fine too
    # a removed key starts over: a miss, then used once after admit
    assert p.use(1) is False
    p.admit(1)
    assert p.uses[1] == 1
    assert segments(p) == ([1], [])


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_invalid_protected_share_raises(share: float) -> None:
    with pytest.raises(ValueError, match="protected_share"):
        SegmentedLRU(protected_share=share)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_protected_share_bounds_are_valid(share: float) -> None:
    assert SegmentedLRU(protected_share=share).protected_share == share


def test_admit_of_a_protected_key_keeps_it_protected():
    p = SegmentedLRU()
    p.admit(1)
    p.use(1)
    p.admit(1)
    assert list(p.protected) == [1] and not p.probation
