"""Tokenizer: Kimi's tiktoken files and an equivalent HF tokenizer.json give the same ids, round-trip any text, keep
user-typed special text plain, and stream without ever emitting a broken character."""

from __future__ import annotations

import json
import random
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
import regex
import tiktoken

from offload.hf_config import HfConfig
from offload.engine.detokenize import byte_level_alphabet
from offload.engine.tokenizer import KIMI_PATTERN, Tokenizer, TokenizerError
from offload.synth.tokenizer import SPECIAL_OFFSETS, corpus_text, special_tokens

SPLIT = regex.compile(KIMI_PATTERN, regex.V1)  # the `regex` module needs V1 for the pattern's `&&`

TEXTS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café résumé Ångström Straße ÉCOLE",
    "中文分词测试，汉字与English混排。日本語のテキストとカタカナ",
    "한국어 텍스트",
    "emoji 😀👍🏽 family 👩‍👩‍👧‍👦 flags 🇯🇵🇫🇷 keycap 1️⃣",
    "combining: e\u0301 a\u0308\u0323 Z\u0335\u0322",
    "RTL: שלום עולם, مرحبا بالعالم",
    "line\r\nbreaks\n\n\tand\ttabs   trailing  \r\n",
    "numbers 1234567 3.14159 1,000,000",
    "it's we're they've I'm you'll he'd DON'T",
    "code: def f(x):\n    return x**2  # comment\n",
    "<|im_end|> [BOS] <think> text that looks special </think>",
    "   leading spaces",
    "\u00a0nbsp\u2003em\u3000ideographic",
]

# Code-point ranges for random text (all outside the surrogates): ASCII, Latin, Greek, Cyrillic, Hebrew, Arabic,
# Devanagari, kana, Han, Hangul, emoji, combining marks, whitespace controls, ZWJ and variation selectors.
RANGES = [
    (0x20, 0x7E),
    (0xA0, 0x24F),
    (0x370, 0x3FF),
    (0x400, 0x4FF),
    (0x590, 0x5FF),
    (0x600, 0x6FF),
    (0x900, 0x97F),
    (0x3040, 0x30FF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3),
    (0x1F300, 0x1F64F),
    (0x300, 0x36F),
    (0x9, 0xD),
    (0x200D, 0x200D),
    (0xFE0F, 0xFE0F),
]


def random_texts(n: int, seed: int = 0, max_len: int = 40, assigned: bool = False) -> list[str]:
    """Seeded random strings; `assigned` drops code points unassigned in Python's Unicode data, where the regex
    engines (Rust regex in tiktoken, Oniguruma in tokenizers, the `regex` module) may each know a newer Unicode."""
    rng = random.Random(seed)
    chars = ((chr(rng.randint(*rng.choice(RANGES))) for _ in range(rng.randint(0, max_len))) for _ in range(n))
    return ["".join(c for c in s if not assigned or unicodedata.category(c) != "Cn") for s in chars]


def copy_files(src: Path, dst: Path, names: tuple[str, ...]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(src / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def kimi(tiny_k25: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_k25)


@pytest.fixture(scope="module")
def hf_dir(tiny_k25: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tokenizer.json converted from the synthetic tiktoken.model by transformers (an independent reference)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    base = HfConfig.from_dir(tiny_k25).model.vocab_size - 256
    conv = TikTokenConverter(
        vocab_file=str(tiny_k25 / "tiktoken.model"),
        pattern=KIMI_PATTERN,
        extra_special_tokens=list(special_tokens(base).values()),  # in id order, so ids come out base..base+255
    )
    out = copy_files(tiny_k25, tmp_path_factory.mktemp("hf"), ("tokenizer_config.json",))
    conv.converted().save(str(out / "tokenizer.json"))
    return out


@pytest.fixture(scope="module")
def hf(hf_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(hf_dir)


@pytest.fixture(params=["tiktoken", "hf"])
def tok(request: pytest.FixtureRequest, kimi: Tokenizer, hf: Tokenizer) -> Tokenizer:
    return kimi if request.param == "tiktoken" else hf


def test_kinds_sizes_and_choice(kimi, hf, tiny_k25, hf_dir, tmp_path):
    cfg = HfConfig.from_dir(tiny_k25).model
    assert (kimi.kind, hf.kind) == ("tiktoken", "hf")
    assert kimi.vocab_size == hf.vocab_size == cfg.vocab_size
    both = copy_files(tiny_k25, tmp_path, ("tiktoken.model", "tokenizer_config.json"))
    shutil.copy(hf_dir / "tokenizer.json", both / "tokenizer.json")
    assert Tokenizer.from_dir(both).kind == "tiktoken"  # auto prefers Kimi's own files
    assert Tokenizer.from_dir(both, prefer="hf").kind == "hf"
    (both / "tokenizer_config.json").unlink()  # HF path: [BOS]/[EOS] found among the added tokens by default
    assert Tokenizer.from_dir(both, prefer="hf").bos_id == cfg.bos_token_id


def test_special_ids(tok, tiny_k25):
    cfg = HfConfig.from_dir(tiny_k25).model
    base = cfg.vocab_size - 256
    assert tok.bos_id == cfg.bos_token_id == base and (tok.eos_id,) == cfg.eos_token_ids == (base + 1,)
    for off, name in SPECIAL_OFFSETS.items():
        assert tok.special_id(name) == base + off and tok.is_special(base + off)
        assert tok.decode([base + off]) == name and tok.token_bytes(base + off) == name.encode()
    assert tok.special_id("<|im_end|>") == base + 2 and tok.special_id("<think>") == base + 22
    assert tok.stop_ids == {base + 1, base + 2}
    assert len(tok.special_ids) == 256 and not any(tok.is_special(i) for i in range(base))
    for i in (base + 5, base + 8, base + 253):  # unnamed ids in the special range
        assert tok.decode([i]) == f"<|reserved_token_{i}|>" and tok.special_id(f"<|reserved_token_{i}|>") == i
    with pytest.raises(TokenizerError, match=r"no special token '<\|nope\|>'.*\[BOS\]"):
        tok.special_id("<|nope|>")


def test_round_trip_any_text(tok):
    for text in TEXTS + random_texts(300):
        ids = tok.encode(text)
        assert tok.decode(ids) == text, text
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()
        assert not any(tok.is_special(i) for i in ids)
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_lone_surrogates_become_replacement(tok):
    """As tiktoken does (JSON input can carry "\\ud800"); tokenizers alone would raise on them."""
    assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"
    assert tok.decode(tok.encode("\ud83d\ude00")) == "😀"  # a surrogate pair is one character


def test_split_pattern_by_hand():
    assert SPLIT.findall("Hello World's 中文English 12345 don't") == [
        "Hello",
        " World's",
        " ",
        "中文",
        "English",
        " ",
        "123",
        "45",
        " don't",
    ]
    assert SPLIT.findall("漢字かなカナ ÉCOLE École camelCase HTTPServer") == [
        "漢字",
        "かなカナ",
        " ÉCOLE",
        " École",
        " camel",
        "Case",
        " HTTPServer",
    ]
    assert SPLIT.findall("THEY'RE x  y\r\n\r\nz!!!\n\n 42") == [
        "THEY'RE",
        " x",
        " ",
        " y",
        "\r\n\r\n",
        "z",
        "!!!\n\n",
        " ",
        "42",
    ]


def test_tiktoken_and_oniguruma_split_like_regex(hf_dir):
    """tiktoken (Rust regex) and HF tokenizers (Oniguruma) cut text into exactly the pieces of regex.findall."""
    texts = [t for t in TEXTS if t] + random_texts(100, seed=1, assigned=True)
    pieces = {p.encode() for t in texts for p in SPLIT.findall(t)}
    # Each piece is its own token (tiktoken returns a whole-piece token without merging), and multi-byte pieces
    # cannot be reached by merges, so encoding yields one token per piece only where tiktoken split the same way.
    ranks = {bytes([b]): b for b in range(256)}
    for p in sorted(pieces - ranks.keys()):
        ranks[p] = len(ranks)
    enc = tiktoken.Encoding("pieces", pat_str=KIMI_PATTERN, mergeable_ranks=ranks, special_tokens={})
    from tokenizers import Tokenizer as HFTokenizer

    pre = HFTokenizer.from_file(str(hf_dir / "tokenizer.json")).pre_tokenizer
    alphabet = byte_level_alphabet()
    for text in texts:
        want = SPLIT.findall(text)
        assert [enc.decode_single_token_bytes(t) for t in enc.encode_ordinary(text)] == [p.encode() for p in want]
        got = [bytes(alphabet[c] for c in p).decode() for p, _ in pre.pre_tokenize_str(text)]
        assert got == want, text


def test_hf_gives_same_ids_as_tiktoken(kimi, hf):
    lines = corpus_text().splitlines()
    texts = TEXTS + lines + ["\n".join(lines)] + random_texts(300, seed=2, assigned=True)
    for text in texts:
        assert hf.encode(text) == kimi.encode(text), text
    trusted = "<|im_system|>system<|im_middle|>You are Kimi.<|im_end|><|im_user|>user<|im_middle|>hi <x><|im_end|>"
    assert hf.encode_with_specials(trusted) == kimi.encode_with_specials(trusted)


def test_user_typed_special_text_stays_plain(tok):
    for name in [*SPECIAL_OFFSETS.values(), f"<|reserved_token_{tok.bos_id + 5}|>"]:
        text = f"say {name} now"
        ids = tok.encode(text)
        assert tok.special_id(name) not in ids and not any(tok.is_special(i) for i in ids)
        assert tok.decode(ids) == text
        trusted = tok.encode_with_specials(text)
        assert trusted.count(tok.special_id(name)) == 1 and [i for i in trusted if tok.is_special(i)] == [
            tok.special_id(name)
        ]
        assert tok.decode(trusted) == text and tok.decode(trusted, skip_special=True) == "say  now"


def test_stream_never_breaks_a_character(tok):
    text = "中文 👩‍👩‍👧 é 🇯🇵 العربية e\u0301 <|im_end|> ok"
    ids = tok.encode_with_specials(text)
    # the tiny BPE leaves multibyte characters in pieces that are not valid UTF-8 on their own
    assert any(_invalid(tok.token_bytes(i)) for i in ids)
    for skip in (False, True):
        stream = tok.stream(skip_special=skip)
        pieces = [stream.push(i) for i in ids]
        assert not any("\ufffd" in p for p in pieces)
        assert "".join(pieces) + stream.flush() == tok.decode(ids, skip_special=skip)
    stream = tok.stream()
    assert "".join(stream.push(i) for i in ids) == text and stream.flush() == ""


def test_stream_matches_decode_on_arbitrary_ids(tok):
    """Random ids make invalid UTF-8 too: pushes + flush still equal decode, replacement characters included."""
    rng = random.Random(3)
    for skip in (False, True):
        for _ in range(200):
            ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(0, 12))]
            stream = tok.stream(skip_special=skip)
            got = "".join(stream.push(i) for i in ids) + stream.flush()
            assert got == tok.decode(ids, skip_special=skip)
    stream = tok.stream()
    assert stream.push(tok.encode("中")[0]) == "" and stream.flush() == "\ufffd"  # a held-back tail, then replaced
    assert stream.push(tok.encode("a")[0]) == "a"  # and the decoder starts afresh
    with pytest.raises(TokenizerError, match="out of range"):
        tok.token_bytes(tok.vocab_size)
    with pytest.raises(TokenizerError, match="out of range"):
        tok.stream(skip_special=True).push(-1)


def _invalid(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return True
    return False


# --- errors: each names the file and says what is expected ---


@pytest.fixture
def kimi_copy(tiny_k25: Path, tmp_path: Path) -> Path:
    return copy_files(tiny_k25, tmp_path / "k", ("tiktoken.model", "tokenizer_config.json"))


def _edit_lines(path: Path, fn: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def test_missing_files(tmp_path, kimi_copy, hf_dir):
    with pytest.raises(TokenizerError, match=r"no tokenizer; expected tiktoken\.model \+ tokenizer_config\.json"):
        Tokenizer.from_dir(tmp_path / "empty")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json not found"):
        Tokenizer.from_dir(kimi_copy, prefer="hf")
    with pytest.raises(TokenizerError, match=r"tiktoken\.model not found"):
        Tokenizer.from_dir(hf_dir, prefer="tiktoken")
    with pytest.raises(TokenizerError, match="prefer = 'sp'"):
        Tokenizer.from_dir(kimi_copy, prefer="sp")
    (kimi_copy / "tokenizer_config.json").unlink()
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json not found.*added_tokens_decoder"):
        Tokenizer.from_dir(kimi_copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda ls: [*ls[:9], "not-base64!! 9", *ls[10:]],
            r"tiktoken\.model:10: expected 'base64\(token bytes\) rank'",
        ),
        (lambda ls: [*ls[:9], ls[9].split()[0], *ls[10:]], r"tiktoken\.model:10: expected"),
        (lambda ls: [*ls[:300], *ls[301:]], r"rank 300 is missing"),
        (lambda ls: [*ls, ls[-1]], r"repeats rank"),
        (lambda ls: [], r"holds no tokens"),
    ],
)
def test_malformed_tiktoken_model(kimi_copy, edit, message):
    _edit_lines(kimi_copy / "tiktoken.model", edit)
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_dir(kimi_copy)


def test_bad_tokenizer_config(kimi_copy):
    path = kimi_copy / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    base = min(int(k) for k in cfg["added_tokens_decoder"])
    for bad_id in (base + 256, 7):
        entries = dict(cfg["added_tokens_decoder"], **{str(bad_id): {"content": "<|extra|>"}})
        path.write_text(json.dumps(dict(cfg, added_tokens_decoder=entries)))
        with pytest.raises(TokenizerError, match=rf"'<\|extra\|>' has id {bad_id}, outside {base}\.\.{base + 255}"):
            Tokenizer.from_dir(kimi_copy)
    path.write_text(json.dumps({k: v for k, v in cfg.items() if k != "added_tokens_decoder"}))
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json: no added_tokens_decoder"):
        Tokenizer.from_dir(kimi_copy)
    path.write_text("{not json")
    with pytest.raises(TokenizerError, match="is not valid JSON"):
        Tokenizer.from_dir(kimi_copy)


def test_bad_tokenizer_json(hf_dir, tmp_path):
    spec = json.loads((hf_dir / "tokenizer.json").read_text())
    path = tmp_path / "tokenizer.json"

    def load(d: dict[str, object]) -> Tokenizer:
        path.write_text(json.dumps(d))
        return Tokenizer.from_dir(tmp_path)

    with pytest.raises(TokenizerError, match=r"added_tokens entry .*expected"):
        load(dict(spec, added_tokens=[{"content": "[BOS]"}]))
    with pytest.raises(TokenizerError, match=r"vocab token '▁the' is not in the byte-level alphabet"):
        load(dict(spec, model=dict(spec["model"], vocab={**spec["model"]["vocab"], "▁the": 5000})))
    metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: model 'BPE' with decoder 'Metaspace'; only byte-level"):
        load(dict(spec, decoder=metaspace))
    with pytest.raises(TokenizerError, match=r"model 'WordPiece'"):
        load(dict(spec, model={"type": "WordPiece", "vocab": {"a": 0}, "unk_token": "a"}))
    path.write_text("{")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json is not valid JSON"):
        Tokenizer.from_dir(tmp_path)
