"""Prefill in chunks through the layers and in blocks of query rows within attention: the same numbers as one pass,
scores bounded whatever the prompt's length, and a cancel seen inside a layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from offload.checkpoint import open_checkpoint
from offload.experts.dequantized import DequantizedExperts
from offload.model import attention
from offload.model.attention import EXPAND_BYTES, MAX_QUERY_ROWS, SCORES_BYTES, head_group, query_rows
from offload.model.cancel import Cancelled
from offload.model.loader import load_transformer
from tests.harness import SetAfter


def test_query_rows_by_hand():
    assert (SCORES_BYTES, MAX_QUERY_ROWS) == (256 << 20, 256)
    assert query_rows(4, 8190) == 256  # 2**28 // (4 * 4 * 8190) = 2048 rows fit; capped at 256
    assert query_rows(64, 131072) == 16  # 2**28 // (4 * 64 * 131072) = 8; never below 16
    assert query_rows(64, 16384) == 64  # 2**28 // (4 * 64 * 16384) = 64 exactly
    assert query_rows(64, 10000) == 96  # 2**28 // 2,560,000 = 104, down to a multiple of 16
    assert query_rows(1, 0) == 256


def test_head_group_by_hand():
    assert EXPAND_BYTES == 256 << 20
    # K2.5 in bf16: (2 * 128 + 128 + 64) * 2 = 896 bytes a key and head
    assert head_group(64, 32768, 896) == 9  # 2**28 // (32768 * 896) = 9.14: 9 heads a group (1.9 GB at once)
    assert head_group(64, 131072, 896) == 2  # 2**28 // 117,440,512 = 2.29
    assert head_group(64, 4096, 896) == 64  # 73 fit: every head at once
    assert head_group(64, 1 << 20, 896) == 1  # never fewer than one head
    assert head_group(4, 0, 896) == 4


@pytest.fixture(scope="module")
def model(tiny_k25):
    with open_checkpoint(tiny_k25) as ckpt:
        yield load_transformer(ckpt, DequantizedExperts(ckpt, torch.float32), torch.float32)


def _reference_attention(mla, q_nope, q_pe, latent, k_pe, start):
    """Plain causal attention over the expanded keys, every score at once (the definition)."""
    T, S = q_nope.shape[0], latent.shape[0]
    kv = F.linear(latent, mla.w.kv_b).view(S, mla.heads, mla.nope + mla.v_dim)
    k = torch.cat((kv[..., : mla.nope], k_pe[:, None, :].expand(S, mla.heads, mla.rope_dim)), dim=-1)
    v = kv[..., mla.nope :]
    q = torch.cat((q_nope, q_pe), dim=-1)
    scores = torch.einsum("thd,shd->hts", q, k) * mla.scale
    allowed = torch.arange(S)[None, :] <= (start + torch.arange(T))[:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hts,shv->thv", scores.softmax(-1), v)


@pytest.mark.parametrize(
    ("T", "start", "rows", "group"), [(37, 0, 16, 99), (33, 5, 16, 1), (8, 11, 16, 3), (40, 0, 256, 2), (40, 0, 16, 3)]
)
def test_blocked_attention_equals_one_block(model, monkeypatch, T, start, rows, group):
    """Blocks of query rows and groups of heads (1, a group that does not divide the heads, all): the definition."""
    monkeypatch.setattr(attention, "query_rows", lambda heads, keys: rows)
    monkeypatch.setattr(attention, "head_group", lambda heads, keys, per_head: min(heads, group))
    mla = model.blocks[0].attn
    g = torch.Generator().manual_seed(T + start)
    S = start + T
    q_nope = torch.randn(T, mla.heads, mla.nope, generator=g)
    q_pe = torch.randn(T, mla.heads, mla.rope_dim, generator=g)
    latent = torch.randn(S, mla.rank, generator=g)
    k_pe = torch.randn(S, mla.rope_dim, generator=g)
    got = mla._expanded(q_nope, q_pe, latent, k_pe, start)
    want = _reference_attention(mla, q_nope, q_pe, latent, k_pe, start)
    assert got.shape == (T, mla.heads, mla.v_dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 7, 19, 4096])
def test_chunked_prefill_gives_the_one_pass_logits(model, monkeypatch, chunk):
    monkeypatch.setattr(attention, "query_rows", lambda heads, keys: 16)  # many blocks per chunk as well
    ids = torch.tensor([(7 * i + 3) % 200 for i in range(19)])
    whole = model.forward(ids, 0, model.new_cache(20), last_only=True)
    cache = model.new_cache(20)
    got = model.prefill(ids, cache, chunk)
    torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)
    # the cache holds every prompt position: the next step from it gives the one-pass cache's logits
    nxt = torch.tensor([int(whole[0].argmax())])
    ref_cache = model.new_cache(20)
    model.forward(ids, 0, ref_cache)
    torch.testing.assert_close(model.forward(nxt, 19, cache), model.forward(nxt, 19, ref_cache), rtol=1e-5, atol=1e-5)


def test_prefill_refuses_an_empty_chunk(model):
    with pytest.raises(ValueError, match="chunk = 0"):
        model.prefill(torch.tensor([1, 2]), model.new_cache(2), 0)


def test_a_cancel_is_seen_between_attention_blocks(model, monkeypatch):
    monkeypatch.setattr(attention, "query_rows", lambda heads, keys: 16)
    ids = torch.arange(64) % 200
    stop = SetAfter(3)  # check 1: before layer 0; checks 2, 3: before layer 0's first and second block
    with pytest.raises(Cancelled, match=r"layer 0's attention heads 0\.\.\d+, rows 16\.\.63"):
        model.prefill(ids, model.new_cache(64), 4096, stop=stop)
    assert stop.checks == 3


def test_a_small_expand_budget_groups_heads_with_the_same_logits(model, monkeypatch):
    """Through the real head_group: a budget of one head's keys makes every head its own group."""
    ids = torch.tensor([(11 * i + 2) % 200 for i in range(21)])
    whole = model.forward(ids, 0, model.new_cache(21), last_only=True)
    mla = model.blocks[0].attn
    assert mla.heads > 1
    seen: list[int] = []
    real = attention.head_group

    def one_head(heads, keys, per_head):
        seen.append(real(heads, keys, per_head))
        return seen[-1]

    monkeypatch.setattr(attention, "EXPAND_BYTES", 21 * (2 * mla.nope + mla.v_dim + mla.rope_dim) * 4)
    monkeypatch.setattr(attention, "head_group", one_head)
    got = model.forward(ids, 0, model.new_cache(21), last_only=True)
    assert seen and set(seen) == {1}
    torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)


def test_generation_prefills_in_the_runtime_chunks(tiny_k25):
    from offload.engine.engine import Engine
    from offload.engine.sampling import SamplingParams
    from offload.planner.plan import RuntimeConfig

    prompt = [(5 * i + 1) % 200 for i in range(23)]
    runs = {}
    for chunk in (4096, 5):
        with Engine(tiny_k25, RuntimeConfig(dtype="float32", prefill_chunk=chunk)) as engine:
            assert engine.prefill_chunk == chunk
            passes: list[int] = []  # tokens of each pass through the layers
            engine.model._layers = _counting(engine.model._layers, passes)  # type: ignore[method-assign]
            runs[chunk] = engine.generate(prompt, SamplingParams(temperature=0), max_tokens=6).run().token_ids
            assert passes == ([23] if chunk == 4096 else [5, 5, 5, 5, 3]) + [1] * 5
    assert runs[5] == runs[4096]


def _counting(layers, passes):
    def spy(ids, *args):
        passes.append(len(ids))
        return layers(ids, *args)

    return spy
