"""A small byte-level BPE trained by the project, written in Kimi's tokenizer format.

Kimi ships `tiktoken.model` (one `base64(token bytes) rank` line per base token) and a `tokenizer_config.json`
whose `added_tokens_decoder` places 256 special ids right after the base tokens. We keep Kimi's offsets from the
first special id, so a model with B base tokens has [BOS] at B, [EOS] at B+1, <|im_end|> at B+2, ... [PAD] at B+255.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
from collections import Counter
from importlib import resources
from pathlib import Path

import regex

from offload.tokenizer_pattern import KIMI_PATTERN

NUM_SPECIAL = 256
# Kimi's special tokens by offset from the first special id (163584 in the real tokenizer)
SPECIAL_OFFSETS = {
    0: "[BOS]",
    1: "[EOS]",
    2: "<|im_end|>",
    3: "<|im_user|>",
    4: "<|im_assistant|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    9: "[EOT]",
    10: "<|im_system|>",
    11: "<|tool_calls_section_begin|>",
    12: "<|tool_calls_section_end|>",
    13: "<|tool_call_begin|>",
    14: "<|tool_call_argument_begin|>",
    15: "<|tool_call_end|>",
    17: "<|im_middle|>",
    18: "<|media_begin|>",
    19: "<|media_content|>",
    20: "<|media_end|>",
    21: "<|media_pad|>",
    22: "<think>",
    23: "</think>",
    254: "[UNK]",
    255: "[PAD]",
}

# Training splits text exactly as the runtime does (Kimi's pattern), so no merge crosses a runtime piece. The
# `regex` module (a dependency of tiktoken) understands the pattern's `&&` with its V1 flag; Python's `re` does not.
_SPLIT = regex.compile(KIMI_PATTERN, regex.V1)


def corpus_text() -> str:
    return resources.files("offload.synth").joinpath("corpus.txt").read_text(encoding="utf-8")


def chat_template() -> str:
    return resources.files("offload.synth").joinpath("chat_template.jinja").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=8)
def train_bpe(num_base_tokens: int, text: str | None = None) -> tuple[bytes, ...]:
    """Token byte strings in rank order: the 256 single bytes, then merges, most frequent pair first (ties broken
    by the pair's bytes, so training is deterministic). Stops early when the corpus has no pair left."""
    if num_base_tokens < 256:
        raise ValueError(f"num_base_tokens = {num_base_tokens}; a byte-level BPE needs at least 256")
    words = Counter(m.group().encode() for m in _SPLIT.finditer(text if text is not None else corpus_text()))
    vocab: list[bytes] = [bytes([b]) for b in range(256)]
    seqs = [(list(w), n) for w, n in words.items()]  # token ids per distinct word, and its count
    while len(vocab) < num_base_tokens:
        pairs: Counter[tuple[int, int]] = Counter()
        for seq, n in seqs:
            for a, b in itertools.pairwise(seq):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], _neg(vocab[kv[0][0]] + vocab[kv[0][1]])))[0]
        new_id = len(vocab)
        vocab.append(vocab[best[0]] + vocab[best[1]])
        for seq, _ in seqs:
            i = 0
            while i < len(seq) - 1:
                if seq[i] == best[0] and seq[i + 1] == best[1]:
                    seq[i : i + 2] = [new_id]
                i += 1
    return tuple(vocab)


def _neg(b: bytes) -> tuple[int, ...]:
    """Sort key that prefers the lexicographically smaller byte string under max()."""
    return (*(-x for x in b), 1)


def special_tokens(num_base: int) -> dict[int, str]:
    """Special id -> text for all 256 reserved ids (unnamed ones as Kimi names them: <|reserved_token_ID|>)."""
    return {num_base + k: SPECIAL_OFFSETS.get(k, f"<|reserved_token_{num_base + k}|>") for k in range(NUM_SPECIAL)}


def write_tokenizer(folder: Path, vocab: tuple[bytes, ...]) -> None:
    """tiktoken.model, tokenizer_config.json and chat_template.jinja, as Kimi ships them."""
    lines = [f"{base64.b64encode(tok).decode()} {rank}" for rank, tok in enumerate(vocab)]
    (folder / "tiktoken.model").write_text("\n".join(lines) + "\n")
    specials = special_tokens(len(vocab))
    decoder = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in specials.items()
        if not t.startswith("<|reserved_token_")
    }
    template = chat_template()
    cfg = {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [
            "<|im_end|>",
            "<|im_user|>",
            "<|im_assistant|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "[EOT]",
            "<|im_system|>",
            "<|im_middle|>",
        ],
        "auto_map": {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]},
        "bos_token": "[BOS]",
        "eos_token": "[EOS]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "TikTokenTokenizer",
        "chat_template": template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    (folder / "chat_template.jinja").write_text(template)


def read_tiktoken_model(path: Path) -> list[bytes]:
    """Token byte strings by rank from a tiktoken.model file (checks ranks are 0..N-1 in order)."""
    out: list[bytes] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        tok, rank = line.split()
        if int(rank) != len(out):
            raise ValueError(f"{path}:{lineno}: rank {rank}, expected {len(out)}")
        out.append(base64.b64decode(tok))
    return out
