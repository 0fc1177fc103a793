"""Hardware profiles: the timing and memory of one (model, GPU) pair the sim emulates."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

ENDLESS_STEPS = 2**62
"""What :meth:`StepTiming.decode_steps_within` answers when iterations take no time."""


class StepTiming(BaseModel):
    """Duration of one inflight-batching iteration.

    ``base_ms + per_prefill_token_us·prefill_tokens + per_decode_seq_us·generating_seqs
    + per_context_token_ns·Σ context of generating seqs``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_ms: float = Field(ge=0)
    per_prefill_token_us: float = Field(ge=0)
    per_decode_seq_us: float = Field(ge=0)
    per_context_token_ns: float = Field(ge=0)

    def iteration_s(self, prefill_tokens: int, generating: int, context_tokens: int) -> float:
        """Seconds one iteration takes on the emulated hardware."""
        return (
            self.base_ms * 1e-3
            + self.per_prefill_token_us * 1e-6 * prefill_tokens
            + self.per_decode_seq_us * 1e-6 * generating
            + self.per_context_token_ns * 1e-9 * context_tokens
        )

    def decode_run_s(self, steps: int, generating: int, context_tokens: int) -> float:
        """Seconds of ``steps`` back-to-back decode-only iterations, in closed form.

        ``context_tokens`` is the contexts' total at the first iteration; each iteration
        adds one token to each of the ``generating`` sequences. Equal to the sum of
        :meth:`iteration_s` over the run, so an event-driven fleet simulator can jump over
        a run in one step and still keep the engine's timeline.
        """
        first = self.iteration_s(0, generating, context_tokens)
        growth = self.per_context_token_ns * 1e-9 * generating
        return steps * first + growth * steps * (steps - 1) / 2

    def decode_steps_within(self, seconds: float, generating: int, context_tokens: int) -> int:
        """How many whole decode-only iterations (:meth:`decode_run_s`) end within ``seconds``."""
        if seconds <= 0:
            return 0
        first = self.iteration_s(0, generating, context_tokens)
        half_growth = self.per_context_token_ns * 1e-9 * generating / 2
        linear = first - half_growth
        if first <= 0:
            return ENDLESS_STEPS  # iterations that take no time: any number fits
        if half_growth <= 0:
            steps = int(seconds / first) if first > 0 else 0
        else:
            root = (-linear + math.sqrt(linear * linear + 4 * half_growth * seconds)) / (
                2 * half_growth
            )
            steps = int(root)
        while steps > 0 and self.decode_run_s(steps, generating, context_tokens) > seconds:
            steps -= 1
        while self.decode_run_s(steps + 1, generating, context_tokens) <= seconds:
            steps += 1
        return steps


class KvCacheSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    block_tokens: int = Field(ge=1)
    total_blocks: int = Field(ge=1)


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    url: str
    used_for: str


class Validation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: str
    published: str
    predicted: str
    error_pct: float


class HardwareProfile(BaseModel):
    """One emulated pair, with the public measurements its numbers come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: str
    hardware: str
    tensor_parallel: int = Field(ge=1)
    precision: str
    step: StepTiming
    max_num_tokens: int = Field(ge=1, description="prefill token budget per iteration")
    max_num_sequences: int = Field(ge=1)
    kv_cache: KvCacheSpec
    max_context: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    sources: list[Source] = Field(default_factory=list)
    derivation: list[str] = Field(default_factory=list)
    validation: Validation | None = None

    def limit(self, name: str) -> int:
        """``max_num_sequences``, ``max_num_tokens`` or ``kv_cache_blocks`` of this engine."""
        if name == "kv_cache_blocks":
            return self.kv_cache.total_blocks
        if name in ("max_num_sequences", "max_num_tokens"):
            return int(getattr(self, name))
        raise KeyError(name)

    @classmethod
    def load(cls, path: Path) -> HardwareProfile:
        return cls.model_validate_json(Path(path).read_text())


def shipped_profiles_dir() -> Path:
    """``profiles/hardware`` of the project."""
    return Path(__file__).resolve().parents[2] / "profiles" / "hardware"


def resolve_profile(name_or_path: str | Path) -> Path:
    """A profile file by path, or by name among the shipped profiles."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = shipped_profiles_dir() / f"{name_or_path}.json"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in shipped_profiles_dir().glob("*.json"))
    raise FileNotFoundError(f"no hardware profile {name_or_path!r}; shipped: {', '.join(known)}")
