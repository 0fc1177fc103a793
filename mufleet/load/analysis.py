"""Reading a run: time windows, schedule spans, the saturation knee, failover phases.

Pure functions over request records and router samples. Times inside are *test seconds*
(wall-clock minus the test's start, ``t0``). A request belongs to the span or window in
which it was **sent** for its latencies, and to the one in which it **ended** for
throughput, so a slow span shows as slow and its work is counted when it is done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from mufleet.load.metrics import RequestRecord, Slo, attainment, percentile
from mufleet.load.scrape import Sample
from mufleet.load.shapes import Span

ADMITTED_MU = "mufleet_router_admitted_mu_total"
SETTLED_MU = "mufleet_router_settled_mu_total"
ROUTER_COUNTERS = {
    "admitted MU": ADMITTED_MU,
    "admitted requests": "mufleet_router_admitted_requests_total",
    "rejected (429)": "mufleet_router_rejected_requests_total",
    "session turns on their node": "mufleet_router_affinity_hits_total",
    "failovers": "mufleet_router_failovers_total",
    "migrations": "mufleet_router_migrations_total",
    "evicted": "mufleet_router_evicted_requests_total",
}
"""The router's counters a report sums over the run."""


def _ms(values: Sequence[float], q: float) -> float | None:
    p = percentile(values, q)
    return None if p is None else p * 1e3


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float
    started: int
    completed: int
    failed: int
    output_tokens: int
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None

    @property
    def request_rate(self) -> float:
        return self.completed / (self.end_s - self.start_s)

    @property
    def token_rate(self) -> float:
        return self.output_tokens / (self.end_s - self.start_s)


def windows(
    records: Sequence[RequestRecord], t0: float, width_s: float, end_s: float
) -> list[Window]:
    """Consecutive ``width_s`` windows from 0 to ``end_s`` test seconds."""
    out = []
    for i in range(max(1, math.ceil(end_s / width_s))):
        a, b = i * width_s, (i + 1) * width_s
        sent = [r for r in records if r.ok and a <= r.start_s - t0 < b]
        ended = [r for r in records if a <= r.end_s - t0 < b]
        ttfts = [r.ttft_s for r in sent if r.ttft_s is not None]
        e2es = [r.e2e_s for r in sent]
        out.append(
            Window(
                start_s=a,
                end_s=b,
                started=len(sent),
                completed=sum(r.ok for r in ended),
                failed=sum(not r.ok for r in ended),
                output_tokens=sum(r.output_tokens for r in ended if r.ok),
                ttft_p50_ms=_ms(ttfts, 50),
                ttft_p99_ms=_ms(ttfts, 99),
                e2e_p50_ms=_ms(e2es, 50),
                e2e_p99_ms=_ms(e2es, 99),
            )
        )
    return out


def _value_at(points: Sequence[tuple[float, float]], t: float) -> float:
    """A counter's value at ``t``: its last sample at or before ``t`` (0 before any)."""
    value = 0.0
    for at, v in points:
        if at > t:
            break
        value = v
    return value


def series(
    samples: Sequence[Sample], metric: str, where: dict[str, str] | None = None
) -> dict[tuple[tuple[str, str], ...], list[tuple[float, float]]]:
    """``metric``'s samples by label set, in time order (optionally only labels matching
    ``where``)."""
    out: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for s in samples:
        if s.metric != metric:
            continue
        if where and any(s.label(k) != v for k, v in where.items()):
            continue
        out.setdefault(s.labels, []).append((s.t_s, s.value))
    for points in out.values():
        points.sort()
    return out


def counter_increase(
    samples: Sequence[Sample],
    metric: str,
    t_from: float,
    t_to: float,
    where: dict[str, str] | None = None,
) -> float:
    """How much a counter (summed over label sets) grew over ``[t_from, t_to]``."""
    return sum(
        _value_at(points, t_to) - _value_at(points, t_from)
        for points in series(samples, metric, where).values()
    )


def counter_rate(
    samples: Sequence[Sample],
    metric: str,
    t_from: float,
    t_to: float,
    where: dict[str, str] | None = None,
) -> float | None:
    """Mean rate of a counter (summed over label sets) over ``[t_from, t_to]`` wall-clock
    seconds; ``None`` when no scrape falls inside."""
    if t_to <= t_from or not any(t_from <= s.t_s <= t_to for s in samples):
        return None
    return counter_increase(samples, metric, t_from, t_to, where) / (t_to - t_from)


def state_timeline(samples: Sequence[Sample], t0: float) -> dict[str, list[tuple[float, str]]]:
    """Per node, ``(test seconds, state)`` at each change of its health state."""
    current: dict[float, dict[str, str]] = {}
    for s in samples:
        if s.metric == "mufleet_router_node_state" and s.value >= 1:
            node, state = s.label("node"), s.label("state")
            if node and state:
                current.setdefault(s.t_s, {})[node] = state
    timeline: dict[str, list[tuple[float, str]]] = {}
    for t in sorted(current):
        for node, state in current[t].items():
            changes = timeline.setdefault(node, [])
            if not changes or changes[-1][1] != state:
                changes.append((t - t0, state))
    return timeline


@dataclass(frozen=True)
class SpanStats:
    """What happened in one part of a schedule (latencies of the requests sent in it,
    rates of the work that ended in it)."""

    name: str
    start_s: float
    end_s: float
    users: int
    requests: int
    ok: int
    errors: dict[str, int] = field(default_factory=dict)
    request_rate: float = 0.0
    output_token_rate: float = 0.0
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    tpot_p99_ms: float | None = None
    e2e_p50_ms: float | None = None
    e2e_p99_ms: float | None = None
    slo_attainment: float | None = None
    admitted_mu_s: float | None = None
    settled_mu_s: float | None = None

    @property
    def failed(self) -> int:
        return self.requests - self.ok

    @property
    def power(self) -> float | None:
        """Kleinrock's power, throughput over latency: it peaks at the knee."""
        if not self.e2e_p50_ms:
            return None
        return self.request_rate / (self.e2e_p50_ms / 1e3)


def span_stats(
    records: Sequence[RequestRecord],
    t0: float,
    span: Span,
    slo: Slo,
    samples: Sequence[Sample] = (),
    settle_s: float = 0.0,
) -> SpanStats:
    """Statistics of ``span``, leaving out its first ``settle_s`` seconds (the ramp to a
    new user count, or the transient after a fault)."""
    a, b = span.start_s + settle_s, span.end_s
    sent = [r for r in records if a <= r.start_s - t0 < b]
    ended = [r for r in records if r.ok and a <= r.end_s - t0 < b]
    good = [r for r in sent if r.ok]
    errors: dict[str, int] = {}
    for r in sent:
        if r.error is not None:
            errors[r.error.value] = errors.get(r.error.value, 0) + 1
    span_s = max(b - a, 1e-9)
    tpots = [t for r in good if (t := r.tpot_s) is not None]
    return SpanStats(
        name=span.name,
        start_s=span.start_s,
        end_s=span.end_s,
        users=span.users,
        requests=len(sent),
        ok=len(good),
        errors=errors,
        request_rate=len(ended) / span_s,
        output_token_rate=sum(r.output_tokens for r in ended) / span_s,
        ttft_p50_ms=_ms([r.ttft_s for r in good if r.ttft_s is not None], 50),
        ttft_p99_ms=_ms([r.ttft_s for r in good if r.ttft_s is not None], 99),
        tpot_p99_ms=_ms(tpots, 99),
        e2e_p50_ms=_ms([r.e2e_s for r in good], 50),
        e2e_p99_ms=_ms([r.e2e_s for r in good], 99),
        slo_attainment=attainment(sent, slo),
        admitted_mu_s=counter_rate(samples, ADMITTED_MU, t0 + a, t0 + b),
        settled_mu_s=counter_rate(samples, SETTLED_MU, t0 + a, t0 + b),
    )


@dataclass(frozen=True)
class Knee:
    slo_step: int | None
    """The calibration's definition of capacity, on the ramp: of the steps before the first
    whose p99 TTFT or p99 TPOT breaks the SLO, the one with the most admitted MU/s (the most
    requests/s without router samples); ``None`` if the first step already breaks it."""
    slo_reached: bool
    """Whether some step broke the SLO (if not, the knee may lie beyond the ramp)."""
    power_step: int | None
    """The step with the highest power (throughput ÷ median latency)."""


def _breaks(row: SpanStats, slo: Slo) -> bool:
    ttft_ms = None if slo.ttft_s is None else slo.ttft_s * 1e3
    tpot_ms = None if slo.tpot_s is None else slo.tpot_s * 1e3
    ttft = ttft_ms is not None and (row.ttft_p99_ms is None or row.ttft_p99_ms > ttft_ms)
    tpot = tpot_ms is not None and row.tpot_p99_ms is not None and row.tpot_p99_ms > tpot_ms
    return ttft or tpot or row.ok == 0


def _throughput(row: SpanStats) -> float:
    return row.admitted_mu_s if row.admitted_mu_s is not None else row.request_rate


def find_knee(rows: Sequence[SpanStats], slo: Slo) -> Knee:
    meeting: list[int] = []
    reached = False
    for i, row in enumerate(rows):
        if _breaks(row, slo):
            reached = True
            break
        meeting.append(i)
    best = max(meeting, key=lambda i: (_throughput(rows[i]), -i)) if meeting else None
    powers = [(row.power, i) for i, row in enumerate(rows) if row.power is not None]
    return Knee(best, reached, max(powers)[1] if powers else None)


@dataclass(frozen=True)
class Recovery:
    node: str
    detected_s: float | None
    """Fault → the router's first non-healthy state for the node."""
    healthy_again_s: float | None
    """Clear → the node healthy again."""
    states: tuple[str, ...]
    """The states the node went through after the fault."""


def recovery(
    timeline: dict[str, list[tuple[float, str]]], node: str, fault_at: float, clear_at: float
) -> Recovery:
    changes = timeline.get(node, [])
    after = [(t, s) for t, s in changes if t >= fault_at]
    detected = next((t - fault_at for t, s in after if s != "healthy"), None)
    healthy = next((t - clear_at for t, s in changes if t >= clear_at and s == "healthy"), None)
    return Recovery(node, detected, healthy, tuple(s for _, s in after))
