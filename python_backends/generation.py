"""The engine-side request of the TensorRT-LLM ``tensorrt_llm`` I/O contract.

Every Python engine accepts the same tensors; this module turns the tensors of one Triton
request into typed :class:`GenerationSpec` objects (one per batch row and returned
sequence) plus the request's :class:`OutputOptions`, and checks them, so engines share one
parser and one set of error messages. Inputs are read by their names in
:mod:`python_backends.contract`; a value an engine cannot honour is refused by name
(:func:`python_backends.engine_limits.refusal`), never ignored.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from python_backends.contract import MODELS
from python_backends.engine_limits import LIMITS, refusal
from python_backends.word_lists import decode_word_lists

TRTLLM_INPUTS = MODELS["tensorrt_llm"].input_names
PRIORITY_PARAMETER = "priority_level"
"""Request parameter with the Triton level (1 = highest) for engines that schedule
internally. Triton keeps a request's own priority from Python models, and tritonclient
reserves the parameter name ``priority``."""
MAX_RETURN_SEQUENCES = 64


class InvalidGenerationError(ValueError):
    """The tensors of a request break the contract (maps to HTTP 400)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. Defaults follow TensorRT-LLM: top_k=0, top_p=0 is greedy."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int = 0
    top_p_min: float = 1.0e-6
    top_p_decay: float = 1.0
    top_p_reset_id: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1 or (self.top_k == 0 and self.top_p <= 0)

    @property
    def penalised(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


@dataclass(frozen=True)
class GenerationSpec:
    """One sequence to generate: a batch row, or one of its ``num_return_sequences``."""

    input_ids: tuple[int, ...]
    max_new_tokens: int
    end_id: int | None = None
    pad_id: int | None = None
    min_tokens: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_words: tuple[tuple[int, ...], ...] = ()
    bad_words: tuple[tuple[int, ...], ...] = ()
    embedding_bias: tuple[tuple[int, float], ...] = ()
    """Non-zero entries of the per-token logit bias, as ``(token id, bias)``."""
    streaming: bool = False
    return_log_probs: bool = False
    return_context_logits: bool = False
    return_generation_logits: bool = False
    priority: int | None = None
    batch_index: int = 0
    sequence_index: int = 0
    arrival_ns: int = 0


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs a request asked for, and how ``output_ids`` is laid out."""

    exclude_input_in_output: bool = True
    streaming: bool = False
    return_log_probs: bool = False
    return_context_logits: bool = False
    return_generation_logits: bool = False
    return_perf_metrics: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """Everything one Triton request asks of the engine."""

    specs: tuple[GenerationSpec, ...]
    options: OutputOptions
    batch_size: int
    num_return_sequences: int


def _rows(value: np.ndarray, batch: int, name: str) -> np.ndarray:
    """``value`` with a leading batch dim of ``batch`` (a batch of one may omit it)."""
    arr = np.asarray(value)
    if arr.ndim == 0 or arr.shape[0] != batch:
        if batch == 1:
            return arr.reshape(1, *arr.shape) if arr.ndim else arr.reshape(1)
        raise InvalidGenerationError(
            f"{name} has shape {list(arr.shape)}; expected a leading batch dimension of {batch}"
        )
    return arr


def _scalar(value: np.ndarray | None, row: int, batch: int, name: str) -> int | float | None:
    if value is None:
        return None
    arr = _rows(value, batch, name)[row].reshape(-1)
    if arr.size != 1:
        raise InvalidGenerationError(f"{name} must hold one value per batch row, got {arr.size}")
    item: int | float = arr[0].item()
    return item


def _seed(value: int | float | None) -> int:
    """The ``seed`` input as the exact uint64 it was sent as (never through a float)."""
    if value is None:
        return 0
    if isinstance(value, float) and not value.is_integer():
        raise InvalidGenerationError(f"seed must be an integer, got {value}")
    seed = int(value)
    if not 0 <= seed < 2**64:
        raise InvalidGenerationError(f"seed must fit in uint64, got {seed}")
    return seed


def sequence_seed(seed: int, sequence_index: int) -> int:
    """A distinct, repeatable seed for each returned sequence of one request."""
    if sequence_index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}/{sequence_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _flag(inputs: Mapping[str, np.ndarray], name: str, batch: int, default: bool) -> bool:
    value = inputs.get(name)
    if value is None:
        return default
    flags = _rows(value, batch, name).reshape(batch, -1).astype(bool)
    if flags.size and flags.min() != flags.max():
        raise InvalidGenerationError(f"{name} must be the same for every row of a batch")
    return bool(flags.reshape(-1)[0]) if flags.size else default


def _embedding_bias(value: np.ndarray | None, row: int, batch: int, vocab_size: int) -> tuple:
    if value is None:
        return ()
    bias = _rows(value, batch, "embedding_bias")[row].reshape(-1)
    if bias.size == 0:
        return ()
    if bias.size > vocab_size:
        raise InvalidGenerationError(
            f"embedding_bias has {bias.size} entries; the vocabulary has {vocab_size}"
        )
    nonzero = np.flatnonzero(bias)
    return tuple((int(i), float(bias[i])) for i in nonzero)


def parse_request(
    inputs: Mapping[str, np.ndarray],
    engine: str,
    vocab_size: int,
    max_context: int,
    priority: int | None = None,
    exclude_input_in_output: bool = True,
) -> GenerationRequest:
    """Build the :class:`GenerationRequest` of one Triton request's tensors.

    ``exclude_input_in_output`` is the model's default (its parameter of that name); the
    input of that name overrides it per request. ``priority`` comes from the
    :data:`PRIORITY_PARAMETER` request parameter.
    """
    for name, value in inputs.items():
        if name in LIMITS and (reason := refusal(engine, name, value)) is not None:
            raise InvalidGenerationError(reason)
    for name in ("input_ids", "input_lengths", "request_output_len"):
        if name not in inputs:
            raise InvalidGenerationError(f"missing required input {name}")
    ids = np.asarray(inputs["input_ids"])
    ids = ids.reshape(1, -1) if ids.ndim < 2 else ids.reshape(ids.shape[0], -1)
    batch = ids.shape[0]
    if batch == 0 or ids.shape[1] == 0:
        raise InvalidGenerationError("input_ids must not be empty")
    options = OutputOptions(
        exclude_input_in_output=_flag(
            inputs, "exclude_input_in_output", batch, exclude_input_in_output
        ),
        streaming=_flag(inputs, "streaming", batch, False),
        return_log_probs=_flag(inputs, "return_log_probs", batch, False),
        return_context_logits=_flag(inputs, "return_context_logits", batch, False),
        return_generation_logits=_flag(inputs, "return_generation_logits", batch, False),
        return_perf_metrics=_flag(inputs, "return_perf_metrics", batch, False),
        return_num_input_tokens=_flag(inputs, "return_num_input_tokens", batch, False),
        return_num_output_tokens=_flag(inputs, "return_num_output_tokens", batch, False),
    )
    returns = {
        1 if value is None else int(value)
        for value in (
            _scalar(inputs.get("num_return_sequences"), row, batch, "num_return_sequences")
            for row in range(batch)
        )
    }
    if len(returns) != 1:
        raise InvalidGenerationError("num_return_sequences must be the same for every row")
    num_return = returns.pop()
    if not 1 <= num_return <= MAX_RETURN_SEQUENCES:
        raise InvalidGenerationError(
            f"num_return_sequences must lie in [1, {MAX_RETURN_SEQUENCES}], got {num_return}"
        )
    arrival = time.monotonic_ns()
    specs: list[GenerationSpec] = []
    for row in range(batch):
        base = _row_spec(inputs, ids[row], row, batch, vocab_size, max_context)
        base = replace(
            base,
            streaming=options.streaming,
            return_log_probs=options.return_log_probs,
            return_context_logits=options.return_context_logits,
            return_generation_logits=options.return_generation_logits,
            priority=priority,
            batch_index=row,
            arrival_ns=arrival,
        )
        for index in range(num_return):
            sampling = replace(base.sampling, seed=sequence_seed(base.sampling.seed, index))
            specs.append(replace(base, sequence_index=index, sampling=sampling))
    return GenerationRequest(tuple(specs), options, batch, num_return)


def _row_spec(
    inputs: Mapping[str, np.ndarray],
    ids: np.ndarray,
    row: int,
    batch: int,
    vocab_size: int,
    max_context: int,
) -> GenerationSpec:
    def num(name: str, default: float) -> float:
        value = _scalar(inputs.get(name), row, batch, name)
        return default if value is None else float(value)

    length = int(num("input_lengths", 0))
    if not 0 < length <= ids.size:
        raise InvalidGenerationError(f"input_lengths={length} does not fit {ids.size} input_ids")
    prompt = ids[:length]
    if prompt.min() < 0 or prompt.max() >= vocab_size:
        raise InvalidGenerationError(f"input_ids must lie in [0, {vocab_size})")
    max_new = int(num("request_output_len", 0))
    if max_new < 1:
        raise InvalidGenerationError(f"request_output_len must be at least 1, got {max_new}")
    if length + max_new > max_context:
        raise InvalidGenerationError(
            f"{length} input tokens plus request_output_len={max_new} exceed the context "
            f"window of {max_context}"
        )
    reset = _scalar(inputs.get("runtime_top_p_reset_ids"), row, batch, "runtime_top_p_reset_ids")
    sampling = SamplingParams(
        temperature=num("temperature", 1.0),
        top_k=int(num("runtime_top_k", 0)),
        top_p=num("runtime_top_p", 0.0),
        seed=_seed(_scalar(inputs.get("seed"), row, batch, "seed")),
        top_p_min=num("runtime_top_p_min", 1.0e-6),
        top_p_decay=num("runtime_top_p_decay", 1.0),
        top_p_reset_id=None if reset is None else int(reset),
        repetition_penalty=num("repetition_penalty", 1.0),
        presence_penalty=num("presence_penalty", 0.0),
        frequency_penalty=num("frequency_penalty", 0.0),
    )
    _check_sampling(sampling)
    min_tokens = int(num("min_tokens", 0))
    if min_tokens < 0:
        raise InvalidGenerationError("min_tokens must not be negative")
    end_id = _scalar(inputs.get("end_id"), row, batch, "end_id")
    pad_id = _scalar(inputs.get("pad_id"), row, batch, "pad_id")
    try:
        stop_words = decode_word_lists(_word_row(inputs.get("stop_words_list"), row, batch))
        bad_words = decode_word_lists(_word_row(inputs.get("bad_words_list"), row, batch))
    except ValueError as exc:
        raise InvalidGenerationError(str(exc)) from exc
    return GenerationSpec(
        input_ids=tuple(int(t) for t in prompt),
        max_new_tokens=max_new,
        end_id=None if end_id is None else int(end_id),
        pad_id=None if pad_id is None else int(pad_id),
        min_tokens=min(min_tokens, max_new),
        sampling=sampling,
        stop_words=tuple(tuple(w) for w in stop_words),
        bad_words=tuple(tuple(w) for w in bad_words),
        embedding_bias=_embedding_bias(inputs.get("embedding_bias"), row, batch, vocab_size),
    )


def _word_row(value: np.ndarray | None, row: int, batch: int) -> np.ndarray | None:
    """Row ``row`` of a ``[B, 2, N]`` word list (``[2, N]`` is a batch of one)."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim == 2 and batch == 1:
        return arr
    return _rows(arr, batch, "word list")[row]


def _check_sampling(s: SamplingParams) -> None:
    problems = []
    if s.top_k < 0:
        problems.append(f"runtime_top_k must be >= 0, got {s.top_k}")
    if not 0.0 <= s.top_p <= 1.0:
        problems.append(f"runtime_top_p must lie in [0, 1], got {s.top_p}")
    if s.temperature < 0:
        problems.append(f"temperature must be >= 0, got {s.temperature}")
    if not 0.0 < s.top_p_decay <= 1.0:
        problems.append(f"runtime_top_p_decay must lie in (0, 1], got {s.top_p_decay}")
    if not 0.0 < s.top_p_min <= 1.0:
        problems.append(f"runtime_top_p_min must lie in (0, 1], got {s.top_p_min}")
    if s.repetition_penalty <= 0:
        problems.append(f"repetition_penalty must be > 0, got {s.repetition_penalty}")
    if problems:
        raise InvalidGenerationError("; ".join(problems))
