"""SLO parsing, the run summary's figures, and the rate search."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from mufleet.simulator.metrics import Slo, SloError, parse_slo, summarize, warmup_of
from mufleet.simulator.node import SimRequest
from mufleet.simulator.router import TenantTotals
from mufleet.simulator.run import RunResult
from mufleet.simulator.search import search_rate

# -- parse_slo ------------------------------------------------------------------------------


def test_default_slo() -> None:
    assert parse_slo(None) == parse_slo("") == Slo()
    assert Slo() == Slo(ttft_s=2.0, ttft_per_1k_s=0.05, tpot_s=0.1)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ttft=2s,ttft_per_1k=50ms,tpot=100ms", Slo(ttft_s=2, ttft_per_1k_s=0.05, tpot_s=0.1)),
        ("ttft=500ms", Slo(ttft_s=0.5)),
        ("tpot=0.04", Slo(tpot_s=0.04)),
        (" ttft = 1.5S , tpot = 25MS ", Slo(ttft_s=1.5, tpot_s=0.025)),
        ("ttft_per_1k=0", Slo(ttft_per_1k_s=0.0)),
    ],
)
def test_parse_slo(spec: str, expected: Slo) -> None:
    assert parse_slo(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("latency=2s", "--slo takes ttft, ttft_per_1k, tpot"),
        ("ttft", "--slo takes"),
        ("ttft=fast", "not a duration"),
        ("ttft=2h", "not a duration"),
        ("ttft=0", "bad --slo"),
        ("tpot=-5ms", "bad --slo"),
        ("ttft_per_1k=-1", "bad --slo"),
    ],
)
def test_bad_slo(spec: str, message: str) -> None:
    with pytest.raises(SloError, match=message):
        parse_slo(spec)


def test_describe_names_the_limits() -> None:
    text = parse_slo("ttft=1s,ttft_per_1k=20ms,tpot=50ms").describe()
    assert "1 s" in text and "0.02 s per 1k" in text and "50 ms" in text


# -- summarize ------------------------------------------------------------------------------


def _request(
    index: int,
    arrival: float,
    prompt: int,
    output: int,
    ttft: float,
    tpot: float,
    cached: int = 0,
    shed: bool = False,
) -> SimRequest:
    r = SimRequest(index, arrival, prompt, output, 2048, (), "trace", 2)
    if shed:
        r.shed = True
        return r
    r.node = 0
    r.cached_tokens = cached
    r.first_token_s = arrival + ttft
    r.finish_s = r.first_token_s + tpot * (output - 1)
    return r


def _result(requests: list[SimRequest], duration: float = 100.0) -> RunResult:
    return RunResult(
        policy="p",
        rate_multiplier=2.0,
        rate_rps=4.0,
        duration_s=duration,
        requests=requests,
        node_names=["a", "b"],
        node_capacity=[100.0, 300.0],
        node_mu=[50.0, 150.0],
        node_busy_s=[10.0, 30.0],
        tenants={"trace": TenantTotals(10.0, 2.5, len(requests), 1)},
        wall_s=0.1,
        events=10,
    )


def test_attainment_counts_shed_and_slow_requests_as_failures() -> None:
    requests = [
        _request(0, 10.0, 1000, 11, ttft=0.5, tpot=0.05, cached=600),  # meets both
        _request(1, 11.0, 1000, 11, ttft=2.2, tpot=0.05, cached=200),  # TTFT over 2.05 s
        _request(2, 12.0, 1000, 11, ttft=0.5, tpot=0.2),  # TPOT over 100 ms
        _request(3, 13.0, 1000, 11, ttft=0, tpot=0, shed=True),  # 429
        _request(4, 14.0, 500, 1, ttft=1.0, tpot=0),  # one token: no TPOT to miss
    ]
    figures = summarize(_result(requests), Slo(), warmup_s=0.0)

    assert figures["requests"] == 5
    assert figures["slo_attainment"] == pytest.approx(2 / 5)
    assert figures["goodput_rps"] == pytest.approx(2 / 100.0)
    assert figures["shed_requests"] == 1
    assert figures["shed_mu"] == 2.5
    assert figures["kv_hit_rate"] == pytest.approx(800 / 3500)  # served prompts only
    assert figures["ttft_p50_ms"] == pytest.approx(750.0)  # of the 4 served
    assert figures["tpot_p99_ms"] == pytest.approx(1000 * np.percentile([0.05, 0.05, 0.2, 0], 99))
    assert figures["load_imbalance"] == pytest.approx(1.0)  # 0.5 MU per MU/s on both
    assert figures["tenants"]["trace"]["shed_mu"] == 2.5
    assert "lost_requests" not in figures


def test_an_unfinished_request_is_a_failure() -> None:
    done = _request(0, 10.0, 100, 5, ttft=0.1, tpot=0.01)
    unfinished = SimRequest(1, 10.0, 100, 5, 2048, (), "trace", 2)  # never finished
    figures = summarize(_result([done, unfinished]), Slo(), warmup_s=0.0)
    assert figures["slo_attainment"] == 0.5
    assert figures["shed_requests"] == 1


def test_the_ttft_limit_grows_with_the_prompt() -> None:
    slo = Slo(ttft_s=2.0, ttft_per_1k_s=0.05, tpot_s=0.1)
    short = _request(0, 10.0, 100, 2, ttft=2.04, tpot=0.01)  # limit 2.005 s
    long = _request(1, 10.0, 2000, 2, ttft=2.04, tpot=0.01)  # limit 2.1 s

    assert summarize(_result([short]), slo, warmup_s=0.0)["slo_attainment"] == 0.0
    assert summarize(_result([long]), slo, warmup_s=0.0)["slo_attainment"] == 1.0
    flat = Slo(ttft_s=2.0, ttft_per_1k_s=0.0, tpot_s=0.1)
    assert summarize(_result([long]), flat, warmup_s=0.0)["slo_attainment"] == 0.0


def test_a_migrated_request_is_judged_on_its_original_prompt() -> None:
    r = _request(0, 10.0, 1000, 11, ttft=2.04, tpot=0.01)  # limit 2.05 s for 1000 tokens
    r.prompt_tokens += 3000  # moved to another node after streaming 3000 tokens
    r.output_tokens -= 3000
    r.moved_tokens = 3000
    assert summarize(_result([r]), Slo(), warmup_s=0.0)["slo_attainment"] == 1.0


def test_warmup_arrivals_are_left_out() -> None:
    early = _request(0, 5.0, 100, 2, ttft=9.0, tpot=0.01)
    late = _request(1, 50.0, 100, 2, ttft=0.1, tpot=0.01)
    figures = summarize(_result([early, late]), Slo(), warmup_s=10.0)
    assert figures["requests"] == 1 and figures["slo_attainment"] == 1.0
    assert figures["goodput_rps"] == pytest.approx(1 / 90.0)
    assert warmup_of(100.0) == 10.0
    assert warmup_of(3600.0) == 60.0
    # The default warmup is the run's: 10 s of a 100 s run.
    assert summarize(_result([early, late]), Slo())["requests"] == 1


def test_no_requests_gives_nan_not_an_error() -> None:
    figures = summarize(_result([]), Slo(), warmup_s=0.0)
    assert figures["requests"] == 0
    assert math.isnan(figures["slo_attainment"]) and math.isnan(figures["ttft_p99_ms"])


def test_fault_windows_add_during_fault_figures() -> None:
    requests = [
        _request(0, 10.0, 100, 2, ttft=0.1, tpot=0.01),
        _request(1, 31.0, 100, 2, ttft=5.0, tpot=0.01),  # inside the fault window
        _request(2, 35.0, 100, 2, ttft=0.2, tpot=0.01),  # inside
        _request(3, 80.0, 100, 2, ttft=0.3, tpot=0.01),
    ]
    result = _result(requests)
    result.fault_windows = [(30.0, 40.0)]
    result.lost = 0
    figures = summarize(result, Slo(), warmup_s=0.0)
    assert figures["lost_requests"] == 0
    during = figures["during_faults"]
    assert during["requests"] == 2
    assert during["slo_attainment"] == 0.5


# -- search_rate ----------------------------------------------------------------------------


def _monotone(threshold: float, calls: list[float]) -> Callable[[float], float]:
    def attainment(rate: float) -> float:
        calls.append(rate)
        return 1.0 if rate <= threshold else max(0.0, 0.89 - (rate - threshold) / threshold)

    return attainment


@pytest.mark.parametrize("threshold", [37.0, 100.0, 101.0, 149.0, 260.0, 9.3])
@pytest.mark.parametrize("rel_tol", [0.05, 0.01])
def test_search_finds_the_threshold(threshold: float, rel_tol: float) -> None:
    calls: list[float] = []
    found = search_rate(_monotone(threshold, calls), 100.0, rel_tol=rel_tol, max_runs=30)

    assert 0 < found.rate <= threshold
    assert threshold / found.rate <= 1 + rel_tol
    assert [r for r, _ in found.runs] == calls
    assert found.rate == max(r for r, a in found.runs if a >= 0.9)


def test_search_from_a_failing_start_steps_down() -> None:
    calls: list[float] = []
    found = search_rate(_monotone(10.0, calls), 100.0, step=2.0)
    assert calls[:4] == [100.0, 50.0, 25.0, 12.5]
    assert 10.0 / 1.05 <= found.rate <= 10.0


def test_search_from_a_passing_start_steps_up() -> None:
    calls: list[float] = []
    found = search_rate(_monotone(1000.0, calls), 100.0, step=2.0)
    assert calls[:5] == [100.0, 200.0, 400.0, 800.0, 1600.0]
    assert 1000.0 / 1.05 <= found.rate <= 1000.0


def test_search_that_never_passes_reports_zero() -> None:
    found = search_rate(lambda rate: 0.5, 100.0, max_runs=5)
    assert found.rate == 0.0
    assert len(found.runs) == 5
    assert [r for r, _ in found.runs] == pytest.approx([100 / 1.5**k for k in range(5)])


def test_search_that_always_passes_reports_the_highest_tried() -> None:
    found = search_rate(lambda rate: 1.0, 10.0, max_runs=4)
    assert found.rate == pytest.approx(10.0 * 1.5**3)
    assert len(found.runs) == 4


def test_search_keeps_to_its_run_budget() -> None:
    calls: list[float] = []
    found = search_rate(_monotone(123.0, calls), 100.0, rel_tol=1e-6, max_runs=7)
    assert len(calls) == len(found.runs) == 7
    assert found.rate <= 123.0


@pytest.mark.parametrize(
    "kwargs", [{"start": 0.0}, {"start": -1.0}, {"step": 1.0}, {"rel_tol": 0.0}]
)
def test_search_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    args = {"start": 10.0, **kwargs}
    start = args.pop("start")
    with pytest.raises(ValueError):
        search_rate(lambda rate: 1.0, start, **args)  # type: ignore[arg-type]
