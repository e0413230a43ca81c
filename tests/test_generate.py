"""The generate loop: stop conditions and streaming (scripted model), and greedy tokens against transformers."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
import torch

from offload.engine.engine import Engine
from offload.planner.plan import RuntimeConfig
from offload.engine.generate import Generation, StopConditions
from offload.engine.sampling import SamplingParams
from offload.engine.tokenizer import Tokenizer
from offload.model.transformer import Cancelled

GREEDY = SamplingParams(temperature=0)


@dataclass
class _Cfg:
    max_position_embeddings: int = 64


class Scripted:
    """A stand-in model whose next token is read from a script, whatever the input."""

    def __init__(self, script: list[int], vocab: int) -> None:
        self.cfg = _Cfg()
        self.script = script
        self.vocab = vocab
        self.calls: list[tuple[list[int], int]] = []

    def new_cache(self, max_tokens: int) -> int:
        return max_tokens

    def forward(self, ids: torch.Tensor, start: int, cache: int, last_only: bool = False, stop=None) -> torch.Tensor:
        assert start + len(ids) <= cache  # the loop sized the cache for prompt + max new tokens
        self.calls.append((ids.tolist(), start))
        logits = torch.zeros(1, self.vocab)
        logits[0, self.script[len(self.calls) - 1]] = 1.0
        return logits

    def prefill(self, ids: torch.Tensor, cache: int, chunk: int, stop=None, start: int = 0) -> torch.Tensor:
        return self.forward(ids, 0, cache, last_only=True, stop=stop)


@pytest.fixture(scope="module")
def tok(tiny_k25) -> Tokenizer:
    return Tokenizer.from_dir(tiny_k25)


def run(tok: Tokenizer, text_or_ids: str | list[int], stop: StopConditions, prompt=(5, 6, 7)):
    script = tok.encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
    model = Scripted([*script, *[0] * 64], tok.vocab_size)
    gen = Generation(model, tok, list(prompt), GREEDY, stop)  # type: ignore[arg-type]
    pieces = list(gen)
    return gen.result, pieces, model


def test_positions_and_cache_use(tok):
    r, _, model = run(tok, "abc def", StopConditions(max_tokens=4))
    assert model.calls[0] == ([5, 6, 7], 0)  # one prefill of the prompt
    assert [start for _, start in model.calls[1:]] == [3, 4, 5]  # then one token per step, at the next position
    assert [ids for ids, _ in model.calls[1:]] == [[t] for t in r.token_ids[:3]]
    assert len(r.token_ids) == 4 and r.finish_reason == "length"


def test_stop_token_ends_and_is_not_text(tok):
    im_end = tok.special_id("<|im_end|>")
    ids = [*tok.encode("Hello there"), im_end, *tok.encode(" never")]
    r, pieces, _ = run(tok, ids, StopConditions(max_tokens=50, stop_ids=tok.stop_ids))
    assert r.finish_reason == "stop" and r.token_ids[-1] == im_end
    assert r.text == "Hello there" == "".join(pieces)


def test_stop_string_truncates_and_is_never_streamed(tok):
    r, pieces, _ = run(tok, "The answer is 42. END more text", StopConditions(max_tokens=50, stop_strings=("END",)))
    assert r.finish_reason == "stop" and r.text == "The answer is 42. "
    assert "".join(pieces) == r.text and not any("E" in p for p in pieces)


def test_partial_stop_string_is_released_when_it_does_not_complete(tok):
    text = "one EN two ENDLESS"
    r, pieces, _ = run(tok, text, StopConditions(max_tokens=len(tok.encode(text)), stop_strings=("ENDX",)))
    assert r.finish_reason == "length" and r.text == text == "".join(pieces)


def test_multibyte_text_streams_whole_characters(tok):
    text = "héllo wörld 你好 🙂"
    ids = []
    for ch in text:  # force tokens that cut characters: one byte per token where the tiny BPE allows
        ids += tok.encode(ch)
    r, pieces, _ = run(tok, ids, StopConditions(max_tokens=len(ids)))
    assert r.text == text == "".join(pieces)
    assert all("\ufffd" not in p for p in pieces)


def test_max_tokens_is_capped_by_the_context(tok):
    model = Scripted([1] * 100, tok.vocab_size)
    r = Generation(model, tok, list(range(60)), GREEDY, StopConditions(max_tokens=50)).run()  # type: ignore[arg-type]
    assert len(r.token_ids) == 4  # 64 positions - 60 prompt tokens


def test_bad_requests(tok):
    model = Scripted([1], tok.vocab_size)
    with pytest.raises(ValueError, match="prompt is empty"):
        Generation(model, tok, [], GREEDY, StopConditions())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="context holds 64"):
        Generation(model, tok, list(range(64)), GREEDY, StopConditions())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tokens"):
        StopConditions(max_tokens=0)


# ---- the real model -----------------------------------------------------------------------------------------------
def test_greedy_tokens_match_transformers(tiny_dirs):
    transformers = pytest.importorskip("transformers")
    folder = tiny_dirs[("deepseek-v3", "bf16")]
    prompt = [11, 250, 3, 77, 5, 190]
    with Engine(folder, RuntimeConfig(dtype="float32")) as engine:
        r = engine.generate(prompt, GREEDY, max_tokens=16).run()
    ref = transformers.DeepseekV3ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(len(r.token_ids)):  # no cache: every step recomputes the whole sequence
            seq.append(int(ref(torch.tensor([seq])).logits[0, -1].argmax()))
    assert r.token_ids == seq[len(prompt) :]
    assert r.prompt_tokens == len(prompt) and r.prefill_tok_s > 0 and r.decode_tok_s > 0


def test_seeded_sampling_reproduces_through_the_engine(tiny_k25):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=5)
    with Engine(tiny_k25) as engine:
        a = engine.generate([1, 2, 3], params, max_tokens=8).run().token_ids
        b = engine.generate([1, 2, 3], params, max_tokens=8).run().token_ids
    assert a == b


def test_a_generation_runs_once(tok):
    model = Scripted([1] * 10, tok.vocab_size)
    gen = Generation(model, tok, [5], GREEDY, StopConditions(max_tokens=3))  # type: ignore[arg-type]
    first = gen.run().token_ids
    with pytest.raises(RuntimeError, match="runs once"):
        gen.run()
    assert gen.result.token_ids == first == [1, 1, 1]


def test_ids_past_the_tokenizer_are_never_sampled(tok):
    model = Scripted([tok.vocab_size + 3] * 4, tok.vocab_size + 8)  # a padded embedding favours an id with no text
    gen = Generation(model, tok, [5], GREEDY, StopConditions(max_tokens=2), vocab_limit=tok.vocab_size)  # type: ignore[arg-type]
    assert all(t < tok.vocab_size for t in gen.run().token_ids)


def test_stop_strings_must_be_a_sequence(tiny_k25):
    with pytest.raises(ValueError, match="stop_strings"):
        StopConditions(stop_strings="END")  # type: ignore[arg-type]
    with Engine(tiny_k25) as engine, pytest.raises(ValueError, match="sequence of strings"):
        engine.generate([1, 2], GREEDY, stop_strings="END")


def test_cancel_stops_after_the_current_token(tok):
    model = Scripted([1] * 50, tok.vocab_size)
    gen = Generation(model, tok, [5], GREEDY, StopConditions(max_tokens=40))  # type: ignore[arg-type]
    for n, _ in enumerate(gen):
        if n == 2:
            gen.cancel()
    assert gen.result.finish_reason == "cancelled" and len(gen.result.token_ids) == 3  # no token after the third


def test_chat_turn_streams_reasoning_then_content(tiny_k25):
    with Engine(tiny_k25, RuntimeConfig(dtype="float32")) as engine:
        turn = engine.chat([{"role": "user", "content": "Hi"}], thinking=True, sampling=GREEDY, max_tokens=6)
        with pytest.raises(RuntimeError, match="not finished"):
            _ = turn.output
        pieces = list(turn)
        out = turn.output
        assert "".join(r for r, _ in pieces) == out.reasoning and "".join(c for _, c in pieces) == out.content
        assert turn.result.prompt_tokens == len(turn.prompt_ids)
        # the same reply through the plain generate path
        same = engine.generate(turn.prompt_ids, GREEDY, max_tokens=6).run()
        assert same.token_ids == turn.result.token_ids


def test_stop_strings_never_match_inside_special_tokens(tok):
    think_end = tok.special_id("</think>")
    ids = [*tok.encode("thinking"), think_end, *tok.encode(" the end. more")]
    r, pieces, _ = run(tok, ids, StopConditions(max_tokens=len(ids), stop_strings=("think>", "end")))
    assert r.finish_reason == "stop" and r.text == "thinking</think> the "  # "think>" in </think> was not a stop
    assert "".join(pieces) == r.text


def test_cancel_during_prefill_stops_between_layers(tiny_k25):
    with Engine(tiny_k25, RuntimeConfig(dtype="float32")) as engine:
        gen = engine.generate(list(range(1, 40)), GREEDY, max_tokens=5)
        gen.cancel()  # as a server does when the client leaves while the prompt is being read
        r = gen.run()
        assert r.finish_reason == "cancelled" and r.token_ids == [] and r.text == ""
        assert r.prefill_tok_s == 0.0  # the prompt was not read: no rate
        model, cache = engine.model, engine.model.new_cache(4)
        stop = threading.Event()
        stop.set()
        with pytest.raises(Cancelled, match="before layer 0"):
            model.forward(torch.tensor([1, 2, 3]), 0, cache, stop=stop)
