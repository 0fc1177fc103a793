"""What every engine profile reports: per-request token events and engine-wide counters."""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True)
class TokenEvent:
    """What the engine tells a request's owner: new tokens, the end, or an error."""

    token_ids: tuple[int, ...]
    log_probs: tuple[float, ...]
    finished: bool
    finish_reason: str | None = None
    error: str | None = None
    cached_tokens: int = 0
