"""What a run is judged by: SLO attainment, goodput, latency percentiles, KV hits, balance.

SLO per request (DistServe's goodput counts requests meeting both): TTFT within
``ttft_s + ttft_per_1k_s × prompt_tokens / 1000`` and mean TPOT (time per output token
after the first) within ``tpot_s``. A shed request (429) meets neither. The first
``warmup_s`` of arrivals fill cold caches and empty queues and are left out of every figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mufleet.simulator.run import RunResult

__all__ = ["Slo", "SloError", "parse_slo", "summarize", "warmup_of"]


class SloError(ValueError):
    """An ``--slo`` string that cannot be read."""


class Slo(BaseModel):
    """Default: MLPerf's Llama-3.1-8B server limits (TTFT 2 s, TPOT 100 ms), plus 50 ms of
    TTFT per 1k prompt tokens for long prompts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_s: float = Field(2.0, gt=0)
    ttft_per_1k_s: float = Field(0.05, ge=0)
    tpot_s: float = Field(0.1, gt=0)

    def describe(self) -> str:
        return (
            f"TTFT ≤ {self.ttft_s:g} s + {self.ttft_per_1k_s:g} s per 1k prompt tokens, "
            f"mean TPOT ≤ {self.tpot_s * 1000:g} ms"
        )


def _seconds(text: str) -> float:
    text = text.strip().lower()
    try:
        if text.endswith("ms"):
            return float(text[:-2]) / 1000.0
        return float(text.removesuffix("s"))
    except ValueError:
        raise SloError(f"not a duration: {text!r} (e.g. 2s, 100ms, 0.05)") from None


def parse_slo(spec: str | None) -> Slo:
    """``ttft=2s,ttft_per_1k=50ms,tpot=100ms`` (bare numbers are seconds)."""
    if not spec:
        return Slo()
    names = {"ttft": "ttft_s", "ttft_per_1k": "ttft_per_1k_s", "tpot": "tpot_s"}
    values: dict[str, float] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        field = names.get(key.strip())
        if not sep or field is None:
            raise SloError(f"--slo takes {', '.join(names)} as key=duration, got {part!r}")
        if field in values:
            raise SloError(f"--slo names {key.strip()!r} twice")
        values[field] = _seconds(value)
    try:
        return Slo(**values)
    except ValueError as exc:
        raise SloError(f"bad --slo {spec!r}: {exc}") from None


def warmup_of(duration_s: float) -> float:
    """Arrivals left out at the start: 10% of the run, at most 60 s."""
    return min(60.0, 0.1 * duration_s)


@dataclass(frozen=True)
class _Columns:
    arrival: np.ndarray
    prompt: np.ndarray
    cached: np.ndarray
    ttft: np.ndarray
    tpot: np.ndarray
    shed: np.ndarray
    ok: np.ndarray


def _columns(result: RunResult, slo: Slo, warmup_s: float) -> _Columns:
    chosen = [r for r in result.requests if r.arrival_s >= warmup_s]
    arrival = np.array([r.arrival_s for r in chosen], dtype=float)
    prompt = np.array([r.original_prompt for r in chosen], dtype=float)
    cached = np.array([r.cached_tokens for r in chosen], dtype=float)
    shed = np.array([r.shed or r.finish_s < 0 for r in chosen], dtype=bool)
    ttft = np.array([r.ttft_s if not r.shed else math.inf for r in chosen], dtype=float)
    tpot = np.array([r.tpot_s if not r.shed else math.inf for r in chosen], dtype=float)
    limit = slo.ttft_s + slo.ttft_per_1k_s * prompt / 1000.0
    ok = ~shed & (ttft <= limit) & (tpot <= slo.tpot_s)
    return _Columns(arrival, prompt, cached, ttft, tpot, shed, ok)


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def _imbalance(result: RunResult) -> float:
    """Max over mean of the MU each node served per MU/s of capacity (1.0: even)."""
    share = np.array(result.node_mu) / np.array(result.node_capacity)
    mean = float(share.mean()) if len(share) else 0.0
    return float(share.max() / mean) if mean > 0 else 1.0


def summarize(result: RunResult, slo: Slo, warmup_s: float | None = None) -> dict[str, Any]:
    """The run's figures, with ``summary.json``'s field names."""
    warmup = warmup_of(result.duration_s) if warmup_s is None else warmup_s
    c = _columns(result, slo, warmup)
    served = ~c.shed
    window = max(result.duration_s - warmup, 1e-9)
    tenants = {
        name: {
            "admitted_mu": t.admitted_mu,
            "shed_mu": t.shed_mu,
            "admitted": t.admitted,
            "shed": t.shed,
            "unroutable": t.unroutable,
        }
        for name, t in result.tenants.items()
    }
    prompt_served = float(c.prompt[served].sum())
    figures = {
        "rate_rps": result.rate_rps,
        "rate_multiplier": result.rate_multiplier,
        "requests": len(c.ok),
        "slo_attainment": float(c.ok.mean()) if len(c.ok) else math.nan,
        "goodput_rps": float(c.ok.sum()) / window,
        "ttft_p50_ms": 1000 * _pct(c.ttft[served], 50),
        "ttft_p90_ms": 1000 * _pct(c.ttft[served], 90),
        "ttft_p99_ms": 1000 * _pct(c.ttft[served], 99),
        "tpot_p50_ms": 1000 * _pct(c.tpot[served], 50),
        "tpot_p90_ms": 1000 * _pct(c.tpot[served], 90),
        "tpot_p99_ms": 1000 * _pct(c.tpot[served], 99),
        "kv_hit_rate": float(c.cached[served].sum()) / prompt_served if prompt_served else 0.0,
        "load_imbalance": _imbalance(result),
        "shed_requests": int(c.shed.sum()),
        "shed_mu": sum(t.shed_mu for t in result.tenants.values()),
        "tenants": tenants,
        "wall_s": result.wall_s,
    }
    if result.fault_windows:
        figures["lost_requests"] = result.lost
        figures["during_faults"] = _during(c, result.fault_windows, result.duration_s)
    return figures


def _during(c: _Columns, windows: list[tuple[float, float]], end_s: float) -> dict[str, Any]:
    """Figures for requests that arrived while a fault was in force."""
    inside = np.zeros(len(c.ok), dtype=bool)
    for start, stop in windows:
        inside |= (c.arrival >= start) & (c.arrival < min(stop, end_s))
    served = inside & ~c.shed
    return {
        "requests": int(inside.sum()),
        "slo_attainment": float(c.ok[inside].mean()) if inside.any() else math.nan,
        "ttft_p99_ms": 1000 * _pct(c.ttft[served], 99),
        "ttft_p99_ms_outside": 1000 * _pct(c.ttft[~inside & ~c.shed], 99),
    }
