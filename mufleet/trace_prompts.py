"""Prompt text for trace requests: the same hash id always gives the same block of text.

Mooncake traces carry no text, only ``hash_ids``: one id per 512-token block, equal ids
meaning an equal prefix. To replay such a trace on a real fleet, each id becomes a block of
words drawn by an RNG seeded with the id, so two requests that share leading ids share a
leading text, and therefore a leading *token* sequence and the nodes' KV cache.

Token boundaries must not move when blocks are concatenated, or a shared text would not
be a shared token prefix. A block is ``block_tokens - 1`` words, each written with a leading
space, then a newline: with a tokenizer given, only words that encode to exactly one token
with their leading space are used, and the newline is one token that no pre-tokenizer of
the Llama-3 / GPT kind merges with the word after it, so a block is exactly
``block_tokens`` tokens wherever it stands. Without a tokenizer a fixed list of common
English words is used (about one token each on most BPE vocabularies).

A local fleet cannot take 512-token × 100-block prompts, so :func:`scaled_request` maps a
trace request onto ``block_tokens``-token blocks (its last block partial, as in the trace)
and scales the output length the same way, capped.
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mufleet.traces import MOONCAKE_BLOCK_TOKENS, TraceRequest

__all__ = [
    "BASIC_WORDS",
    "PromptBuilder",
    "ScaledRequest",
    "Tokenizer",
    "WordBank",
    "load_tokenizer",
    "scaled_request",
]

_BASIC_TEXT = """
    about above across action after again against agent almost along already also always
    among answer another around asked away back because become been before began being
    below best better between both bring build called came cannot care case cause change
    check clear close come common could course cover data days deal each early east easy
    either else end enough even every example face fact family far fast field file find
    first follow food form found four free from front full gave general give given going
    good great group grow half hand happen hard have head hear help here high hold home
    hope hour house idea important into island issue just keep kind know land large last
    late later learn least leave left less letter level life light line list little live
    long look made main make many mark matter mean might mind miss model money more most
    move much must name near need never next night note nothing notice number often once
    only open order other over page paper part pass past people place plan plant point
    power press problem public pull question quick rather read ready real reason record
    remember report rest result right river road room round rule same save school second
    seem send sense serve set several shall short should show side simple since size
    small some sound south space speak stand start state stay still stop story street
    strong study such sure system table take talk tell than that their them then there
    these they thing think this those though thought three through time today together
    told took toward tree true turn under until upon used very voice wait walk want watch
    water week well went were west what when where which while white whole wide will
    with within without word work world would write year young
"""
BASIC_WORDS: tuple[str, ...] = tuple(sorted(set(_BASIC_TEXT.split())))
"""Common English words for a builder without a tokenizer (no duplicates, sorted)."""

_WORD = re.compile(r"[a-z]{3,}")
_SEPARATOR = "\n"
_CACHE_BLOCKS = 65536
"""Block texts kept per builder (a Mooncake window repeats ids a lot)."""


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the builder uses."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def get_vocab(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class ScaledRequest:
    """A trace request mapped onto a local fleet's block size and output budget."""

    arrival_s: float
    blocks: tuple[tuple[int, int], ...]
    """``(block id, tokens)`` in prompt order; only the last block may be partial."""
    output_tokens: int

    @property
    def input_tokens(self) -> int:
        return sum(n for _, n in self.blocks)


def _unique_block_id(index: int, position: int) -> int:
    """Ids for traces without ``hash_ids`` (Azure): negative, so they never meet a
    Mooncake id, and distinct per request, so no two prompts share a prefix."""
    return -(index * 100_003 + position + 1)


def scaled_request(
    request: TraceRequest,
    block_tokens: int,
    *,
    source_block_tokens: int = MOONCAKE_BLOCK_TOKENS,
    output_scale: float | None = None,
    max_output_tokens: int = 256,
    max_input_tokens: int | None = None,
    index: int = 0,
) -> ScaledRequest:
    """``request`` with each ``source_block_tokens`` block of its prompt turned into a
    ``block_tokens`` block (the last one partial in proportion), its output scaled by
    ``output_scale`` (default: the same ``block_tokens / source_block_tokens``) and capped
    at ``max_output_tokens``. ``max_input_tokens`` drops trailing blocks past the cap (the
    kept part is still a prefix, so sharing is preserved). A request without ``hash_ids``
    gets blocks of its own (``index`` keeps them distinct per request).
    """
    if block_tokens < 2:
        raise ValueError(f"block_tokens must be at least 2, got {block_tokens}")
    if max_output_tokens < 1:
        raise ValueError(f"max_output_tokens must be at least 1, got {max_output_tokens}")
    scale = block_tokens / source_block_tokens
    ids = list(request.hash_ids)
    if not ids:
        count = max(1, -(-request.input_tokens // source_block_tokens))
        ids = [_unique_block_id(index, i) for i in range(count)]
    last_source = request.input_tokens - source_block_tokens * (len(ids) - 1)
    last = min(block_tokens, max(1, round(max(last_source, 1) * scale)))
    blocks = [(h, block_tokens) for h in ids[:-1]] + [(ids[-1], last)]
    if max_input_tokens is not None:
        kept: list[tuple[int, int]] = []
        total = 0
        for block_id, n in blocks:
            if total + n > max_input_tokens:
                break
            kept.append((block_id, n))
            total += n
        blocks = kept or [(blocks[0][0], min(blocks[0][1], max(max_input_tokens, 1)))]
    out_scale = scale if output_scale is None else output_scale
    output = max(1, min(max_output_tokens, round(request.output_tokens * out_scale)))
    return ScaledRequest(request.arrival_s, tuple(blocks), output)


class WordBank:
    """A fixed, sorted word list and seeded draws from it."""

    def __init__(self, words: Sequence[str]) -> None:
        if len(words) < 16:
            raise ValueError(f"a word bank needs at least 16 words, got {len(words)}")
        self.words = tuple(words)

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer | None) -> WordBank:
        """Words that are one token each with a leading space on ``tokenizer`` (taken from
        its vocabulary), or :data:`BASIC_WORDS` without one."""
        if tokenizer is None:
            return cls(BASIC_WORDS)
        candidates = set()
        for piece in tokenizer.get_vocab():
            text = piece.replace("Ġ", " ").replace("▁", " ")
            if text.startswith(" ") and _WORD.fullmatch(text[1:]):
                candidates.add(text[1:])
        words = sorted(
            w for w in candidates if len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1
        )
        return cls(words)

    def draw(self, seed: int | str, count: int) -> list[str]:
        rng = random.Random(seed)
        return [rng.choice(self.words) for _ in range(count)]

    def text(self, seed: int | str, count: int) -> str:
        """``count`` words, each with a leading space (``count`` tokens on the bank's
        tokenizer)."""
        return "".join(" " + w for w in self.draw(seed, count))


class PromptBuilder:
    """Deterministic prompt text for trace requests (see the module docstring).

    ``block(id)`` is the text of one block, ``prompt(request)`` the concatenation of a
    request's blocks. A :class:`TraceRequest` is scaled with :func:`scaled_request` and this
    builder's ``block_tokens`` first.
    """

    def __init__(
        self,
        tokenizer: Tokenizer | None,
        block_tokens: int,
        *,
        seed: int = 0,
        max_output_tokens: int = 256,
        max_input_tokens: int | None = None,
        output_scale: float | None = None,
    ) -> None:
        if block_tokens < 2:
            raise ValueError(f"block_tokens must be at least 2, got {block_tokens}")
        self.tokenizer = tokenizer
        self.block_tokens = block_tokens
        self.seed = seed
        self.max_output_tokens = max_output_tokens
        self.max_input_tokens = max_input_tokens
        self.output_scale = output_scale
        self.words = WordBank.for_tokenizer(tokenizer)
        self._cache: OrderedDict[int, str] = OrderedDict()
        if tokenizer is not None:
            self._check_separator(tokenizer)

    def _check_separator(self, tokenizer: Tokenizer) -> None:
        a, b = self.block(1), self.block(2)
        one = tokenizer.encode(a, add_special_tokens=False)
        both = tokenizer.encode(a + b, add_special_tokens=False)
        if len(one) != self.block_tokens or both[: len(one)] != one:
            raise ValueError(
                "this tokenizer merges across the block separator: shared text would not be "
                "a shared token prefix"
            )

    def block(self, block_id: int, tokens: int | None = None) -> str:
        """The text of block ``block_id``; ``tokens`` < ``block_tokens`` gives its first
        ``tokens`` tokens (a prefix of the full block's text)."""
        full = self._cache.get(block_id)
        if full is None:
            words = self.words.draw(f"{self.seed}:{block_id}", self.block_tokens - 1)
            full = "".join(" " + w for w in words) + _SEPARATOR
            self._cache[block_id] = full
            if len(self._cache) > _CACHE_BLOCKS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(block_id)
        n = self.block_tokens if tokens is None else tokens
        if n >= self.block_tokens:
            return full
        if n < 1:
            raise ValueError(f"a block has at least 1 token, got {n}")
        return "".join(" " + w for w in full[:-1].split(" ")[1 : n + 1])

    def scale(self, request: TraceRequest, index: int = 0) -> ScaledRequest:
        return scaled_request(
            request,
            self.block_tokens,
            output_scale=self.output_scale,
            max_output_tokens=self.max_output_tokens,
            max_input_tokens=self.max_input_tokens,
            index=index,
        )

    def prompt(self, request: TraceRequest | ScaledRequest, index: int = 0) -> str:
        scaled = request if isinstance(request, ScaledRequest) else self.scale(request, index)
        return "".join(self.block(block_id, n) for block_id, n in scaled.blocks)

    def count_tokens(self, text: str) -> int | None:
        """Tokens of ``text`` without special tokens (``None`` without a tokenizer)."""
        if self.tokenizer is None:
            return None
        return len(self.tokenizer.encode(text, add_special_tokens=False))


class _RustTokenizer:
    """A ``tokenizer.json`` through the ``tokenizers`` library: the same pipeline as the
    checkpoint's fast tokenizer, without importing transformers (and torch with it)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self._tokenizer = RustTokenizer.from_file(str(path))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def get_vocab(self) -> dict[str, int]:
        vocab: dict[str, int] = self._tokenizer.get_vocab()
        return vocab


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A Hugging Face tokenizer from a local directory (offline): its ``tokenizer.json``
    when it has one, else ``transformers.AutoTokenizer``."""
    directory = Path(path)
    if (directory / "tokenizer.json").is_file():
        return _RustTokenizer(directory / "tokenizer.json")
    from transformers import AutoTokenizer

    tokenizer: Tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    return tokenizer
