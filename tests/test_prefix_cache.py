"""Issue 17: finished sequences' caches are reused exactly, in RAM under a budget and on disk across restarts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from offload.engine.engine import Engine
from offload.engine.kv_disk import SUFFIX, KVDiskStore, model_identity
from offload.engine.prefix_cache import PrefixCache, common_prefix
from offload.engine.sampling import SamplingParams
from offload.planner.plan import RuntimeConfig
from tests.harness import SetAfter

GREEDY = SamplingParams(temperature=0)
PROMPT = [(11 * i + 5) % 700 for i in range(30)]


@pytest.fixture(scope="module")
def engines(tiny_k25):
    """Two float32 engines of the same model: one keeps caches, one never does (the reference)."""
    with (
        Engine(tiny_k25, RuntimeConfig(dtype="float32", context=512, prefill_chunk=7)) as cached,
        Engine(tiny_k25, RuntimeConfig(dtype="float32", context=512)) as fresh,
    ):
        cached.enable_prefix_cache(1 << 30)
        yield cached, fresh


def _run(engine: Engine, prompt: list[int], n: int = 6):
    return engine.generate(prompt, GREEDY, n, ignore_eos=True).run()


def test_a_prompt_extending_a_finished_sequence_prefills_only_the_rest(engines):
    cached, fresh = engines
    assert cached.prefix_cache is not None
    cached.prefix_cache.clear()
    first = _run(cached, PROMPT)
    assert first.cached_tokens == 0 and first.token_ids == _run(fresh, PROMPT).token_ids
    # the stored sequence is the prompt and the 5 generated tokens that were fed back (the 6th never was)
    follow = PROMPT + first.token_ids[:3] + [42, 43, 44, 45]  # the match ends mid-way through the cached tokens
    again = _run(cached, follow)
    assert again.cached_tokens == len(PROMPT) + 3
    assert again.token_ids == _run(fresh, follow).token_ids
    same = _run(cached, PROMPT)  # the whole prompt is cached: its last token is computed again, for the logits
    assert same.cached_tokens == len(PROMPT) - 1 and same.token_ids == first.token_ids
    stats = cached.prefix_cache.stats()
    assert stats.hits == 2 and stats.tokens_saved == len(PROMPT) + 3 + len(PROMPT) - 1


def test_reused_positions_give_the_logits_of_a_fresh_prefill(engines):
    cached, _ = engines
    model = cached.model
    ids = torch.tensor([*PROMPT, 1, 2, 3, 4, 5])
    whole = model.prefill(ids, model.new_cache(64), 7)
    for n in (1, 13, 29, 34):  # cached prefixes of several lengths, ending anywhere
        first = model.new_cache(64)
        model.prefill(ids[: n + 1], first, 5)  # an earlier sequence that covered positions 0 .. n
        latent, k_pe = first.prefix(n)
        reuse = model.new_cache(64)
        reuse.load(latent, k_pe)
        got = model.prefill(ids, reuse, 7, start=n)
        torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)
        assert reuse.filled == len(ids)


def test_reuse_after_a_cancelled_generation(engines):
    cached, fresh = engines
    assert cached.prefix_cache is not None
    cached.prefix_cache.clear()
    gen = cached.generate(PROMPT, GREEDY, 50, ignore_eos=True)
    for i, _ in enumerate(gen):
        if i == 2:
            gen.cancel()
    assert gen.result.finish_reason == "cancelled"
    kept = len(PROMPT) + len(gen.result.token_ids) - 1
    assert cached.prefix_cache.stats().entries == 1
    follow = PROMPT + gen.result.token_ids + [7, 8]
    again = _run(cached, follow)
    assert again.cached_tokens == kept and again.token_ids == _run(fresh, follow).token_ids


def test_a_prefill_cancelled_between_chunks_keeps_the_chunks_it_finished(engines):
    cached, fresh = engines
    assert cached.prefix_cache is not None
    cached.prefix_cache.clear()
    gen = cached.generate(PROMPT, GREEDY, 4)
    layers = cached.ckpt.config.num_hidden_layers
    # checks per 7-token chunk: one before each layer + one per attention block (one block each): cancel in chunk 3
    gen._cancel = SetAfter(2 * 2 * layers + 3)  # type: ignore[assignment]
    r = gen.run()
    assert r.finish_reason == "cancelled" and r.token_ids == []
    stats = cached.prefix_cache.stats()
    assert stats.entries == 1
    again = _run(cached, PROMPT)
    assert again.cached_tokens == 14  # two whole chunks of 7; the third was cut inside its layers
    assert again.token_ids == _run(fresh, PROMPT).token_ids


# ---- the RAM cache -------------------------------------------------------------------------------------------
def _seq(ids: list[int], layers: int = 2) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    n = len(ids)
    return ids, torch.full((layers, n, 4), float(n)), torch.zeros(layers, n, 2)


def _bytes(n: int, layers: int = 2) -> int:
    return layers * n * 6 * 4 + n * 8  # float32 latent + k_pe, int64 ids


def test_lru_budget_supersession_and_the_last_token_rule():
    cache = PrefixCache(budget_bytes=_bytes(10) + _bytes(8))
    assert cache.store(*_seq(list(range(10))))
    assert not cache.store(*_seq(list(range(6))))  # a prefix of a held entry: nothing new
    assert cache.store(*_seq([9] * 8))
    assert cache.stats().entries == 2 and cache.stats().bytes_held == _bytes(10) + _bytes(8)
    seq, n = cache.match(list(range(10)))
    assert n == 9 and len(seq) == 10  # never the whole prompt: its last token makes the logits
    assert cache.match([5, 5])[1] == 0
    assert cache.store(*_seq(list(range(12))))  # extends the first: replaces it; then the LRU rule evicts [9]*8
    s = cache.stats()
    assert s.entries == 1 and s.evicted == 1 and s.bytes_held == _bytes(12)
    assert cache.match([9] * 8 + [1])[1] == 0
    assert not cache.store(*_seq(list(range(100))))  # larger than the whole budget
    s = cache.stats()
    assert s.lookups == 3 and s.hits == 1 and s.tokens_saved == 9
    with pytest.raises(ValueError, match="budget_bytes"):
        PrefixCache(-1)


def test_common_prefix():
    a = np.array([1, 2, 3, 4])
    assert common_prefix(a, np.array([1, 2, 9])) == 2
    assert common_prefix(a, np.array([1, 2])) == 2
    assert common_prefix(a, np.array([], dtype=np.int64)) == 0
    assert common_prefix(a, a) == 4


# ---- on disk -------------------------------------------------------------------------------------------------
def _store(folder: Path, identity: str = "model-a", dtype=torch.float32, budget: int = 1 << 20) -> KVDiskStore:
    return KVDiskStore(folder, budget, identity, dtype)


def test_entries_survive_a_restart(tmp_path):
    disk = _store(tmp_path)
    ram = PrefixCache(1 << 20, disk)
    ram.store(*_seq(list(range(20))))
    disk.flush()
    files = list(tmp_path.glob(f"*{SUFFIX}"))
    assert len(files) == 1 and not list(tmp_path.glob(".*.tmp"))
    ram.close()
    again = PrefixCache(1 << 20, _store(tmp_path))  # a new process: nothing in RAM
    seq, n = again.match([*list(range(15)), 99])
    assert n == 15 and seq is not None and torch.equal(seq.latent, torch.full((2, 20, 4), 20.0))
    assert again.stats().disk_loads == 1 and again.stats().disk["entries"] == 1
    again.close()


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("identity", "identity differs"),
        ("dtype", "cache dtype is float32"),
        ("truncate", "unreadable"),
        ("flip", "CRC-32"),
        ("garbage", "unreadable"),
    ],
)
def test_foreign_stale_truncated_or_corrupt_entries_are_skipped(tmp_path, caplog, damage, words):
    disk = _store(tmp_path)
    PrefixCache(1 << 20, disk).store(*_seq(list(range(20))))
    disk.close()
    (path,) = tmp_path.glob(f"*{SUFFIX}")
    identity, dtype = "model-a", torch.float32
    if damage == "identity":
        identity = "model-b"
    elif damage == "dtype":
        dtype = torch.bfloat16
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF  # a byte of k_pe
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="offload.engine.kv_disk"):
        ram = PrefixCache(1 << 20, _store(tmp_path, identity, dtype))
        assert ram.match([*list(range(20)), 1]) == (None, 0)
    assert any(words in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records), caplog.text
    ram.close()


def test_a_crash_mid_write_leaves_nothing_that_loads(tmp_path):
    disk = _store(tmp_path)
    PrefixCache(1 << 20, disk).store(*_seq(list(range(20))))
    disk.close()
    (path,) = tmp_path.glob(f"*{SUFFIX}")
    partial = tmp_path / f".{path.name}.4242.tmp"  # what a write interrupted before its rename leaves
    partial.write_bytes(path.read_bytes()[:100])
    path.unlink()
    ram = PrefixCache(1 << 20, _store(tmp_path))
    assert ram.match(list(range(21))) == (None, 0) and ram.stats().disk["entries"] == 0
    ram.close()


def test_the_disk_budget_evicts_the_oldest(tmp_path):
    disk = _store(tmp_path)
    PrefixCache(1 << 20, disk).store(*_seq(list(range(20))))
    disk.flush()
    one = next(tmp_path.glob(f"*{SUFFIX}")).stat().st_size
    disk.close()
    for f in tmp_path.glob(f"*{SUFFIX}"):
        f.unlink()
    disk = _store(tmp_path, budget=int(one * 2.5))
    ram = PrefixCache(1 << 20, disk)
    for k in range(4):
        ram.store(*_seq([100 + k, *list(range(19))]))
        disk.flush()
    assert disk.stats()["entries"] == 2 and len(list(tmp_path.glob(f"*{SUFFIX}"))) == 2
    ram.clear()
    assert ram.match([103, *list(range(19))])[1] == 19 and ram.match([100, *list(range(19))])[1] == 0  # newest kept
    ram.close()


def test_identity_tells_weights_apart(tmp_path, tiny_dirs):
    from offload.checkpoint import open_checkpoint
    from tests.conftest import make

    a = tiny_dirs[("k2.5", "int4")]
    b = make(tmp_path, "tiny", "k2.5", "int4", seed=1)  # the same config, other weights
    with open_checkpoint(a) as ca, open_checkpoint(b) as cb:
        ia = model_identity(ca.config, [f.path for f in ca.files.values()])
        ib = model_identity(cb.config, [f.path for f in cb.files.values()])
        assert ca.config == cb.config and ia != ib
        assert ia == model_identity(ca.config, [f.path for f in ca.files.values()])
