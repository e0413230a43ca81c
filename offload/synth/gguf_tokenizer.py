"""A checkpoint folder's tokenizer and chat template written as GGUF metadata, the way llama.cpp's converter does.

Kimi's tiktoken.model becomes `tokenizer.ggml.pre` "kimi-k2" with merges rebuilt from the BPE ranks: a token's merge
is the pair tiktoken's own BPE ends with when it encodes the token using only lower ranks. Tokens are spelled in
GPT-2's byte-to-unicode alphabet, specials as their text (CONTROL; an HF added token not marked special is
USER_DEFINED), ids the tokenizer leaves free up to config.json's vocab_size as UNUSED "[PAD{i}]". An HF tokenizer.json
is written when its pre-tokenizer is one `gguf_vocab.PRE_TOKENIZERS` names (kimi-k2, deepseek-v3, gpt-2).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gguf import TokenType

from offload.engine.chat_format import ChatFormat
from offload.engine.detokenize import byte_level_alphabet
from offload.engine.gguf_vocab import PRE_TOKENIZERS
from offload.engine.tokenizer import Tokenizer, TokenizerError
from offload.hf_config import HfConfig
from offload.synth.tokenizer import read_tiktoken_model

if TYPE_CHECKING:
    import gguf

log = logging.getLogger(__name__)

__all__ = ["add_tokenizer", "byte_level", "rank_merge"]


def add_tokenizer(writer: gguf.GGUFWriter, folder: Path) -> None:
    """Write `folder`'s tokenizer (tiktoken.model + tokenizer_config.json, or tokenizer.json) and chat template."""
    folder = Path(folder)
    tok = Tokenizer.from_dir(folder)  # checks the files; its ids, bos and eos are what the runtime uses
    plain_added: set[int] = set()  # HF added tokens not marked special: USER_DEFINED
    if tok.kind == "tiktoken":
        pre = "kimi-k2"
        normal, merges = _tiktoken_vocab(folder / "tiktoken.model")
    else:
        pre, normal, merges, plain_added = _hf_vocab(folder / "tokenizer.json")
    cfg = HfConfig.from_dir(folder).model if (folder / "config.json").is_file() else None
    size = tok.vocab_size if cfg is None else cfg.vocab_size
    if size < tok.vocab_size:
        raise TokenizerError(f"{folder}: config.json has vocab_size {size} but the tokenizer has {tok.vocab_size} ids")
    special = {i: t for t, i in tok.special_ids.items()}
    normal = {i: t for i, t in normal.items() if i not in special}  # an HF added token may be in the vocab too
    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        if i in special:
            tokens.append(special[i])
            types.append(TokenType.USER_DEFINED if i in plain_added else TokenType.CONTROL)
        elif i in normal:
            tokens.append(normal[i])
            types.append(TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
    _check_reached(normal, merges, folder)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    if cfg is not None and cfg.pad_token_id is not None and cfg.pad_token_id < size:
        writer.add_pad_token_id(cfg.pad_token_id)
    writer.add_add_bos_token(False)  # the chat template writes every special; encode adds none
    writer.add_add_eos_token(False)
    template = ChatFormat.from_dir(folder, tok).template_source
    if template is not None:
        writer.add_chat_template(template)
    log.debug("GGUF tokenizer of %s: %d ids, %d merges, pre %s", folder, size, len(merges), pre)


def byte_level(token: bytes) -> str:
    """A token's bytes in GPT-2's byte-to-unicode spelling."""
    return "".join(map(_byte_chars().__getitem__, token))


def rank_merge(ranks: Mapping[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes] | None:
    """The two parts tiktoken's BPE leaves when it encodes `token` with ranks below `rank` only; None if not two."""
    parts = [token[k : k + 1] for k in range(len(token))]
    while len(parts) > 1:
        joined = [ranks.get(a + b, rank) for a, b in itertools.pairwise(parts)]
        best = min(range(len(joined)), key=joined.__getitem__)  # the first lowest, as tiktoken picks
        if joined[best] >= rank:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _bpe_by_merges(word: str, ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """llama.cpp's BPE of one byte-level piece: the lowest-ranked merge first, the leftmost among equals."""
    syms = list(word)
    while found := [(ranks[p], k) for k, p in enumerate(itertools.pairwise(syms)) if p in ranks]:
        _, k = min(found)
        syms[k : k + 2] = [syms[k] + syms[k + 1]]
    return syms


def _check_reached(normal: Mapping[int, str], merges: list[str], folder: Path) -> None:
    """Warn about tokens their merges do not build: tiktoken (and tokenizer.json's ignore_merges) return a piece that
    is a token whole, llama.cpp and the GGUF reader split it, so the two encode such a piece differently."""
    ranks = {(m[: m.index(" ")], m[m.index(" ") + 1 :]): r for r, m in enumerate(merges)}
    lost = [t for t in normal.values() if len(t) > 1 and _bpe_by_merges(t, ranks) != [t]]
    if lost:
        log.warning(
            "%s: %d tokens are not built by their merges (e.g. %r); llama.cpp splits a piece equal to one of them "
            "where the folder's tokenizer keeps it whole",
            folder,
            len(lost),
            lost[0],
        )


def _tiktoken_vocab(path: Path) -> tuple[dict[int, str], list[str]]:
    """id -> byte-level text of the base tokens, and the merges in rank order."""
    base = read_tiktoken_model(path)
    ranks = {t: r for r, t in enumerate(base)}
    merges: list[str] = []
    for rank, token in enumerate(base):
        # a token that is no merge of two lower ones gets none, as llama.cpp's converter does (_check_reached warns)
        if len(token) > 1 and (pair := rank_merge(ranks, token, rank)) is not None:
            merges.append(f"{byte_level(pair[0])} {byte_level(pair[1])}")
    return {r: byte_level(t) for r, t in enumerate(base)}, merges


def _hf_vocab(path: Path) -> tuple[str, dict[int, str], list[str], set[int]]:
    """pre-tokenizer name, id -> token text, merges, and the ids of added tokens not marked special."""
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))  # Tokenizer.from_dir has checked it
    model = spec["model"]
    if spec.get("normalizer"):
        raise TokenizerError(f"{path}: a normalizer cannot be written to GGUF (llama.cpp's 'gpt2' model has none)")
    merges: list[str] = []
    for m in model.get("merges") or []:
        pair = m.split(" ", 1) if isinstance(m, str) else m
        if len(pair) != 2 or any(" " in p for p in pair):
            raise TokenizerError(f"{path}: merge {m!r}; expected 'left right' of two byte-level tokens")
        merges.append(" ".join(pair))
    plain = {t["id"] for t in spec.get("added_tokens") or [] if not t.get("special")}
    return _hf_pre(spec.get("pre_tokenizer"), path), {i: t for t, i in model["vocab"].items()}, merges, plain


def _hf_pre(pre: dict[str, Any] | None, path: Path) -> str:
    """The tokenizer.ggml.pre that splits text as this tokenizer.json's pre_tokenizer does."""
    pre = pre or {}
    steps: list[dict[str, Any]] = pre.get("pretokenizers") or [] if pre.get("type") == "Sequence" else [pre]
    *splits, last = steps or [{}]
    if last.get("type") == "ByteLevel" and not last.get("add_prefix_space"):
        if last.get("use_regex", True) and not splits:
            return "gpt-2"  # ByteLevel's own regex is GPT-2's
        isolated = all(
            s.get("type") == "Split" and s.get("behavior") == "Isolated" and not s.get("invert") for s in splits
        )
        patterns = tuple((s.get("pattern") or {}).get("Regex") for s in splits)
        name = next((n for n, p in PRE_TOKENIZERS.items() if p == patterns), None)
        if isolated and not last.get("use_regex", True) and name is not None:
            return name
    raise TokenizerError(
        f"{path}: pre_tokenizer {json.dumps(pre)[:200]} is none that GGUF names here; supported: Kimi's split "
        "(kimi-k2), DeepSeek-V3's three splits (deepseek-v3), or GPT-2's ByteLevel (gpt-2)"
    )


@functools.cache
def _byte_chars() -> dict[int, str]:
    return {b: c for c, b in byte_level_alphabet().items()}
