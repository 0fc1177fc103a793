"""Calibration logic that needs no server: steady-state rates, percentiles, prompt shapes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from mufleet.calibration.load import EngineTiming, LoadRun
from mufleet.calibration.pacing import PaceCheck
from mufleet.calibration.run import Calibrator, engine_rps
from mufleet.calibration.workload import (
    FULL_SWEEP,
    QUICK_SWEEP,
    STANDARD_MIX,
    PromptFactory,
    RequestClass,
    Sweep,
)
from mufleet.tiny_model import CORPUS_PATH

BLOCK = 32
RATE = 8.0
SWEEPS = {"quick": QUICK_SWEEP, "full": FULL_SWEEP}
SAMPLE_CLASSES = list(
    dict.fromkeys([c for c, _ in STANDARD_MIX] + QUICK_SWEEP.fit + QUICK_SWEEP.heldout)
)


def _timing(
    sent: float, done: float, first: float | None = None, tokens: int = 16, **kw: object
) -> EngineTiming:
    """A request the engine held from ``sent`` to ``done`` (first token at ``first``)."""
    first = (sent + done) / 2 if first is None else first
    ns = 1_000_000_000
    return EngineTiming(
        sent,
        done,
        int(sent * ns),
        int(first * ns),
        int(done * ns),
        tokens,
        **kw,  # type: ignore[arg-type]
    )


def _done_at(times: Sequence[float], latency: float = 0.5) -> list[EngineTiming]:
    """Successful requests finishing at ``times``, each sent ``latency`` earlier."""
    return [_timing(t - latency, t) for t in times]


def _run(concurrency: int, timings: list[EngineTiming]) -> LoadRun:
    return LoadRun(concurrency, timings)


# -- LoadRun.steady_rps -----------------------------------------------------------------


def _closed_loop(concurrency: int, cycles: Sequence[float], waves: int) -> list[EngineTiming]:
    """Each slot runs ``waves`` back-to-back requests; slot ``k`` takes ``cycles[k]`` each."""
    return [
        _timing(w * cycles[k], (w + 1) * cycles[k])
        for k in range(concurrency)
        for w in range(waves)
    ]


@pytest.mark.parametrize("concurrency", [1, 2, 4, 16])
def test_a_closed_loop_completes_concurrency_requests_per_cycle(concurrency: int) -> None:
    timings = _closed_loop(concurrency, [0.5] * concurrency, waves=5)

    assert _run(concurrency, timings).steady_rps() == pytest.approx(concurrency / 0.5)


def test_lockstep_waves_count_once_each() -> None:
    # 8 identical requests finish together every 0.5 s: 16 req/s. A window from the first
    # wave's completions to the last's would see 24 completions in 1 s.
    timings = _closed_loop(8, [0.5] * 8, waves=3)

    assert _run(8, timings).steady_rps() == pytest.approx(16.0)


def test_slots_with_different_cycles_give_the_loop_s_rate() -> None:
    # Little's law: 4 slots and a mean cycle of 0.25 s.
    timings = _closed_loop(4, [0.1, 0.2, 0.3, 0.4], waves=12)

    assert _run(4, timings).steady_rps() == pytest.approx(4 / 0.25)


def test_completion_order_not_list_order_counts() -> None:
    timings = _closed_loop(4, [0.5] * 4, waves=6)

    assert _run(4, timings[1::2] + timings[::2]).steady_rps() == pytest.approx(8.0)


def test_failed_requests_take_their_slot_s_time_but_are_not_completions() -> None:
    good = _closed_loop(4, [0.5] * 4, waves=3)
    failed = [_timing(0.0, 0.5, error="boom") for _ in range(4)]

    run = _run(4, good + failed)

    assert run.steady_rps() == pytest.approx(8.0 * 12 / 16)
    assert run.errors == ["boom"] * 4


def test_no_measured_request_has_no_rate() -> None:
    assert math.isnan(_run(4, []).steady_rps())


# -- LoadRun.percentile -----------------------------------------------------------------


def test_latencies_come_from_the_engine_s_own_timestamps() -> None:
    # Sent 1 s before the engine saw it (host time): TTFT counts from the engine's arrival.
    good = [
        EngineTiming(0.0, 9.0, 1_000_000_000, int((1 + ttft) * 1e9), int((1.9 + ttft) * 1e9), 10)
        for ttft in (0.1, 0.2, 0.3, 0.4, 0.5)
    ]
    failed = [_timing(0.0, 21.0, 20.0, error="x") for _ in range(5)]
    one_token = [_timing(0.0, 0.3, 0.3, tokens=1)]

    run = LoadRun(4, good + failed + one_token)

    assert run.percentile("ttft_s", 100) == pytest.approx(0.5, abs=0.3)  # one-token: 0.3
    assert run.percentile("ttft_s", 0) == pytest.approx(0.1)
    # TPOT of the good ones is 0.9 / 9 = 0.1; the one-token request has none.
    assert run.percentile("tpot_s", 99) == pytest.approx(0.1)
    assert len(run.values("tpot_s")) == 5


def test_percentile_of_a_run_with_no_success_is_nan() -> None:
    run = _run(2, [EngineTiming(0.0, 1.0, error="x")])

    assert math.isnan(run.percentile("ttft_s", 99))


def test_occupancy_is_the_engine_s_share_of_each_round_trip() -> None:
    times = [1.0 + i / RATE for i in range(80)]
    assert _run(4, _done_at(times)).occupancy() == pytest.approx(1.0)
    # Sent 0.5 s before they finish, but the engine only saw them for the last 0.25 s.
    ns = 1_000_000_000
    held = [
        EngineTiming(t - 0.5, t, int((t - 0.25) * ns), int((t - 0.2) * ns), int(t * ns), 16)
        for t in times
    ]
    assert _run(4, held).occupancy() == pytest.approx(0.5)


def test_the_pace_check_flags_lost_timeline_and_a_starved_engine() -> None:
    check = PaceCheck(max_lost_share=0.02, min_occupancy=0.85)
    assert check.verdict(lost_s=0.1, wall_s=10.0, occupancy=0.99) is None
    assert "lost 0.50 s" in (check.verdict(lost_s=0.5, wall_s=10.0, occupancy=0.99) or "")
    assert "held 60%" in (check.verdict(lost_s=0.0, wall_s=10.0, occupancy=0.6) or "")
    assert check.verdict(lost_s=0.0, wall_s=10.0, occupancy=math.nan) is None


def test_a_rate_tolerates_lost_timeline_that_percentiles_do_not() -> None:
    check = PaceCheck(max_lost_share=0.02, max_corrected_lost_share=0.10, min_occupancy=0.85)

    assert check.verdict(lost_s=0.5, wall_s=10.0, occupancy=0.99) is not None
    assert check.verdict(lost_s=0.5, wall_s=10.0, occupancy=0.99, rates_only=True) is None
    assert check.verdict(lost_s=1.5, wall_s=10.0, occupancy=0.99, rates_only=True) is not None
    # A starved engine is starved for rates too.
    assert check.verdict(lost_s=0.0, wall_s=10.0, occupancy=0.6, rates_only=True) is not None
    assert check.severity(0.5, 10.0, 0.99, rates_only=True) == pytest.approx(0.5)


def test_the_engine_s_rate_is_taken_over_the_timeline_it_did_not_lose() -> None:
    run = _run(4, _closed_loop(4, [0.5] * 4, waves=5))  # 8 req/s on the wall clock

    assert engine_rps(run, time_scale=1.0, lost_share=0.0) == pytest.approx(8.0)
    assert engine_rps(run, time_scale=2.0, lost_share=0.0) == pytest.approx(16.0)
    assert engine_rps(run, time_scale=2.0, lost_share=0.2) == pytest.approx(20.0)


# -- request classes and sweeps ---------------------------------------------------------


def test_standard_mix_is_a_distribution_of_classes_that_fit_2k() -> None:
    assert sum(w for _, w in STANDARD_MIX) == pytest.approx(1.0)
    assert all(w > 0 for _, w in STANDARD_MIX)
    for cls, _ in STANDARD_MIX:
        assert cls.input_tokens + cls.output_tokens <= 2048
        assert 0.0 <= cls.prefix_fraction < 1.0


@pytest.mark.parametrize("sweep", SWEEPS.values(), ids=SWEEPS.keys())
def test_held_out_classes_are_not_fitted(sweep: Sweep) -> None:
    assert sweep.heldout
    assert not set(sweep.heldout) & set(sweep.fit)
    assert len(set(sweep.fit)) == len(sweep.fit)
    assert len({c.name for c in sweep.fit + sweep.heldout}) == len(sweep.fit) + len(sweep.heldout)
    assert sweep.full_samples >= 200  # two requests above the p99
    for cls in sweep.fit + sweep.heldout:
        assert cls.input_tokens + cls.output_tokens <= 2048


def test_class_name() -> None:
    assert RequestClass(512, 0.5, 128).name == "in512-p50-out128"
    assert RequestClass(256, 0.0, 32).name == "in256-p0-out32"


# -- PromptFactory ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def factory(tiny_model_dir: Path) -> PromptFactory:
    return PromptFactory(tiny_model_dir, CORPUS_PATH, block_tokens=BLOCK)


def _ids(factory: PromptFactory, cls: RequestClass, index: int) -> list[int]:
    return [int(t) for t in factory.tokenizer.encode(factory.prompt(cls, index))]


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@pytest.mark.parametrize("cls", SAMPLE_CLASSES, ids=[c.name for c in SAMPLE_CLASSES])
def test_prompt_has_the_class_token_count(factory: PromptFactory, cls: RequestClass) -> None:
    for index in range(3):
        assert abs(factory.count(factory.prompt(cls, index)) - cls.input_tokens) <= 3


@pytest.mark.parametrize("cls", SAMPLE_CLASSES, ids=[c.name for c in SAMPLE_CLASSES])
def test_prompts_of_a_class_share_its_prefix(factory: PromptFactory, cls: RequestClass) -> None:
    prefix = int(cls.input_tokens * cls.prefix_fraction)

    shared = _common(_ids(factory, cls, 0), _ids(factory, cls, 1))

    assert abs(shared - 1 - prefix) <= 3  # 1: the BOS token


@pytest.mark.parametrize("cls", SAMPLE_CLASSES, ids=[c.name for c in SAMPLE_CLASSES])
def test_shape_counts_whole_cached_blocks(factory: PromptFactory, cls: RequestClass) -> None:
    for index in range(2):
        shape = factory.shape(cls, index)
        assert shape.prompt_tokens == factory.count(factory.prompt(cls, index))
        assert shape.output_tokens == cls.output_tokens
        assert shape.cached_tokens % BLOCK == 0
        assert 0 <= shape.cached_tokens < shape.prompt_tokens
        prefix = int(cls.input_tokens * cls.prefix_fraction)
        assert prefix - BLOCK < shape.cached_tokens <= prefix + 1
        assert factory.shape(cls, index, warm=False).cached_tokens == 0


def test_prompts_are_deterministic(factory: PromptFactory) -> None:
    cls = STANDARD_MIX[0][0]

    assert factory.prompt(cls, 3) == factory.prompt(cls, 3)
    assert factory.prompt(cls, 3) != factory.prompt(cls, 4)
    assert factory.shape(cls, 3) == factory.shape(cls, 3)


def test_standard_mix_classes_share_no_prefix(factory: PromptFactory) -> None:
    classes = [c for c, _ in STANDARD_MIX]
    for a, b in itertools.combinations(classes, 2):
        for index in range(2):
            assert _common(_ids(factory, a, index), _ids(factory, b, index)) < BLOCK


@pytest.mark.parametrize("sweep", SWEEPS.values(), ids=SWEEPS.keys())
def test_classes_of_a_sweep_share_no_prefix(factory: PromptFactory, sweep: Sweep) -> None:
    shared = {
        (a.name, b.name): _common(_ids(factory, a, 0), _ids(factory, b, 0))
        for a, b in itertools.combinations(sweep.fit + sweep.heldout, 2)
    }

    assert {pair: n for pair, n in shared.items() if n >= BLOCK} == {}


def test_measuring_some_of_the_loop_s_requests_gives_the_whole_loop_s_rate() -> None:
    # 4 slots of 0.5 s cycles; only every other request is measured.
    timings = _closed_loop(4, [0.5] * 4, waves=20)

    assert LoadRun(4, timings[::2]).steady_rps() == pytest.approx(8.0)


def _sweeper(emulated: bool, order: list[tuple[str, int]]) -> Calibrator:
    """A calibrator whose runs are stubbed: each one reads a busy time one unit longer than
    the last, as on a host that slows down at a steady pace."""
    cal = Calibrator.__new__(Calibrator)  # no node: only the sweep's order is under test
    cal.emulated = emulated
    cal.progress = lambda line: None
    slower = itertools.count(1)

    def rate(classes: list[object], concurrency: int, key: str) -> float:
        order.append((key, len(classes)))
        return 1.0 / next(slower)

    cal._rate = rate  # type: ignore[method-assign,assignment]
    return cal


def test_a_computing_engine_sweeps_forward_then_back_and_a_steady_drift_cancels() -> None:
    order: list[tuple[str, int]] = []
    workloads = [(name, [name] * 10) for name in ("a", "b", "c")]
    rates = _sweeper(False, order).rates(workloads, 4)  # type: ignore[arg-type]
    assert order == [("a", 5), ("b", 5), ("c", 5), ("c", 5), ("b", 5), ("a", 5)]
    assert [1.0 / rates[name] for name in "abc"] == pytest.approx([3.5, 3.5, 3.5])


def test_an_emulated_engine_sweeps_once() -> None:
    order: list[tuple[str, int]] = []
    workloads = [(name, [name] * 10) for name in ("a", "b")]
    rates = _sweeper(True, order).rates(workloads, 4)  # type: ignore[arg-type]
    assert order == [("a", 10), ("b", 10)]
    assert rates == {"a": 1.0, "b": 0.5}
