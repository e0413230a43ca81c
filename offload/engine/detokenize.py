"""Token ids back to text: the byte-level alphabet of HF tokenizers and an incremental UTF-8 detokenizer."""

from __future__ import annotations

import codecs
import functools
from collections.abc import Callable


@functools.cache
def byte_level_alphabet() -> dict[str, int]:
    """Character -> byte of GPT-2's byte-level BPE (`bytes_to_unicode`), which spells every byte as a printable char.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes map, in order, to U+0100 onwards."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    others = (b for b in range(256) if b not in chars)
    chars.update({b: chr(256 + n) for n, b in enumerate(others)})
    return {c: b for b, c in chars.items()}


class StreamDecoder:
    """Incremental detokenizer: never emits a broken UTF-8 character."""

    def __init__(self, token_bytes: Callable[[int], bytes], skip: Callable[[int], bool] | None = None) -> None:
        self._token_bytes = token_bytes
        self._skip = skip
        # CPython's incremental decoder holds back an incomplete tail and replaces invalid bytes exactly as a one-shot
        # bytes.decode(errors="replace") would, so the pieces always add up to Tokenizer.decode of the same ids.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The newly completed text (may be ""), holding back an incomplete UTF-8 tail."""
        if self._skip is not None and self._skip(token_id):
            self._token_bytes(token_id)  # still reject ids out of range
            return ""
        return self._utf8.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is held back, decoded with replacement; the decoder then starts afresh."""
        return self._utf8.decode(b"", final=True)
