"""What every engine profile reports: per-request token events and engine-wide counters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from python_backends.generation import GenerationSpec


@dataclass
class EngineStats:
    """Counters in the TensorRT-LLM backend's terms (see ``nv_trt_llm_*`` metrics)."""

    active: int = 0
    waiting: int = 0
    max_sequences: int = 0
    scheduled: int = 0
    context: int = 0
    completed: int = 0
    kv_blocks_max: int = 0
    kv_blocks_used: int = 0
    kv_blocks_reused: int = 0
    kv_tokens_per_block: int = 16
    prefill_tokens: int = 0
    cached_prompt_tokens: int = 0
    kv_cache_blocks: int = 0
    """The KV capacity the engine was configured with (``kv_blocks_max`` may exceed it on
    an engine whose running sequences live outside its cache)."""
    max_num_tokens: int = 0
    """Prefill token budget per iteration (0: the engine has none)."""
    time_scale: float = 1.0
    """Wall seconds per emulated second (1 for an engine that computes)."""
    host_lag_s: float = 0.0
    """How far behind its emulated timeline the engine woke for its last iteration."""
    host_lag_lost_s: float = 0.0
    """Wall seconds the engine fell so far behind that it gave them up: while this grows,
    the host, not the emulated GPU, sets the pace."""


@dataclass(frozen=True)
class EngineInfo:
    """What an engine is, for its metrics and for checks against a calibrated profile."""

    engine: str
    version: str
    """Changes whenever the engine's timing or scheduling rules change."""
    hardware_profile: str = ""
    """The emulated (model, GPU) pair of a sim engine; empty otherwise."""


@dataclass(frozen=True)
class RequestPerf:
    """Per-request figures in the terms of TensorRT-LLM's ``return_perf_metrics`` outputs.

    Times are ``time.monotonic_ns()`` (TensorRT-LLM reports its steady clock); a time that
    has not happened yet is 0.
    """

    arrival_ns: int = 0
    first_scheduled_ns: int = 0
    first_token_ns: int = 0
    last_token_ns: int = 0
    kv_new_blocks: int = 0
    kv_reused_blocks: int = 0
    kv_total_blocks: int = 0


@dataclass(frozen=True)
class TokenEvent:
    """What the engine tells a request's owner: new tokens, the end, or an error."""

    token_ids: tuple[int, ...]
    log_probs: tuple[float, ...]
    finished: bool
    finish_reason: str | None = None
    error: str | None = None
    cached_tokens: int = 0
    sequence_length: int | None = None
    """Reported length when it differs from ``len(token_ids)`` (only a faulty engine)."""
    perf: RequestPerf | None = None
    context_logits: Any = None
    """``[prompt tokens, vocab]`` float32 logits, on the first event, when asked for."""
    generation_logits: Any = None
    """``[len(token_ids), vocab]`` float32 logits of this event's tokens, when asked for."""


Emit = Callable[[TokenEvent], None]


class Engine(Protocol):
    """What the ``tensorrt_llm`` Python model needs from an engine, whatever the profile."""

    name: str
    """The engine's registry name, used in refusals (``cpu``, ``sim``)."""
    info: EngineInfo
    vocab_size: int
    max_context: int
    stats: EngineStats
    on_step: Callable[[EngineStats], None] | None
    on_fatal: Callable[[str], None] | None
    dead_reason: str | None

    def submit(
        self, spec: GenerationSpec, emit: Emit, is_cancelled: Callable[[], bool] = ...
    ) -> int:
        """Queue a request and return at once; ``emit`` is called (from the engine thread)
        with its events. The engine's queue is ordered by ``spec.priority``; a request
        whose ``is_cancelled`` turns true while it waits is dropped before it runs."""

    def start(self) -> None:
        """Start the engine thread."""

    def stop(self) -> None:
        """Stop it, failing whatever is still queued or running."""
