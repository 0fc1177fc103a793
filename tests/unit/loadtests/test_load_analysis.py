"""Windows, counter rates, health timelines, the knee and failover recovery."""

from __future__ import annotations

import pytest

from mufleet.load.analysis import (
    ADMITTED_MU,
    SpanStats,
    counter_rate,
    find_knee,
    recovery,
    span_stats,
    state_timeline,
    windows,
)
from mufleet.load.metrics import ErrorKind, RequestRecord, Slo
from mufleet.load.scrape import Sample, parse_exposition
from mufleet.load.shapes import Span

T0 = 1000.0


def rec(start: float, e2e: float, ttft: float = 0.1, tokens: int = 10, error=None) -> RequestRecord:  # type: ignore[no-untyped-def]
    return RequestRecord(T0 + start, "AgentUser", "demo", "openai", e2e, ttft, tokens, error=error)


def test_windows_take_latency_by_send_time_and_throughput_by_end_time() -> None:
    items = [rec(1.0, 1.0), rec(4.0, 3.0, tokens=20), rec(6.0, 1.0, error=ErrorKind.TIMEOUT)]
    first, second = windows(items, T0, 5.0, 10.0)
    assert first.started == 2 and first.completed == 1, "the 4 s request ends at 7 s"
    assert second.completed == 1 and second.failed == 1
    assert second.output_tokens == 20 and second.token_rate == 4.0
    assert first.e2e_p99_ms == pytest.approx(2980.0)


def _counter(t: float, value: float, tenant: str = "demo") -> Sample:
    return Sample(t, ADMITTED_MU, (("kind", "reserved"), ("tenant", tenant)), value)


def test_counter_rate_sums_label_sets_and_counts_late_ones_from_zero() -> None:
    samples = [_counter(0.0, 0.0), _counter(10.0, 100.0), _counter(10.0, 50.0, "batch")]
    assert counter_rate(samples, ADMITTED_MU, 0.0, 10.0) == pytest.approx(15.0)
    assert counter_rate(samples, ADMITTED_MU, 0.0, 10.0, {"tenant": "batch"}) == 5.0
    assert counter_rate(samples, ADMITTED_MU, 20.0, 30.0) is None, "no scrape inside"


def test_parse_exposition_keeps_the_watched_families() -> None:
    text = (
        "# TYPE mufleet_router_admitted_mu_total counter\n"
        'mufleet_router_admitted_mu_total{kind="reserved",tenant="demo"} 12.5\n'
        'mufleet_router_admitted_mu_created{kind="reserved",tenant="demo"} 1.7e9\n'
        "# TYPE other_metric gauge\nother_metric 3\n"
    )
    (sample,) = parse_exposition(text, 5.0)
    assert sample.metric == ADMITTED_MU and sample.value == 12.5
    assert sample.label("tenant") == "demo"


def _state(t: float, node: str, state: str) -> Sample:
    return Sample(t, "mufleet_router_node_state", (("node", node), ("state", state)), 1.0)


def test_state_timeline_and_recovery_times() -> None:
    samples = [
        _state(T0 + 0, "node1", "healthy"),
        _state(T0 + 10, "node1", "healthy"),
        _state(T0 + 12, "node1", "suspect"),
        _state(T0 + 13, "node1", "cordoned"),
        _state(T0 + 20, "node1", "probation"),
        _state(T0 + 26, "node1", "healthy"),
        Sample(T0 + 14, "mufleet_router_node_state", (("node", "node1"), ("state", "x")), 0.0),
    ]
    timeline = state_timeline(samples, T0)
    assert timeline["node1"] == [
        (0, "healthy"),
        (12, "suspect"),
        (13, "cordoned"),
        (20, "probation"),
        (26, "healthy"),
    ]
    got = recovery(timeline, "node1", fault_at=10.5, clear_at=20.0)
    assert got.detected_s == pytest.approx(1.5) and got.healthy_again_s == 6.0
    assert got.states[:2] == ("suspect", "cordoned")


def _step(i: int, rate: float, ttft_p99: float, mu: float | None, e2e: float = 1000.0) -> SpanStats:
    return SpanStats(
        f"step {i + 1}",
        0,
        1,
        8 * (i + 1),
        10,
        10,
        request_rate=rate,
        ttft_p99_ms=ttft_p99,
        tpot_p99_ms=10.0,
        e2e_p50_ms=e2e,
        admitted_mu_s=mu,
    )


def test_the_knee_is_the_most_mu_before_the_slo_breaks() -> None:
    slo = Slo(ttft_s=1.0, tpot_s=0.05)
    rows = [
        _step(0, 10, 200, 100),
        _step(1, 19, 400, 190),
        _step(2, 20, 900, 185),
        _step(3, 21, 1500, 200),
    ]
    knee = find_knee(rows, slo)
    assert knee.slo_step == 1 and knee.slo_reached
    assert find_knee(rows[:2], slo).slo_reached is False
    assert find_knee([_step(0, 10, 5000, 100)], slo).slo_step is None


def test_without_router_samples_the_knee_uses_request_rate_and_power_peaks() -> None:
    rows = [_step(0, 10, 100, None, 500), _step(1, 12, 100, None, 1500), _step(2, 11, 100, None)]
    knee = find_knee(rows, Slo(ttft_s=1.0))
    assert knee.slo_step == 1
    assert knee.power_step == 0, "10/0.5 beats 12/1.5"


def test_span_stats_read_the_span_after_its_settling_time() -> None:
    items = [rec(1.0, 0.5), rec(6.0, 0.5, ttft=2.0), rec(7.0, 0.5, error=ErrorKind.SERVER_ERROR)]
    samples = [_counter(T0 + 5, 0.0), _counter(T0 + 10, 50.0)]
    stats = span_stats(items, T0, Span("s", 0.0, 10.0, 4), Slo(ttft_s=1.0), samples, 5.0)
    assert stats.requests == 2 and stats.failed == 1
    assert stats.errors == {"server_error": 1}
    assert stats.slo_attainment == 0.0
    assert stats.admitted_mu_s == pytest.approx(10.0)
