"""Text ↔ token ids for the ``preprocessing`` and ``postprocessing`` models.

Validation lives here too, so a bad request is refused before it reaches an engine: the
preprocessing step knows the model's context window from the checkpoint it tokenizes for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from python_backends.word_lists import encode_word_lists


class InvalidRequestError(ValueError):
    """A request that can never be served as sent (maps to HTTP 400)."""


@dataclass(frozen=True)
class EncodedRequest:
    """The engine-facing form of one text request."""

    input_ids: np.ndarray
    request_output_len: int
    bad_words: np.ndarray
    stop_words: np.ndarray
    end_id: int
    pad_id: int


def context_window(model_dir: Path, default: int = 2048) -> int:
    """``max_position_embeddings`` of the checkpoint (or ``default`` if it has none)."""
    config = model_dir / "config.json"
    if not config.exists():
        return default
    data = json.loads(config.read_text())
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if isinstance(data.get(key), int):
            return int(data[key])
    return default


def as_text(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError("text must be valid UTF-8") from exc
    return str(value)


class TextEncoder:
    """Tokenizes queries and word lists for one tokenizer directory."""

    def __init__(
        self,
        tokenizer_dir: Path,
        max_context: int | None = None,
        add_special_tokens: bool = True,
    ) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.add_special_tokens = add_special_tokens
        self.max_context = max_context or context_window(tokenizer_dir)
        self.end_id = self._special_id("eos_token_id", 0)
        self.pad_id = self._special_id("pad_token_id", self.end_id)

    def _special_id(self, attr: str, fallback: int) -> int:
        value = getattr(self.tokenizer, attr, None)
        return int(value) if value is not None else fallback

    def encode(
        self,
        query: object,
        max_tokens: int,
        bad_words: Sequence[object] = (),
        stop_words: Sequence[object] = (),
        end_id: int | None = None,
        pad_id: int | None = None,
    ) -> EncodedRequest:
        """Tokenize and validate one request; raises :class:`InvalidRequestError`."""
        text = as_text(query)
        if not text:
            raise InvalidRequestError("text_input must not be empty")
        if max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {max_tokens}")
        ids = self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens)
        if len(ids) + max_tokens > self.max_context:
            raise InvalidRequestError(
                f"prompt of {len(ids)} tokens plus max_tokens={max_tokens} exceeds the "
                f"context window of {self.max_context} tokens"
            )
        return EncodedRequest(
            input_ids=np.asarray(ids, dtype=np.int32),
            request_output_len=int(max_tokens),
            bad_words=self._word_lists(bad_words),
            stop_words=self._word_lists(stop_words),
            end_id=self.end_id if end_id is None else int(end_id),
            pad_id=self.pad_id if pad_id is None else int(pad_id),
        )

    def _word_lists(self, words: Sequence[object]) -> np.ndarray:
        encoded = [
            self.tokenizer.encode(as_text(w), add_special_tokens=False) for w in words if as_text(w)
        ]
        return encode_word_lists(encoded)


class TextDecoder:
    """Turns engine output ids back into text."""

    def __init__(self, tokenizer_dir: Path, skip_special_tokens: bool = True) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.skip_special_tokens = skip_special_tokens

    def decode_batch(self, tokens: np.ndarray, sequence_length: np.ndarray) -> np.ndarray:
        """``TOKENS_BATCH [B, beams, n]`` and ``SEQUENCE_LENGTH [B, beams]`` → ``[B, beams]``."""
        batch = np.asarray(tokens)
        if batch.ndim == 2:
            batch = batch[None]
        lengths = np.asarray(sequence_length).reshape(batch.shape[0], -1)
        rows = [
            self.decode(beams, row_lengths)
            for beams, row_lengths in zip(batch, lengths, strict=True)
        ]
        out = np.empty((len(rows), max(len(r) for r in rows)), dtype=np.object_)
        out[:] = b""
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def decode(self, tokens: np.ndarray, sequence_length: np.ndarray) -> list[bytes]:
        """Decode ``[beam, tokens]`` with per-beam lengths into one UTF-8 text per beam.

        Ids the tokenizer does not know (a faulty engine) become U+FFFD rather than an
        error, so the caller sees the garbage instead of a failed request.
        """
        beams = np.atleast_2d(np.asarray(tokens))
        lengths = np.atleast_1d(np.asarray(sequence_length)).reshape(-1)
        vocab = len(self.tokenizer)
        texts: list[bytes] = []
        for beam, length in zip(beams, lengths, strict=False):
            ids = [int(t) for t in beam[: max(int(length), 0)]]
            known = [t for t in ids if 0 <= t < vocab]
            # No clean-up of spaces: chunk texts must concatenate to the whole text.
            text = str(
                self.tokenizer.decode(
                    known,
                    skip_special_tokens=self.skip_special_tokens,
                    clean_up_tokenization_spaces=False,
                )
            )
            if len(known) != len(ids):
                text += "\ufffd"
            texts.append(text.encode("utf-8"))
        return texts


def tokenizer_vocab_size(tokenizer_dir: Path) -> int:
    """Number of ids the tokenizer can decode (engines that invent tokens stay inside it)."""
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
