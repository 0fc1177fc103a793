"""The engine-side request of the TensorRT-LLM ``tensorrt_llm`` I/O contract.

Every engine profile (cpu, sim, trtllm) accepts the same tensors; this module turns the
tensors of one request into a typed :class:`GenerationSpec` and checks them, so that
engines share one parser and one set of error messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from python_backends.word_lists import decode_word_lists

REQUIRED_INPUTS = ("input_ids", "input_lengths", "request_output_len")
OPTIONAL_INPUTS = (
    "end_id",
    "pad_id",
    "temperature",
    "runtime_top_k",
    "runtime_top_p",
    "seed",
    "streaming",
    "stop_words_list",
    "bad_words_list",
    "min_tokens",
    "return_log_probs",
)


class InvalidGenerationError(ValueError):
    """The tensors of a request break the contract (maps to HTTP 400)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. Defaults follow TensorRT-LLM: top_k=0, top_p=0 is greedy."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1 or (self.top_k == 0 and self.top_p <= 0)


@dataclass(frozen=True)
class GenerationSpec:
    """One validated generation request."""

    input_ids: tuple[int, ...]
    max_new_tokens: int
    end_id: int | None = None
    pad_id: int | None = None
    min_tokens: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_words: tuple[tuple[int, ...], ...] = ()
    bad_words: tuple[tuple[int, ...], ...] = ()
    streaming: bool = False
    return_log_probs: bool = False
    priority: int | None = None


def _scalar(inputs: Mapping[str, np.ndarray], name: str) -> int | float | bool | None:
    value = inputs.get(name)
    if value is None:
        return None
    arr = np.asarray(value).reshape(-1)
    if arr.size != 1:
        raise InvalidGenerationError(f"{name} must hold one value, got {arr.size}")
    item: int | float | bool = arr[0].item()
    return item


def _seed(value: int | float | bool | None) -> int:
    """The ``seed`` input as the exact uint64 it was sent as (never through a float)."""
    if value is None:
        return 0
    if isinstance(value, float) and not value.is_integer():
        raise InvalidGenerationError(f"seed must be an integer, got {value}")
    seed = int(value)
    if not 0 <= seed < 2**64:
        raise InvalidGenerationError(f"seed must fit in uint64, got {seed}")
    return seed


def parse_generation(
    inputs: Mapping[str, np.ndarray],
    vocab_size: int,
    max_context: int,
    priority: int | None = None,
) -> GenerationSpec:
    """Build a :class:`GenerationSpec` from the request's tensors (batch dim of 1 allowed).

    ``priority`` comes from the request parameters, not a tensor: Triton keeps the
    request's own priority to itself, so callers that want an engine to honour a level
    send it as the ``priority`` request parameter.
    """
    for name in REQUIRED_INPUTS:
        if name not in inputs:
            raise InvalidGenerationError(f"missing required input {name}")
    ids = np.asarray(inputs["input_ids"]).reshape(-1)
    if ids.size == 0:
        raise InvalidGenerationError("input_ids must not be empty")
    length = int(_scalar(inputs, "input_lengths") or 0)
    if not 0 < length <= ids.size:
        raise InvalidGenerationError(f"input_lengths={length} does not fit {ids.size} input_ids")
    ids = ids[:length]
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise InvalidGenerationError(f"input_ids must lie in [0, {vocab_size})")
    max_new = int(_scalar(inputs, "request_output_len") or 0)
    if max_new < 1:
        raise InvalidGenerationError(f"request_output_len must be at least 1, got {max_new}")
    if length + max_new > max_context:
        raise InvalidGenerationError(
            f"{length} input tokens plus request_output_len={max_new} exceed the context "
            f"window of {max_context}"
        )

    def opt(name: str, default: float) -> float:
        value = _scalar(inputs, name)
        return default if value is None else float(value)

    sampling = SamplingParams(
        temperature=opt("temperature", 1.0),
        top_k=int(opt("runtime_top_k", 0)),
        top_p=opt("runtime_top_p", 0.0),
        seed=_seed(_scalar(inputs, "seed")),
    )
    if sampling.top_k < 0 or not 0.0 <= sampling.top_p <= 1.0 or sampling.temperature < 0:
        raise InvalidGenerationError(
            "need runtime_top_k >= 0, 0 <= runtime_top_p <= 1 and temperature >= 0"
        )
    min_tokens = int(opt("min_tokens", 0))
    if min_tokens < 0:
        raise InvalidGenerationError("min_tokens must not be negative")
    end_id = _scalar(inputs, "end_id")
    pad_id = _scalar(inputs, "pad_id")
    try:
        stop_words = decode_word_lists(inputs.get("stop_words_list"))
        bad_words = decode_word_lists(inputs.get("bad_words_list"))
    except ValueError as exc:
        raise InvalidGenerationError(str(exc)) from exc
    return GenerationSpec(
        input_ids=tuple(int(t) for t in ids),
        max_new_tokens=max_new,
        end_id=None if end_id is None else int(end_id),
        pad_id=None if pad_id is None else int(pad_id),
        min_tokens=min(min_tokens, max_new),
        sampling=sampling,
        stop_words=tuple(tuple(w) for w in stop_words),
        bad_words=tuple(tuple(w) for w in bad_words),
        streaming=bool(_scalar(inputs, "streaming") or False),
        return_log_probs=bool(_scalar(inputs, "return_log_probs") or False),
        priority=priority,
    )
