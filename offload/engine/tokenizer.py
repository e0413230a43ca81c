"""Kimi's tiktoken tokenizer (tiktoken.model + tokenizer_config.json) or a byte-level HF tokenizer.json.

Special tokens come only from trusted template text (`encode_with_specials`); `encode` treats every string as plain
text, so a user who types "<|im_end|>" gets the tokens of those ten characters, never the stop token."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from offload.engine.detokenize import StreamDecoder, byte_level_alphabet
from offload.errors import OffloadError
from offload.tokenizer_pattern import KIMI_PATTERN

log = logging.getLogger(__name__)

__all__ = ["KIMI_PATTERN", "NUM_RESERVED", "StreamDecoder", "Tokenizer", "TokenizerError"]

NUM_RESERVED = 256  # Kimi reserves this many special ids right after the base tokens
PREFER = ("auto", "tiktoken", "hf")


class TokenizerError(OffloadError):
    """A tokenizer file is missing or malformed, or a token is unknown."""


class Tokenizer:
    """Kimi's tiktoken tokenizer (or an HF tokenizer.json), with special tokens that user text can never produce."""

    def __init__(
        self,
        *,
        kind: str,
        table: Sequence[bytes | None],
        special_ids: dict[str, int],
        bos: str,
        eos: str,
        encode_plain: Callable[[str], list[int]],
        encode_trusted: Callable[[str], list[int]],
        source: Path,
        add_bos: bool = False,
    ) -> None:
        self.kind = kind
        self.add_bos = add_bos  # a raw text prompt starts with BOS (GGUF's tokenizer.ggml.add_bos_token)
        self.vocab_size = len(table)
        self.special_ids = dict(special_ids)
        self._table = tuple(table)  # id -> raw bytes (None: an id the file leaves unused)
        self._specials = frozenset(special_ids.values())
        self._encode_plain = encode_plain
        self._encode_trusted = encode_trusted
        self.source = source
        # the longest token's bytes: a text of n bytes is at least n / max_token_bytes tokens (a cheap bound)
        self.max_token_bytes = max((len(b) for b in self._table if b), default=1)
        self.bos_id = self.special_id(bos)
        self.eos_id = self.special_id(eos)
        im_end = self.special_ids.get("<|im_end|>")
        self.stop_ids = frozenset({self.eos_id} if im_end is None else {self.eos_id, im_end})

    @classmethod
    def from_dir(cls, folder: str | Path, prefer: str = "auto") -> Tokenizer:
        """auto: tiktoken.model (+ tokenizer_config.json) when present, else tokenizer.json; or force one kind."""
        folder = Path(folder)
        if prefer not in PREFER:
            raise TokenizerError(f"prefer = {prefer!r}; expected one of {', '.join(PREFER)}")
        has_tiktoken, has_hf = (folder / "tiktoken.model").is_file(), (folder / "tokenizer.json").is_file()
        if prefer == "tiktoken" or (prefer == "auto" and has_tiktoken):
            return _load_tiktoken(folder)
        if prefer == "hf" or has_hf:
            return _load_hf(folder)
        raise TokenizerError(
            f"{folder}: no tokenizer; expected tiktoken.model + tokenizer_config.json (Kimi) or tokenizer.json "
            "(Hugging Face) in the checkpoint folder"
        )

    def special_id(self, text: str) -> int:
        """The id of a special token by its text."""
        if text not in self.special_ids:
            named = [t for t in self.special_ids if not t.startswith("<|reserved_token_")]
            raise TokenizerError(
                f"{self.source}: no special token {text!r}; known ones include {', '.join(named[:8])}"
                + (f" (+{len(named) - 8} more)" if len(named) > 8 else "")
            )
        return self.special_ids[text]

    def is_special(self, token_id: int) -> bool:
        return token_id in self._specials

    def encode(self, text: str) -> list[int]:
        """Ordinary (untrusted) text: special-token strings are encoded as the plain text they are."""
        return self._encode_plain(text)

    def encode_prompt(self, text: str, specials: bool = False) -> list[int]:
        """A raw text prompt (no chat template): BOS first when the tokenizer asks for one (add_bos), as llama.cpp
        does; `specials`: the text is the client's own rendering, its special-token text meaning the specials."""
        ids = self.encode_with_specials(text) if specials else self.encode(text)
        return [self.bos_id, *ids] if self.add_bos and ids[:1] != [self.bos_id] else ids

    def encode_with_specials(self, text: str) -> list[int]:
        """Trusted template text: special-token strings become their ids, the rest is encoded as ordinary text."""
        return self._encode_trusted(text)

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token (special tokens: their text as UTF-8)."""
        tok = self._table[token_id] if 0 <= token_id < self.vocab_size else None
        if tok is None:
            what = "is unused" if 0 <= token_id < self.vocab_size else f"is out of range 0..{self.vocab_size - 1}"
            raise TokenizerError(f"token id {token_id} {what} in the tokenizer of {self.source}")
        return tok

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of the ids; bytes that are not valid UTF-8 become U+FFFD."""
        data = b"".join(self.token_bytes(i) for i in ids if not (skip_special and self.is_special(i)))
        return data.decode("utf-8", errors="replace")

    def stream(self, skip_special: bool = False) -> StreamDecoder:
        """An incremental decoder for ids generated one at a time."""
        return StreamDecoder(self.token_bytes, self.is_special if skip_special else None)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, specials={len(self.special_ids)})"


def _load_tiktoken(folder: Path) -> Tokenizer:
    import tiktoken

    path = folder / "tiktoken.model"
    base = _read_ranks(path)
    names = _special_names(folder / "tokenizer_config.json", len(base))
    specials = {names.get(i, f"<|reserved_token_{i}|>"): i for i in range(len(base), len(base) + NUM_RESERVED)}
    if len(specials) != NUM_RESERVED:
        raise TokenizerError(f"{folder / 'tokenizer_config.json'}: two special ids share one content string")
    enc = tiktoken.Encoding(
        name=f"kimi:{folder.name}",
        pat_str=KIMI_PATTERN,
        mergeable_ranks={tok: rank for rank, tok in enumerate(base)},
        special_tokens=specials,
        explicit_n_vocab=len(base) + NUM_RESERVED,
    )
    bos, eos = _bos_eos(folder / "tokenizer_config.json")
    log.debug("tiktoken tokenizer from %s: %d base tokens + %d special", folder, len(base), NUM_RESERVED)
    return Tokenizer(
        kind="tiktoken",
        table=[*base, *(t.encode() for t in sorted(specials, key=specials.__getitem__))],
        special_ids=specials,
        bos=bos,
        eos=eos,
        encode_plain=enc.encode_ordinary,
        encode_trusted=lambda text: enc.encode(text, allowed_special="all"),
        source=path,
    )


def _read_ranks(path: Path) -> list[bytes]:
    """Token bytes by rank from `base64(token) rank` lines; ranks must be 0..N-1, each once."""
    if not path.is_file():
        raise TokenizerError(f"{path} not found; Kimi checkpoints ship it beside tokenizer_config.json")
    by_rank: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected two fields")
            tok, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error) as e:
            raise TokenizerError(
                f"{path}:{lineno}: expected 'base64(token bytes) rank', got {line[:60]!r} ({e})"
            ) from e
        if rank in by_rank or tok in seen:
            other = rank if rank in by_rank else seen[tok]
            raise TokenizerError(f"{path}:{lineno}: rank {rank} / token {tok!r} repeats rank {other}")
        by_rank[rank], seen[tok] = tok, rank
    if not by_rank:
        raise TokenizerError(f"{path} holds no tokens")
    if len(by_rank) != max(by_rank) + 1 or min(by_rank) != 0:
        missing = next(r for r in range(max(by_rank) + 1) if r not in by_rank)
        raise TokenizerError(
            f"{path}: rank {missing} is missing ({len(by_rank)} tokens, highest rank {max(by_rank)}); "
            "ranks must be 0..N-1"
        )
    return [by_rank[r] for r in range(len(by_rank))]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise TokenizerError(f"{path} not found; {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _special_names(path: Path, num_base: int) -> dict[int, str]:
    """Named special ids from tokenizer_config.json's added_tokens_decoder, checked to lie in the special range."""
    cfg = _read_json(path, "it names Kimi's special tokens (added_tokens_decoder) for tiktoken.model")
    decoder = cfg.get("added_tokens_decoder")
    if not isinstance(decoder, dict) or not decoder:
        raise TokenizerError(
            f'{path}: no added_tokens_decoder; expected {{"<id>": {{"content": "[BOS]", ...}}, ...}} naming '
            f"the special ids {num_base}..{num_base + NUM_RESERVED - 1}"
        )
    out: dict[int, str] = {}
    for key, entry in decoder.items():
        content = entry.get("content") if isinstance(entry, dict) else None
        if not key.isdigit() or not isinstance(content, str) or not content:
            raise TokenizerError(f"{path}: added_tokens_decoder[{key!r}] = {entry!r}; expected an id and a content")
        if not num_base <= int(key) < num_base + NUM_RESERVED:
            raise TokenizerError(
                f"{path}: special {content!r} has id {key}, outside {num_base}..{num_base + NUM_RESERVED - 1} (the "
                f"{NUM_RESERVED} ids after the {num_base} base tokens of tiktoken.model); do the two files belong "
                "together?"
            )
        out[int(key)] = content
    return out


def _bos_eos(path: Path) -> tuple[str, str]:
    """bos_token / eos_token of tokenizer_config.json (a string or {"content": ...}); [BOS] / [EOS] by default."""
    cfg = _read_json(path, "") if path.is_file() else {}

    def name(key: str, default: str) -> str:
        v = cfg.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        return v if isinstance(v, str) and v else default

    return name("bos_token", "[BOS]"), name("eos_token", "[EOS]")


def _load_hf(folder: Path) -> Tokenizer:
    path = folder / "tokenizer.json"
    spec = _read_json(path, "expected tiktoken.model + tokenizer_config.json (Kimi) or tokenizer.json (Hugging Face)")
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or not _has_byte_level(spec.get("decoder")):
        raise TokenizerError(
            f"{path}: model {model.get('type')!r} with decoder {(spec.get('decoder') or {}).get('type')!r}; only "
            "byte-level BPE (decoder ByteLevel, no byte_fallback) is supported, as Kimi and DeepSeek ship"
        )
    alphabet = byte_level_alphabet()
    vocab: dict[str, int] = model.get("vocab") or {}
    added: list[dict[str, Any]] = spec.get("added_tokens") or []
    for t in added:
        if not isinstance(t, dict) or not isinstance(t.get("id"), int) or not isinstance(t.get("content"), str):
            raise TokenizerError(f"{path}: added_tokens entry {t!r}; expected {{'id': int, 'content': str, ...}}")
    if not vocab or not all(isinstance(i, int) and i >= 0 for i in vocab.values()):
        raise TokenizerError(f"{path}: model.vocab must map token strings to ids 0, 1, ...")
    size = max([*vocab.values(), *(t["id"] for t in added)], default=-1) + 1
    table: list[bytes | None] = [None] * size
    for text, i in vocab.items():
        if any(c not in alphabet for c in text):
            raise TokenizerError(f"{path}: vocab token {text!r} is not in the byte-level alphabet; not byte-level BPE")
        table[i] = bytes(alphabet[c] for c in text)
    for t in added:  # every added token counts as special here, so user text can never produce one
        t["special"] = True
        table[t["id"]] = t["content"].encode()
    encode_plain, encode_trusted = hf_encoders(spec, path)
    bos, eos = _bos_eos(folder / "tokenizer_config.json")
    log.debug("HF tokenizer from %s: %d ids, %d added", folder, size, len(added))
    return Tokenizer(
        kind="hf",
        table=table,
        special_ids={t["content"]: t["id"] for t in added},
        bos=bos,
        eos=eos,
        encode_plain=encode_plain,
        encode_trusted=encode_trusted,
        source=path,
    )


def hf_encoders(spec: dict[str, Any], source: Path) -> tuple[Callable[[str], list[int]], Callable[[str], list[int]]]:
    """Plain and trusted encoders of a tokenizer.json spec whose added tokens are all marked special."""
    import tokenizers

    text = json.dumps(spec)
    try:
        plain, trusted = (tokenizers.Tokenizer.from_str(text) for _ in range(2))
    except Exception as e:  # the Rust side raises a bare Exception
        raise TokenizerError(f"{source}: the tokenizers library cannot load it: {e}") from e
    # Two instances so each encode keeps its own setting without mutating shared state between threads.
    plain.encode_special_tokens = True
    trusted.encode_special_tokens = False
    return (
        lambda text: plain.encode(_scrub(text), add_special_tokens=False).ids,
        lambda text: trusted.encode(_scrub(text), add_special_tokens=False).ids,
    )


def _has_byte_level(decoder: dict[str, Any] | None) -> bool:
    if not decoder:
        return False
    return decoder.get("type") == "ByteLevel" or any(_has_byte_level(d) for d in decoder.get("decoders") or [])


def _scrub(text: str) -> str:
    """Lone surrogates (JSON can carry "\\ud800") become U+FFFD, as tiktoken does; tokenizers would raise on them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text
