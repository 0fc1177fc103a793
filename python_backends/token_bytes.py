"""Streaming token ids in chunks that never split a UTF-8 character.

With byte-level BPE one character can span several tokens ("é" is two). A stream that
sends each token on its own makes every per-chunk decode end in U+FFFD. The streaming
side therefore holds tokens back until the bytes they stand for complete a character,
and sends them together: concatenated chunk texts then equal the text of the whole
sequence, which is what a client that prints chunks as they come expects.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from typing import Any

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
MAX_HELD_TOKENS = 8
"""Tokens held for one character at most (it has at most 4 bytes; special tokens have none)."""


def _byte_level_alphabet() -> dict[str, int]:
    """The printable stand-in character of each byte in byte-level BPE vocabularies.

    Bytes that print as themselves keep their code point; the rest are moved to 256 and
    up, in byte order (the scheme GPT-2 introduced and Llama 3 kept).
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    alphabet = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            alphabet[chr(256 + shifted)] = b
            shifted += 1
    return alphabet


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


class TokenBytes:
    """The bytes each token id decodes to (empty for special and unknown ids)."""

    def __init__(self, table: Sequence[bytes]) -> None:
        self.table = tuple(table)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenBytes:
        special = set(getattr(tokenizer, "all_special_ids", ()))
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        alphabet = _byte_level_alphabet() if _is_byte_level(tokenizer) else None
        table: list[bytes] = []
        for token_id, piece in enumerate(pieces):
            if token_id in special or piece is None:
                table.append(b"")
            elif alphabet is not None:
                table.append(bytes(alphabet.get(c, 0x3F) for c in piece))
            elif match := _BYTE_FALLBACK.match(piece):
                table.append(bytes([int(match.group(1), 16)]))
            else:  # SentencePiece: "▁" marks a space
                table.append(piece.replace("\u2581", " ").encode("utf-8"))
        return cls(table)

    def of(self, token_id: int) -> bytes:
        return self.table[token_id] if 0 <= token_id < len(self.table) else b""


class Utf8Holdback:
    """Per-stream buffer: :meth:`push` returns the ids that may be sent now.

    A UTF-8 decoder of the whole stream (invalid bytes replaced by U+FFFD, as tokenizers
    decode them) runs alongside. Tokens are released up to the first token whose bytes
    the decoder still holds, and only where that is a token boundary: decoding the
    released chunk alone then gives exactly what the whole-stream decode gives for it.

    After every release, what is held is what a fresh holdback holds once the same tokens
    are pushed into it (a token without bytes just before a split character goes with the
    tokens before it, as a fresh holdback sends it at once), so a stream continued
    elsewhere from the tokens sent is cut into the same chunks.
    """

    def __init__(self, token_bytes: TokenBytes) -> None:
        self.token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held: list[tuple[int, int]] = []
        """Held ``(token id, offset of its first byte)``."""
        self._offset = 0

    def push(self, token_ids: Sequence[int]) -> list[int]:
        """Add ``token_ids``; the ids that end on a character boundary (maybe none)."""
        ready: list[int] = []
        for token_id in token_ids:
            data = self.token_bytes.of(token_id)
            self._held.append((token_id, self._offset))
            self._offset += len(data)
            self._decoder.decode(data)
            pending = len(self._decoder.getstate()[0])
            if pending == 0:  # every byte so far decoded: a boundary after this token
                cut = len(self._held)
            else:  # a boundary only where the pending character starts a token
                settled = self._offset - pending
                starts = [start for _, start in self._held]
                # The last token there: tokens without bytes just before it go now, as a
                # fresh holdback (another node's, after a migration) would send them.
                cut = len(starts) - 1 - starts[::-1].index(settled) if settled in starts else 0
            if cut:
                ready.extend(t for t, _ in self._held[:cut])
                del self._held[:cut]
        if len(self._held) >= MAX_HELD_TOKENS:
            ready.extend(self.flush())
        return ready

    def flush(self) -> list[int]:
        """Everything still held (the end of the stream)."""
        held = [t for t, _ in self._held]
        self._held.clear()
        self._decoder.reset()
        self._offset = 0
        return held
