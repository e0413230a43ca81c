"""GGUF tokenizer: a checkpoint folder's tokenizer written as llama.cpp's converter writes it and read back gives the
folder's own ids (Kimi's tiktoken ranks) and llama.cpp's BPE by merges (a Python transcription of its algorithm),
keeps user-typed special text plain, decodes UNUSED holes to nothing, and refuses metadata it cannot read."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gguf
import pytest
import regex

from offload.checkpoint.gguf_file import read_metadata
from offload.checkpoint.safetensors_file import CheckpointError
from offload.engine.chat_format import ChatFormat
from offload.engine.gguf_vocab import DEEPSEEK_V3_PATTERNS, PRE_TOKENIZERS, chat_template_from_gguf, tokenizer_from_gguf
from offload.engine.tokenizer import KIMI_PATTERN, Tokenizer, TokenizerError
from offload.synth.gguf_tokenizer import add_tokenizer, byte_level, rank_merge
from offload.synth.tokenizer import SPECIAL_OFFSETS, corpus_text, special_tokens
from tests.conftest import make
from tests.test_tokenizer import TEXTS, copy_files, random_texts

DEMO = Path(__file__).parents[1] / "offload" / "demo_model"  # a 2048-token vocabulary trained on other text
MORE_TEXTS = [
    "def f(x):\n\tif x:\n\t\treturn   x  # tab, tab\n" + " " * 37 + "end\n\n\n",
    "\t\t\t    \t \n \r\n\r\n   ",
    "0 12 345 6789 1234567890123 3.14159e-10 0x1F 1_000_000 ٣٤٥ ⅷ ½",
    "e\u0301\u0301 \u0308a Z\u0335\u0322\u0321 \u0915\u094d\u0937 \u0e01\u0e34\u0e48",
    "こんにちは世界 カタカナ ｶﾀｶﾅ 中文，标点。漢字かな",
    "👍🏽👩‍🚀 🏳️‍🌈 #️⃣ \U0001f9d1\u200d\U0001f4bb",
    "say [BOS] and <|im_end|> and <think>not special</think>",
    "ＡＢＣ ǅ ǈ ᾈ ﬁ ß ẞ İı",
]


def write_gguf(path: Path, folder: Path) -> Path:
    """A GGUF file holding just general.architecture and the folder's tokenizer keys."""
    writer = gguf.GGUFWriter(path, "deepseek2")
    add_tokenizer(writer, folder)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make(tmp_path_factory.mktemp("gguf-vocab"), "tiny")


@pytest.fixture(scope="module", params=["tiny", "demo"])
def case(request: pytest.FixtureRequest, tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Case:
    folder = tiny if request.param == "tiny" else DEMO
    path = write_gguf(tmp_path_factory.mktemp("gguf") / f"{request.param}.gguf", folder)
    meta = read_metadata(path)
    return Case(folder, path, meta, Tokenizer.from_dir(folder), tokenizer_from_gguf(meta, path))


class Case:
    def __init__(self, folder: Path, path: Path, meta: dict[str, Any], ref: Tokenizer, tok: Tokenizer) -> None:
        self.folder, self.path, self.meta, self.ref, self.tok = folder, path, meta, ref, tok


def texts(n: int = 200, seed: int = 5) -> list[str]:
    lines = corpus_text().splitlines()
    return [*TEXTS, *MORE_TEXTS, *lines, "\n".join(lines), *random_texts(n, seed=seed, assigned=True)]


def normal_tokens(meta: Mapping[str, Any]) -> dict[str, int]:
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    return {t: i for i, (t, k) in enumerate(zip(tokens, types, strict=True)) if k == gguf.TokenType.NORMAL}


def llama_bpe(meta: Mapping[str, Any]) -> Callable[[str], list[int]]:
    """llama.cpp's BPE (llm_tokenizer_bpe_session::tokenize) transcribed to Python: each regex of the pre-tokenizer
    splits the pieces of the one before (gaps kept), each piece is spelled byte-level and merged, lowest merge rank
    first and leftmost first among equals, and each symbol looked up in the token list."""
    ids = normal_tokens(meta)
    ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(meta["tokenizer.ggml.merges"])}
    splits = [regex.compile(p, regex.V1 if "&&" in p else regex.V0) for p in PRE_TOKENIZERS[meta["tokenizer.ggml.pre"]]]

    def cut(rx: regex.Pattern[str], piece: str) -> list[str]:
        out, pos = [], 0
        for m in rx.finditer(piece):
            out += [piece[pos : m.start()], m.group()]
            pos = m.end()
        return [p for p in [*out, piece[pos:]] if p]

    def merge(word: str) -> list[int]:
        syms = list(word)
        while pairs := [(ranks[p], k) for k, p in enumerate(itertools.pairwise(syms)) if p in ranks]:
            _, k = min(pairs)
            syms[k : k + 2] = [syms[k] + syms[k + 1]]
        return [ids[s] for s in syms]

    def encode(text: str) -> list[int]:
        pieces = [text]
        for rx in splits:
            pieces = [q for p in pieces for q in cut(rx, p)]
        return [i for p in pieces for i in merge(byte_level(p.encode()))]

    encode.merge = merge  # type: ignore[attr-defined]
    return encode


# --- what is written ---


def test_keys_as_llama_cpp_writes_them(case):
    meta, ref = case.meta, case.ref
    base = ref.bos_id
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert meta["general.architecture"] == "deepseek2"
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "kimi-k2")
    assert len(tokens) == len(types) == ref.vocab_size
    assert types == [gguf.TokenType.NORMAL] * base + [gguf.TokenType.CONTROL] * 256
    assert tokens[32] == "Ġ" and tokens[10] == "Ċ" and tokens[ord("a")] == "a"  # GPT-2's byte-to-unicode spelling
    assert tokens[base:] == list(special_tokens(base).values())
    assert all(byte_level(ref.token_bytes(i)) == tokens[i] for i in range(base))
    assert len(meta["tokenizer.ggml.merges"]) == base - 256  # every multi-byte token is one merge
    assert meta["tokenizer.ggml.bos_token_id"] == base and meta["tokenizer.ggml.eos_token_id"] == base + 1
    assert meta.get("tokenizer.ggml.padding_token_id", base + 255) == base + 255
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_eos_token"] is False
    assert chat_template_from_gguf(meta) == (case.folder / "chat_template.jinja").read_text()


def test_rank_merge_is_tiktokens_last_step():
    ranks = {bytes([b]): b for b in range(256)}
    ranks |= {b"ab": 256, b"bc": 257, b"abc": 258, b"cd": 259, b"bcd": 260, b"abcd": 261, b"xyz": 262}
    assert rank_merge(ranks, b"abc", 258) == (b"ab", b"c")  # ab (256) is merged before bc (257)
    assert rank_merge(ranks, b"bcd", 260) == (b"bc", b"d")
    assert rank_merge(ranks, b"abcd", 261) == (b"abc", b"d")  # abc (258) before cd (259)
    assert rank_merge(ranks, b"ab", 256) == (b"a", b"b")
    assert rank_merge(ranks, b"xyz", 262) is None  # no lower token joins two of x, y, z: no merge makes it


# --- reading: same ids as the folder, and as llama.cpp ---


def test_same_ids_as_the_folder_and_as_llama_cpp(case):
    """tiktoken by ranks (the folder) = BPE by merges (the GGUF reader) = llama.cpp's algorithm (the transcription)."""
    reference = llama_bpe(case.meta)
    for text in texts():
        ids = case.tok.encode(text)
        assert ids == case.ref.encode(text), text
        assert ids == reference(text), text
        assert not any(case.tok.is_special(i) for i in ids)
        assert case.tok.decode(ids) == text
    assert case.tok.encode("") == []


def test_every_token_is_reached_by_its_merges(case):
    """tiktoken returns a piece that is itself a token whole; BPE by merges reaches every token from its bytes too,
    so that shortcut never makes the two differ."""
    merge = llama_bpe(case.meta).merge  # type: ignore[attr-defined]
    normal = normal_tokens(case.meta)
    assert len(normal) == case.ref.bos_id
    for text, i in normal.items():
        assert merge(text) == [i], text


def test_specials_only_from_trusted_text(case):
    tok, ref = case.tok, case.ref
    assert (tok.bos_id, tok.eos_id, tok.stop_ids) == (ref.bos_id, ref.eos_id, ref.stop_ids)
    assert tok.special_ids == ref.special_ids and len(tok.special_ids) == 256
    for name in [*SPECIAL_OFFSETS.values(), f"<|reserved_token_{tok.bos_id + 5}|>"]:
        text = f"say {name} now"
        ids = tok.encode(text)
        assert ids == ref.encode(text) and tok.special_id(name) not in ids
        trusted = tok.encode_with_specials(text)
        assert trusted == ref.encode_with_specials(text) and [i for i in trusted if tok.is_special(i)] == [
            tok.special_id(name)
        ]
        assert tok.decode(trusted) == text and tok.decode(trusted, skip_special=True) == "say  now"
    prompt = "<|im_system|>system<|im_middle|>You are Kimi.<|im_end|><|im_user|>user<|im_middle|>hi <x><|im_end|>"
    assert tok.encode_with_specials(prompt) == ref.encode_with_specials(prompt)


def test_decode_matches_the_folder(case):
    assert case.tok.vocab_size == case.ref.vocab_size
    assert all(case.tok.token_bytes(i) == case.ref.token_bytes(i) for i in range(case.ref.vocab_size))
    stream = case.tok.stream()
    ids = case.tok.encode_with_specials("中文 👩‍👩‍👧 <|im_end|> e\u0301")
    assert "".join(stream.push(i) for i in ids) + stream.flush() == "中文 👩‍👩‍👧 <|im_end|> e\u0301"
    with pytest.raises(TokenizerError, match="out of range"):
        case.tok.token_bytes(case.tok.vocab_size)


def test_chat_template_gives_the_same_prompt(case):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2? Type <|im_end|> if you dare.\n\tcode:   x = 1"},
        {"role": "assistant", "content": "4", "reasoning_content": "simple"},
        {"role": "user", "content": "中文 and 😀?"},
    ]
    template = chat_template_from_gguf(case.meta)
    assert template is not None
    ours, theirs = ChatFormat(case.tok, template), ChatFormat.from_dir(case.folder, case.ref)
    for thinking in (True, False):
        ids = ours.encode(messages, thinking=thinking)
        assert ids == theirs.encode(messages, thinking=thinking)
        assert ids.count(case.tok.special_id("<|im_end|>")) == 4  # the user's typed one stays text
    assert chat_template_from_gguf({}) is None


def test_unused_holes_decode_to_nothing(case):
    """Holes (type UNUSED, named [PAD{i}]) inside the special range and after it keep every other id in place."""
    base = case.ref.bos_id
    tokens, types = list(case.meta["tokenizer.ggml.tokens"]), list(case.meta["tokenizer.ggml.token_type"])
    for i in (base + 5, base + 8, base + 200):  # unnamed reserved ids
        tokens[i], types[i] = f"[PAD{i}]", gguf.TokenType.UNUSED
    n = len(tokens)
    tokens += [f"[PAD{i}]" for i in range(n, n + 3)]
    types += [gguf.TokenType.UNUSED] * 3
    meta = {**case.meta, "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types}
    tok = tokenizer_from_gguf(meta, case.path)
    assert tok.vocab_size == n + 3 and len(tok.special_ids) == 253
    assert tok.decode([base + 5, n + 2]) == "" and not tok.is_special(base + 5)
    text = "<|im_user|>user<|im_middle|>hi [PAD8]<|im_end|>"
    assert tok.encode_with_specials(text) == case.ref.encode_with_specials(text)
    assert tok.encode(f"[PAD{base + 5}]") == case.ref.encode(f"[PAD{base + 5}]")  # a hole's name is plain text


def test_writer_pads_to_the_config_vocab_size(tiny, tmp_path):
    folder = copy_files(tiny, tmp_path / "k", ("tiktoken.model", "tokenizer_config.json", "config.json"))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"]["vocab_size"] += 4
    (folder / "config.json").write_text(json.dumps(cfg))
    meta = read_metadata(write_gguf(tmp_path / "t.gguf", folder))
    n = cfg["text_config"]["vocab_size"]
    assert meta["tokenizer.ggml.tokens"][-4:] == [f"[PAD{i}]" for i in range(n - 4, n)]
    assert meta["tokenizer.ggml.token_type"][-4:] == [gguf.TokenType.UNUSED] * 4
    assert "tokenizer.chat_template" in meta  # from tokenizer_config.json when there is no chat_template.jinja
    tok = tokenizer_from_gguf(meta, tmp_path / "t.gguf")
    assert tok.vocab_size == n and tok.decode([n - 1]) == ""
    cfg["text_config"]["vocab_size"] -= 8
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TokenizerError, match=r"config\.json has vocab_size 764 but the tokenizer has 768 ids"):
        write_gguf(tmp_path / "u.gguf", folder)


# --- other pre-tokenizers, and HF tokenizer.json folders ---


@pytest.mark.parametrize("pre", ["deepseek-v3", "gpt-2", "default"])
def test_other_pre_tokenizers_split_as_llama_cpp(case, pre):
    meta = {**case.meta, "tokenizer.ggml.pre": pre}
    tok, reference = tokenizer_from_gguf(meta, case.path), llama_bpe(meta)
    for text in texts(100, seed=6):
        assert tok.encode(text) == reference(text), text
        assert tok.decode(tok.encode(text)) == text


@pytest.fixture(scope="module")
def hf_dir(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tokenizer.json converted from the tiny tiktoken.model by transformers."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    base = Tokenizer.from_dir(tiny).bos_id
    conv = TikTokenConverter(
        vocab_file=str(tiny / "tiktoken.model"),
        pattern=KIMI_PATTERN,
        extra_special_tokens=list(special_tokens(base).values()),
    )
    out = copy_files(tiny, tmp_path_factory.mktemp("hf"), ("tokenizer_config.json", "chat_template.jinja"))
    conv.converted().save(str(out / "tokenizer.json"))
    return out


def split(pattern: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
# DeepSeek-V3's tokenizer.json pre_tokenizer as that file spells it (JSON text), to check the reader's copy against
DEEPSEEK_V3_PRE = json.loads(
    r"""{"type": "Sequence", "pretokenizers": ["""
    r"""{"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": false},"""
    r"""{"type": "Split", "pattern": {"Regex": "[一-龥\u3040-ゟ゠-ヿ]+"}, "behavior": "Isolated", "invert": false},"""
    r"""{"type": "Split", "pattern": {"Regex": "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+"""
    r"""|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"},"""
    r""" "behavior": "Isolated", "invert": false},"""
    r"""{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}"""
)
HF_PRE = {
    "kimi-k2": None,  # as converted
    "deepseek-v3": DEEPSEEK_V3_PRE,
    "gpt-2": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
}


def test_deepseek_v3_patterns_as_its_tokenizer_json_has_them():
    splits = DEEPSEEK_V3_PRE["pretokenizers"][:3]
    assert tuple(s["pattern"]["Regex"] for s in splits) == DEEPSEEK_V3_PATTERNS == PRE_TOKENIZERS["deepseek-v3"]


@pytest.mark.parametrize("pre", list(HF_PRE))
def test_hf_folder_round_trip(hf_dir, tmp_path, pre):
    """The tokenizers library with the HF file's own pre-tokenizer agrees with the GGUF reader's regex splits."""
    folder = copy_files(hf_dir, tmp_path / "hf", ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"))
    if HF_PRE[pre] is not None:
        spec = json.loads((folder / "tokenizer.json").read_text())
        (folder / "tokenizer.json").write_text(json.dumps(dict(spec, pre_tokenizer=HF_PRE[pre])))
    meta = read_metadata(write_gguf(tmp_path / "hf.gguf", folder))
    assert meta["tokenizer.ggml.pre"] == pre and "tokenizer.ggml.padding_token_id" not in meta  # no config.json
    tok, ref = tokenizer_from_gguf(meta, tmp_path / "hf.gguf"), Tokenizer.from_dir(folder)
    for text in texts(100, seed=7):
        assert tok.encode(text) == ref.encode(text), text
    assert tok.special_ids == ref.special_ids and (tok.bos_id, tok.eos_id) == (ref.bos_id, ref.eos_id)


def test_tokens_no_merge_builds_are_warned(hf_dir, tmp_path, caplog):
    """tokenizer.json's ignore_merges (as tiktoken) keeps a piece that is a token whole even when no merge builds it;
    llama.cpp cannot, so the writer warns and the GGUF reader splits that piece."""
    folder = copy_files(hf_dir, tmp_path / "hf", ("tokenizer.json", "tokenizer_config.json"))
    spec = json.loads((folder / "tokenizer.json").read_text())
    assert spec["model"]["ignore_merges"] is True
    merges = [m for m in spec["model"]["merges"] if "".join(m) != "Ġbytes"]
    assert len(merges) == len(spec["model"]["merges"]) - 1
    spec["model"]["merges"] = merges
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with caplog.at_level("WARNING", logger="offload.synth.gguf_tokenizer"):
        meta = read_metadata(write_gguf(tmp_path / "hf.gguf", folder))
    assert "1 tokens are not built by their merges (e.g. 'Ġbytes')" in caplog.text
    tok, ref = tokenizer_from_gguf(meta, tmp_path / "hf.gguf"), Tokenizer.from_dir(folder)
    assert ref.encode(" bytes") == [meta["tokenizer.ggml.tokens"].index("Ġbytes")]
    assert tok.encode(" bytes") == llama_bpe(meta)(" bytes") and len(tok.encode(" bytes")) == 2


def test_hf_folder_errors(hf_dir, tmp_path):
    folder = copy_files(hf_dir, tmp_path / "hf", ("tokenizer.json", "tokenizer_config.json"))
    spec = json.loads((folder / "tokenizer.json").read_text())
    prefix = dict(HF_PRE["gpt-2"], add_prefix_space=True)
    for pre in (prefix, {"type": "Sequence", "pretokenizers": [split(r"\p{N}"), BYTE_LEVEL]}):
        (folder / "tokenizer.json").write_text(json.dumps(dict(spec, pre_tokenizer=pre)))
        with pytest.raises(TokenizerError, match=r"pre_tokenizer .* is none that GGUF names here"):
            add_tokenizer(gguf.GGUFWriter(tmp_path / "x.gguf", "deepseek2"), folder)
    nfc = {"type": "NFC"}
    (folder / "tokenizer.json").write_text(json.dumps(dict(spec, normalizer=nfc)))
    with pytest.raises(TokenizerError, match="a normalizer cannot be written to GGUF"):
        add_tokenizer(gguf.GGUFWriter(tmp_path / "x.gguf", "deepseek2"), folder)


# --- errors: each names the key and the value ---


def _edit(meta: dict[str, Any], key: str, fn: Callable[[Any], Any]) -> dict[str, Any]:
    out = dict(meta)
    if (value := fn(out.get(key))) is None:
        del out[key]
    else:
        out[key] = value
    return out


def _set(xs: list[Any], i: int, v: Any) -> list[Any]:
    return [*xs[:i], v, *xs[i + 1 :]]


BAD = [
    ("tokenizer.ggml.model", lambda v: "llama", r"tokenizer\.ggml\.model = 'llama'; only 'gpt2'"),
    ("tokenizer.ggml.model", lambda v: None, r"metadata key tokenizer\.ggml\.model is missing"),
    ("tokenizer.ggml.pre", lambda v: "llama3", r"tokenizer\.ggml\.pre = 'llama3'; supported: kimi-k2, deepseek-v3"),
    ("tokenizer.ggml.pre", lambda v: None, r"tokenizer\.ggml\.pre is missing"),
    ("tokenizer.ggml.tokens", lambda v: "abc", r"tokenizer\.ggml\.tokens = 'abc'; expected a list"),
    ("tokenizer.ggml.tokens", lambda v: [], r"tokenizer\.ggml\.tokens is empty"),
    ("tokenizer.ggml.tokens", lambda v: _set(v, 300, v[299]), r"tokenizer\.ggml\.tokens\[300\] = .* repeats token 299"),
    ("tokenizer.ggml.tokens", lambda v: _set(v, 300, "▁the"), r"\[300\] = '▁the' is NORMAL but not spelled in GPT-2"),
    ("tokenizer.ggml.tokens", lambda v: _set(v, 3, 7), r"tokenizer\.ggml\.tokens holds 7; expected a list of str"),
    ("tokenizer.ggml.token_type", lambda v: v[:-1], r"token_type has \d+ entries but tokenizer\.ggml\.tokens has"),
    ("tokenizer.ggml.token_type", lambda v: _set(v, 9, 6), r"token_type\[9\] = 6 \(BYTE\)"),
    ("tokenizer.ggml.token_type", lambda v: _set(v, 9, 42), r"token_type\[9\] = 42 \(unknown\)"),
    ("tokenizer.ggml.token_type", lambda v: None, r"tokenizer\.ggml\.token_type is missing"),
    ("tokenizer.ggml.merges", lambda v: None, r"tokenizer\.ggml\.merges is missing"),
    ("tokenizer.ggml.merges", lambda v: _set(v, 3, "Ġ q_nope"), r"merges\[3\] = 'Ġ q_nope': 'q_nope' is not a NORMAL"),
    ("tokenizer.ggml.merges", lambda v: _set(v, 4, "nospace"), r"merges\[4\] = 'nospace': 'nospace' is not a NORMAL"),
    ("tokenizer.ggml.merges", lambda v: [*v, v[0]], r"merges\[\d+\] = .* repeats merge 0"),
    ("tokenizer.ggml.bos_token_id", lambda v: 99999, r"bos_token_id = 99999 is out of range 0\.\.\d+"),
    ("tokenizer.ggml.bos_token_id", lambda v: None, r"tokenizer\.ggml\.bos_token_id is missing"),
    ("tokenizer.ggml.eos_token_id", lambda v: 65, r"eos_token_id = 65 names 'A', which is not a CONTROL"),
    ("tokenizer.ggml.eos_token_id", lambda v: True, r"eos_token_id = True; expected a int"),
]


@pytest.mark.parametrize(
    ("key", "edit", "message"), BAD, ids=[f"{k.split('.')[-1]}-{i}" for i, (k, _, _) in enumerate(BAD)]
)
def test_bad_metadata(case, key, edit, message):
    with pytest.raises(TokenizerError, match=message) as e:
        tokenizer_from_gguf(_edit(case.meta, key, edit), case.path)
    assert str(case.path) in str(e.value)


def test_bad_special_and_template(case):
    tokens = _set(case.meta["tokenizer.ggml.tokens"], case.ref.bos_id + 5, "")
    with pytest.raises(TokenizerError, match=rf"tokens\[{case.ref.bos_id + 5}\] is an empty special token"):
        tokenizer_from_gguf({**case.meta, "tokenizer.ggml.tokens": tokens}, case.path)
    with pytest.raises(TokenizerError, match=r"tokenizer\.chat_template is a list"):
        chat_template_from_gguf({"tokenizer.chat_template": ["a"]})


def test_read_metadata_errors(case, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "none.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all" * 4)
    with pytest.raises(CheckpointError, match=r"bad\.gguf: starts with b'not ', not b'GGUF': not a GGUF file"):
        read_metadata(tmp_path / "bad.gguf")
    (tmp_path / "cut.gguf").write_bytes(case.path.read_bytes()[: case.path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.gguf: the header ends early .* truncated"):
        read_metadata(tmp_path / "cut.gguf")


def test_read_metadata_values(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "v.gguf", "deepseek2")
    writer.add_uint32("a.u32", 7)
    writer.add_float32("a.f32", 0.5)
    writer.add_bool("a.bool", True)
    writer.add_string("a.str", "héllo")
    writer.add_array("a.ints", [1, 2, 3])
    writer.add_array("a.strs", ["x", "", "中"])
    writer.add_array("a.empty", [])  # GGUFWriter writes no empty arrays
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    meta = read_metadata(tmp_path / "v.gguf")
    assert meta == {
        "general.architecture": "deepseek2",
        "a.u32": 7,
        "a.f32": 0.5,
        "a.bool": True,
        "a.str": "héllo",
        "a.ints": [1, 2, 3],
        "a.strs": ["x", "", "中"],
    }
    assert type(meta["a.bool"]) is bool and type(meta["a.u32"]) is int
