"""The engine configuration a pair profile was calibrated on, and a node's, compared.

A capacity in MU/s is a fact about one engine configuration: the same GPU serving at most 8
sequences instead of 256 delivers a fraction of it. So a pair profile records the
configuration it was measured under, every node reports its own (``mufleet_engine_*`` and
``nv_trt_llm_*`` series), and the router compares the two whenever a node's changes.

``None`` means *not known* (a real TensorRT-LLM node exports its sequence and KV limits but
not its token budget): unknown fields are never a mismatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

IDENTITY_FIELDS = ("engine", "engine_version", "hardware_profile")
LIMIT_FIELDS = ("max_num_sequences", "max_num_tokens", "kv_cache_blocks", "kv_block_tokens")


class EngineRecord(BaseModel):
    """One engine configuration (a profile's, or what a node reports)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: str | None = Field(None, description="sim, cpu or trtllm")
    engine_version: str | None = None
    hardware_profile: str | None = Field(None, description="the emulated pair of a sim engine")
    max_num_sequences: int | None = Field(None, ge=1, description="sequences in flight")
    max_num_tokens: int | None = Field(None, ge=1, description="prefill tokens per iteration")
    kv_cache_blocks: int | None = Field(None, ge=1)
    kv_block_tokens: int | None = Field(None, ge=1)
    time_scale: float | None = Field(None, gt=0, description="wall s per emulated s")


@dataclass(frozen=True)
class Mismatch:
    """One parameter where a node differs from its profile."""

    parameter: str
    profile: str | int | float
    node: str | int | float

    def __str__(self) -> str:
        return f"{self.parameter} {self.node} (profile: {self.profile})"


def mismatches(profile: EngineRecord, node: EngineRecord) -> list[Mismatch]:
    """Every parameter both records know and disagree on."""
    found = []
    for name in (*IDENTITY_FIELDS, *LIMIT_FIELDS, "time_scale"):
        a, b = getattr(profile, name), getattr(node, name)
        if a is None or b is None:
            continue
        same = math.isclose(a, b, rel_tol=1e-6) if name == "time_scale" else a == b
        if not same:
            found.append(Mismatch(name, a, b))
    return found


def sequences_at_capacity(profile: EngineRecord | None, capacity_concurrency: int) -> int:
    """Sequences the engine ran at the capacity point: at most its own limit (the rest of
    the requests in flight queued)."""
    if profile is None or profile.max_num_sequences is None:
        return capacity_concurrency
    return min(capacity_concurrency, profile.max_num_sequences)


def capacity_factor(
    profile: EngineRecord,
    node: EngineRecord,
    capacity_concurrency: int,
    untrusted: float,
) -> float:
    """The share of the profile's capacity the router grants a node that differs from it.

    * fewer sequences in flight than the engine ran at the capacity point (the capacity
      concurrency, or the profile's own sequence limit when requests queued beyond it):
      that ratio (throughput at lower concurrency is at least proportional, so this is a
      lower bound);
    * a smaller KV cache or token budget than the profile's: that ratio;
    * a smaller time scale than the profile's (the host was only shown to keep pace with
      the slower emulation): that ratio;
    * another engine, engine version or hardware profile: ``untrusted``, since nothing
      measured says what it delivers.

    Larger limits grant nothing extra: what was not measured is not trusted. The factors
    multiply; 1 when nothing differs.
    """
    factor = 1.0
    ran = sequences_at_capacity(profile, capacity_concurrency)
    if node.max_num_sequences is not None and node.max_num_sequences < ran:
        factor *= node.max_num_sequences / ran
    for name in ("kv_cache_blocks", "max_num_tokens", "time_scale"):
        a, b = getattr(profile, name), getattr(node, name)
        if a is not None and b is not None and b < a:
            factor *= b / a
    if any(m.parameter in IDENTITY_FIELDS for m in mismatches(profile, node)):
        factor *= untrusted
    return factor


def record_from_samples(
    info: dict[str, str] | None, config: dict[str, float], trt_max: dict[str, float]
) -> EngineRecord | None:
    """A node's record from its ``mufleet_engine_info`` labels, ``mufleet_engine_config``
    values by ``parameter``, and ``nv_trt_llm_*{…="max"|"tokens_per"}`` values (keys
    ``max_sequences``, ``kv_blocks_max``, ``kv_tokens_per_block``) for engines that export
    only those, such as TensorRT-LLM itself. ``None`` when the page says nothing."""

    def whole(value: float | None) -> int | None:
        return None if value is None or value < 1 else round(value)

    if info is None and not config and not trt_max:
        return None
    info = info or {}
    return EngineRecord(
        engine=info.get("engine") or ("trtllm" if trt_max and not config else None),
        engine_version=info.get("engine_version") or None,
        hardware_profile=info.get("hardware_profile") or None,
        max_num_sequences=whole(config.get("max_num_sequences", trt_max.get("max_sequences"))),
        max_num_tokens=whole(config.get("max_num_tokens")),
        kv_cache_blocks=whole(config.get("kv_cache_blocks", trt_max.get("kv_blocks_max"))),
        kv_block_tokens=whole(config.get("kv_block_tokens", trt_max.get("kv_tokens_per_block"))),
        time_scale=config.get("time_scale") if config.get("time_scale") else None,
    )
