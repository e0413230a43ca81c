"""The tokenizer and chat template stored in a GGUF file's metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).

Only llama.cpp's byte-level BPE (`tokenizer.ggml.model` "gpt2") is read, with the pre-tokenizers of Kimi K2 and
DeepSeek-V3 and GPT-2's. Encoding is llama.cpp's: the text is cut by the pre-tokenizer's regexes, in order (each
splits the pieces of the one before, gaps kept as pieces), each piece is spelled in GPT-2's byte-to-unicode alphabet
and merged by `tokenizer.ggml.merges`, lowest rank first, leftmost first among equals. The tokenizers library's BPE
model is that algorithm (tests/test_gguf_vocab.py checks it against a Python transcription of llama.cpp's loop; the
llama.cpp binary, whose Kimi and GPT-2 splitters are hand-written C++, was not run). Specials (CONTROL and
USER_DEFINED tokens) come only from trusted text, as in `Tokenizer`, where llama.cpp also matches USER_DEFINED ones in
plain text; UNUSED ids (the holes a converter names [PAD{i}]) decode to nothing. `encode` never adds a
special (the chat template writes them); `tokenizer.ggml.add_bos_token` sets `add_bos`, which `encode_prompt` (raw
text prompts) honours as llama.cpp does; add_eos_token is not applied.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gguf import TokenType

from offload.engine.detokenize import byte_level_alphabet
from offload.engine.tokenizer import Tokenizer, TokenizerError, hf_encoders
from offload.tokenizer_pattern import KIMI_PATTERN

log = logging.getLogger(__name__)

__all__ = ["PRE_TOKENIZERS", "chat_template_from_gguf", "tokenizer_from_gguf"]

MODEL = "tokenizer.ggml.model"
PRE = "tokenizer.ggml.pre"
TOKENS = "tokenizer.ggml.tokens"
TYPES = "tokenizer.ggml.token_type"
MERGES = "tokenizer.ggml.merges"
BOS = "tokenizer.ggml.bos_token_id"
EOS = "tokenizer.ggml.eos_token_id"
CHAT_TEMPLATE = "tokenizer.chat_template"


GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""
# DeepSeek-V3's pre-tokenizer: the three Split regexes of its tokenizer.json (deepseek-ai/DeepSeek-V3), which
# llama.cpp's src/llama-vocab.cpp copies for LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM. Written as there, character for
# character (CR and LF literal, Han U+4E00..U+9FA5 and kana U+3040..U+30FF as characters), so a tokenizer.json that
# holds them is recognised by comparing strings.
DEEPSEEK_V3_PATTERNS = (
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
)
# tokenizer.ggml.pre -> the regexes llama.cpp (src/llama-vocab.cpp, llm_tokenizer_bpe) splits text with, in order.
# "default" is llama.cpp's fallback sequence, not GPT-2's single pattern.
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "kimi-k2": (KIMI_PATTERN,),
    "deepseek-v3": DEEPSEEK_V3_PATTERNS,
    "gpt-2": (GPT2_PATTERN,),
    "default": (r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", "[0-9][0-9][0-9]"),
}
SPECIAL_TYPES = (TokenType.CONTROL, TokenType.USER_DEFINED)


def tokenizer_from_gguf(meta: Mapping[str, Any], source: Path) -> Tokenizer:
    """The tokenizer in a GGUF file's metadata (key -> Python value); `source` names the file in messages."""
    model = _value(meta, MODEL, str, source)
    if model != "gpt2":
        raise TokenizerError(
            f"{source}: {MODEL} = {model!r}; only 'gpt2' (byte-level BPE, as Kimi K2 and DeepSeek-V3 use) is supported"
        )
    pre = _value(meta, PRE, str, source)
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(f"{source}: {PRE} = {pre!r}; supported: {', '.join(PRE_TOKENIZERS)}")
    tokens = _list(meta, TOKENS, str, source)
    types = _list(meta, TYPES, int, source)
    if not tokens:
        raise TokenizerError(f"{source}: {TOKENS} is empty")
    if len(types) != len(tokens):
        raise TokenizerError(f"{source}: {TYPES} has {len(types)} entries but {TOKENS} has {len(tokens)}; one each")
    table, vocab, specials = _vocabulary(tokens, types, source)
    merges = _merges(_list(meta, MERGES, str, source), vocab, source)
    bos, eos = (_special(meta, key, tokens, specials, source) for key in (BOS, EOS))
    spec = _bpe_spec(vocab, specials, merges, PRE_TOKENIZERS[pre])
    encode_plain, encode_trusted = hf_encoders(spec, source)
    log.debug("GGUF tokenizer from %s: %d ids, %d merges, pre %s", source, len(tokens), len(merges), pre)
    return Tokenizer(
        kind="gguf",
        table=table,
        special_ids=specials,
        bos=bos,
        eos=eos,
        encode_plain=encode_plain,
        encode_trusted=encode_trusted,
        source=source,
        add_bos=meta.get("tokenizer.ggml.add_bos_token") is True,
    )


def chat_template_from_gguf(meta: Mapping[str, Any]) -> str | None:
    """The file's default chat template (`tokenizer.chat_template`), None when it has none."""
    template = meta.get(CHAT_TEMPLATE)
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{CHAT_TEMPLATE} is a {type(template).__name__}; expected the template's text")
    return template


def _bpe_spec(
    vocab: dict[str, int], specials: dict[str, int], merges: list[list[str]], patterns: tuple[str, ...]
) -> dict[str, Any]:
    """A tokenizer.json for llama.cpp's BPE: regex splits in order, byte-level spelling, merges by rank."""
    splits = [{"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False} for p in patterns]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        # every special counts as special here, so user text can never produce one
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for t, i in specials.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                *splits,
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            # Specials sit in the model's vocab too, so the added tokens keep their ids across UNUSED holes. No
            # merge can yield one: every merge's result is checked to be a NORMAL token.
            "vocab": {**vocab, **specials},
            "merges": merges,
        },
    }


def _vocabulary(
    tokens: list[str], types: list[int], source: Path
) -> tuple[list[bytes | None], dict[str, int], dict[str, int]]:
    """id -> bytes, NORMAL token text -> id and special text -> id, each token checked."""
    alphabet = byte_level_alphabet()
    table: list[bytes | None] = []
    vocab: dict[str, int] = {}
    specials: dict[str, int] = {}
    seen: dict[str, int] = {}
    for i, (text, kind) in enumerate(zip(tokens, types, strict=True)):
        if text in seen:  # llama.cpp refuses these too: text -> id must be one-to-one
            raise TokenizerError(f"{source}: {TOKENS}[{i}] = {text!r} repeats token {seen[text]}")
        seen[text] = i
        if kind == TokenType.NORMAL:
            if not text or any(c not in alphabet for c in text):
                raise TokenizerError(
                    f"{source}: {TOKENS}[{i}] = {text!r} is NORMAL but not spelled in GPT-2's byte-level alphabet; "
                    f"{MODEL} 'gpt2' needs byte-level BPE"
                )
            table.append(bytes(alphabet[c] for c in text))
            vocab[text] = i
        elif kind in SPECIAL_TYPES:
            if not text:
                raise TokenizerError(f"{source}: {TOKENS}[{i}] is an empty special token")
            table.append(text.encode())
            specials[text] = i
        elif kind == TokenType.UNUSED:
            table.append(b"")  # llama.cpp prints nothing for these
        else:
            name = TokenType(kind).name if kind in {t.value for t in TokenType} else "unknown"
            raise TokenizerError(
                f"{source}: {TYPES}[{i}] = {kind} ({name}) for {text!r}; a 'gpt2' vocabulary has only NORMAL (1), "
                "CONTROL (3), USER_DEFINED (4) and UNUSED (5) tokens"
            )
    return table, vocab, specials


def _merges(merges: list[str], vocab: dict[str, int], source: Path) -> list[list[str]]:
    """Merges as [left, right] pairs, rank = index; both sides and their join must be NORMAL tokens."""
    out: list[list[str]] = []
    seen: dict[tuple[str, str], int] = {}
    for rank, merge in enumerate(merges):
        cut = merge.find(" ", 1)  # as llama.cpp splits them: byte-level tokens never hold a literal space
        left, right = (merge[:cut], merge[cut + 1 :]) if cut > 0 else ("", "")
        bad = [t for t in (left, right, left + right) if t not in vocab] if left and right else [merge]
        if bad:
            raise TokenizerError(
                f"{source}: {MERGES}[{rank}] = {merge!r}: {bad[0]!r} is not a NORMAL token; each merge is "
                "'left right', both sides and their join in the vocabulary"
            )
        if (left, right) in seen:
            raise TokenizerError(f"{source}: {MERGES}[{rank}] = {merge!r} repeats merge {seen[left, right]}")
        seen[left, right] = rank
        out.append([left, right])
    return out


def _special(meta: Mapping[str, Any], key: str, tokens: list[str], specials: dict[str, int], source: Path) -> str:
    """The text of the special token an id key names."""
    i = _value(meta, key, int, source)
    if not 0 <= i < len(tokens):
        raise TokenizerError(f"{source}: {key} = {i} is out of range 0..{len(tokens) - 1} of {TOKENS}")
    if specials.get(tokens[i]) != i:
        raise TokenizerError(f"{source}: {key} = {i} names {tokens[i]!r}, which is not a CONTROL or USER_DEFINED token")
    return tokens[i]


def _value(meta: Mapping[str, Any], key: str, kind: type, source: Path) -> Any:
    if key not in meta:
        raise TokenizerError(f"{source}: metadata key {key} is missing; it is needed to read the tokenizer")
    v = meta[key]
    if not isinstance(v, kind) or isinstance(v, bool) is not (kind is bool):
        raise TokenizerError(f"{source}: {key} = {v!r:.80}; expected a {kind.__name__}")
    return v


def _list(meta: Mapping[str, Any], key: str, kind: type, source: Path) -> list[Any]:
    v = _value(meta, key, list, source)
    for x in v:
        if not isinstance(x, kind) or isinstance(x, bool):
            raise TokenizerError(f"{source}: {key} holds {x!r:.80}; expected a list of {kind.__name__}")
    return v
