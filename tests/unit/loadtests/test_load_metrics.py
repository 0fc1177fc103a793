"""LLM metrics math, SLO attainment and the per-group summary."""

from __future__ import annotations

import pytest

from mufleet.load.metrics import (
    ALL,
    ErrorKind,
    RequestRecord,
    Slo,
    attainment,
    percentile,
    summarize,
    tpot,
)


def record(
    start: float = 0.0,
    e2e: float = 1.0,
    ttft: float | None = 0.1,
    tokens: int = 10,
    error: ErrorKind | None = None,
    cls: str = "AgentUser",
    tenant: str = "demo",
) -> RequestRecord:
    return RequestRecord(start, cls, tenant, "openai", e2e, ttft, tokens, error=error)


def test_tpot_is_decode_time_per_token_after_the_first() -> None:
    assert tpot(1.0, 0.1, 10) == pytest.approx(0.1)
    assert tpot(0.5, 0.5, 2) == 0.0
    assert tpot(1.0, 0.1, 1) is None, "one token has no inter-token time"
    assert tpot(1.0, None, 10) is None


def test_a_failed_request_has_no_tpot() -> None:
    assert record(error=ErrorKind.BROKEN_STREAM).tpot_s is None
    assert record().tpot_s == pytest.approx(0.1)


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0, "unsorted input"
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_slo_names_the_first_threshold_missed() -> None:
    slo = Slo(ttft_s=0.2, tpot_s=0.15, e2e_s=2.0)
    assert slo.miss(record()) is None
    assert slo.miss(record(error=ErrorKind.RATE_LIMITED)) == "error"
    assert slo.miss(record(ttft=0.3)) == "ttft"
    assert slo.miss(record(ttft=None)) == "ttft", "no first token cannot meet a TTFT SLO"
    assert slo.miss(record(e2e=1.9, ttft=0.1, tokens=10)) == "tpot"  # (1.9 - 0.1) / 9 = 0.2
    assert slo.miss(record(e2e=2.5, ttft=0.1, tokens=200)) == "e2e"
    assert Slo().miss(record(ttft=99.0)) is None, "no thresholds: only errors miss"


def test_attainment_counts_failures_as_misses() -> None:
    slo = Slo(ttft_s=0.2)
    items = [record(), record(), record(ttft=0.5), record(error=ErrorKind.SERVER_ERROR)]
    assert attainment(items, slo) == 0.5
    assert attainment([], slo) is None


def test_summary_groups_by_class_and_tenant_then_all() -> None:
    items = [
        record(cls="SummaryUser", tenant="batch", tokens=20),
        record(cls="AgentUser", tokens=10),
        record(cls="AgentUser", error=ErrorKind.RATE_LIMITED, tokens=0),
        record(cls="AgentUser", error=ErrorKind.TIMEOUT, tokens=5),
    ]
    rows = summarize(items, duration_s=10.0, slo=Slo(ttft_s=1.0))
    assert [(r.user_class, r.tenant) for r in rows] == [
        ("AgentUser", "demo"),
        ("SummaryUser", "batch"),
        (ALL, ALL),
    ]
    agent, _, total = rows
    assert (agent.requests, agent.ok) == (3, 1)
    assert agent.errors == {"rate_limited": 1, "timeout": 1}
    assert agent.output_tokens == 10, "tokens of failed requests are not throughput"
    assert agent.output_token_rate == pytest.approx(1.0)
    assert total.requests == 4 and total.output_tokens == 30
    assert total.slo_attainment == 0.5
    row = total.as_row()
    assert row["errors_rate_limited"] == 1 and row["errors_broken_stream"] == 0
    assert row["slo_attainment_pct"] == 50.0


def test_record_round_trips_through_its_csv_row() -> None:
    original = RequestRecord(
        12.5,
        "TritonGrpcUser",
        "batch",
        "grpc",
        0.8,
        None,
        0,
        17,
        ErrorKind.BROKEN_STREAM,
        200,
        "node1",
        0.25,
    )
    assert RequestRecord.from_row(original.as_row()) == original
