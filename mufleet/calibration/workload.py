"""The request classes a calibration sweeps and the prompts that realise them."""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.cost_model import RequestShape


@dataclass(frozen=True)
class RequestClass:
    """Requests of one shape: prompt length, the part of it shared by the class, output."""

    input_tokens: int
    prefix_fraction: float
    output_tokens: int

    @property
    def name(self) -> str:
        return f"in{self.input_tokens}-p{round(self.prefix_fraction * 100)}-out{self.output_tokens}"


def grid(
    inputs: Sequence[int], prefixes: Sequence[float], outputs: Sequence[int]
) -> list[RequestClass]:
    return [RequestClass(i, p, o) for i in inputs for p in prefixes for o in outputs]


@dataclass(frozen=True)
class Sweep:
    """What one calibration measures."""

    fit: list[RequestClass]
    heldout: list[RequestClass]
    full_samples: int = 200
    """Requests behind every load point the capacity rests on (p99 needs ≥ 2 above it)."""
    max_level: int = 1024
    """The capacity search doubles concurrency up to here unless the SLO breaks first."""


STANDARD_MIX: tuple[tuple[RequestClass, float], ...] = (
    (RequestClass(512, 0.5, 128), 0.4),  # chat turn with a system prompt
    (RequestClass(1024, 0.75, 64), 0.4),  # agent step re-sending its context
    (RequestClass(256, 0.0, 256), 0.2),  # short prompt, long answer
)
"""The fixed mix capacities are measured on, so MU compare across pairs.

Every class fits a 2k-token context window, so the same mix runs on every pair.
"""

FULL_SWEEP = Sweep(
    fit=grid((128, 512, 1536), (0.0, 0.75), (16, 64, 192)),
    heldout=[
        RequestClass(256, 0.0, 32),
        RequestClass(768, 0.5, 128),
        RequestClass(1280, 0.9, 48),
        RequestClass(384, 0.25, 160),
        RequestClass(1024, 0.0, 96),
    ],
)
QUICK_SWEEP = Sweep(
    fit=grid((128, 1024), (0.0, 0.75), (16, 96)),
    heldout=[RequestClass(512, 0.5, 48), RequestClass(768, 0.0, 64), RequestClass(256, 0.9, 32)],
)


class PromptFactory:
    """Prompts with exact token counts, built from the shipped corpus.

    Each class gets its own shared prefix (so classes do not warm each other's cache) and
    each request its own suffix, which opens with a tag drawn from ``nonce`` and the
    request's number: no two requests of one factory, nor of two factories with different
    nonces, share a cache block past the class prefix. Lengths are counted with the
    server's tokenizer, the way the preprocessing model counts them (special tokens
    included).
    """

    TAG_TOKENS = 4

    def __init__(
        self, tokenizer_dir: Path, corpus: Path, block_tokens: int = 1, nonce: int = 0
    ) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        text = corpus.read_text(encoding="utf-8")
        self.ids = np.asarray(
            self.tokenizer.encode(" ".join(text.split()), add_special_tokens=False)
        )
        self.block_tokens = max(block_tokens, 1)
        self.nonce = nonce

    def _slice(self, start: int, length: int) -> list[int]:
        start %= max(len(self.ids) - length, 1)
        return [int(t) for t in self.ids[start : start + length]]

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=True))

    def prompt(self, cls: RequestClass, index: int) -> str:
        """The ``index``-th prompt of ``cls`` (deterministic)."""
        prefix_len = int(cls.input_tokens * cls.prefix_fraction)
        rng = random.Random(zlib.crc32(cls.name.encode()))
        prefix = self._slice(rng.randrange(len(self.ids)), prefix_len)
        salt = zlib.crc32(cls.name.encode()) % 65521
        tag_rng = random.Random(f"{self.nonce}:{cls.name}:{index}")
        tag = [int(self.ids[tag_rng.randrange(len(self.ids))]) for _ in range(self.TAG_TOKENS)]
        suffix = tag + self._slice(7919 * (index + 1) + 104729 * salt, cls.input_tokens)
        ids = (prefix + suffix)[: max(cls.input_tokens - 1, 1)]  # room for BOS
        return str(self.tokenizer.decode(ids))

    def shape(self, cls: RequestClass, index: int, warm: bool = True) -> RequestShape:
        """Tokens of that prompt, with the prefix a warm cache would hold."""
        text = self.prompt(cls, index)
        prompt_tokens = self.count(text)
        cached = 0
        if warm and cls.prefix_fraction > 0:
            other = self.tokenizer.encode(self.prompt(cls, index + 1_000_003))
            mine = self.tokenizer.encode(text)
            common = 0
            for a, b in zip(mine, other, strict=False):
                if a != b:
                    break
                common += 1
            common = min(common, prompt_tokens - 1)
            cached = common // self.block_tokens * self.block_tokens
        return RequestShape(prompt_tokens, cls.output_tokens, cached)
