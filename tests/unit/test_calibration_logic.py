"""Calibration logic that needs no server: steady-state rates, percentiles, prompt shapes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from mufleet.calibration.load import LoadRun
from mufleet.calibration.workload import (
    FULL_SWEEP,
    QUICK_SWEEP,
    STANDARD_MIX,
    PromptFactory,
    RequestClass,
    Sweep,
)
from mufleet.streaming_client import RequestTiming
from mufleet.tiny_model import CORPUS_PATH

BLOCK = 32
RATE = 8.0
SWEEPS = {"quick": QUICK_SWEEP, "full": FULL_SWEEP}
SAMPLE_CLASSES = list(
    dict.fromkeys([c for c, _ in STANDARD_MIX] + QUICK_SWEEP.fit + QUICK_SWEEP.heldout)
)


def _done_at(times: Sequence[float], latency: float = 0.5) -> list[RequestTiming]:
    """Successful requests finishing at ``times``, each sent ``latency`` earlier."""
    return [RequestTiming(t - latency, t - latency / 2, t, 16) for t in times]


def _run(concurrency: int, timings: list[RequestTiming]) -> LoadRun:
    return LoadRun(concurrency, timings, [False] * len(timings))


# -- LoadRun.steady_rps -----------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 2, 4, 16])
def test_evenly_spaced_completions_give_their_rate(concurrency: int) -> None:
    times = [1.0 + i / RATE for i in range(80)]

    rps = _run(concurrency, _done_at(times)).steady_rps()

    assert rps == pytest.approx(RATE, rel=0.01)


def test_ramp_and_tail_are_left_out() -> None:
    concurrency = 4
    ramp = [0.05, 0.06, 0.07]  # the first concurrency-1 completions come in a burst
    steady = [1.0 + i / RATE for i in range(44)]  # includes the concurrency-th and the
    tail = [steady[-1] + d for d in (1.0, 3.0, 6.0)]  # last one with the batch still full
    timings = _done_at(ramp + steady + tail)

    rps = _run(concurrency, timings).steady_rps()

    assert rps == pytest.approx(RATE, rel=0.01)
    whole = (len(timings) - 1) / (tail[-1] - ramp[0])
    assert abs(whole - RATE) / RATE > 0.2  # the exclusion is what makes it right


def test_completion_order_not_list_order_counts() -> None:
    times = [1.0 + i / RATE for i in range(60)]
    shuffled = times[1::2] + times[::2]

    assert _run(4, _done_at(shuffled)).steady_rps() == pytest.approx(RATE, rel=0.01)


def test_failed_requests_are_not_completions() -> None:
    times = [1.0 + i / RATE for i in range(60)]
    failed = [RequestTiming(t - 0.1, None, t, 0, error="boom") for t in (1.01, 2.02, 3.03)]

    run = _run(4, _done_at(times) + failed)

    assert run.steady_rps() == pytest.approx(RATE, rel=0.01)
    assert run.errors == ["boom"] * 3


def test_short_run_falls_back_to_the_whole_run() -> None:
    times = [1.0, 1.5, 1.7, 2.6, 2.7, 3.0, 3.9, 4.0, 4.2, 5.0]
    run = _run(8, _done_at(times))

    assert run.steady_rps() == pytest.approx((len(times) - 1) / (times[-1] - times[0]))


def test_simultaneous_completions_use_the_wall_time_from_the_first_send() -> None:
    timings = [RequestTiming(sent, None, 2.0, 4) for sent in (0.0, 0.5, 1.0)]

    assert _run(3, timings).steady_rps() == pytest.approx(3 / 2.0)
    assert _run(1, timings[:1]).steady_rps() == pytest.approx(1 / 2.0)


# -- LoadRun.percentile -----------------------------------------------------------------


def test_percentile_uses_streamed_successful_requests_only() -> None:
    good = [RequestTiming(0.0, ttft, ttft + 0.9, 10) for ttft in (0.1, 0.2, 0.3, 0.4, 0.5)]
    unary = [RequestTiming(0.0, 10.0, 11.0, 10) for _ in range(5)]
    failed = [RequestTiming(0.0, 20.0, 21.0, 10, error="x") for _ in range(5)]
    one_token = [RequestTiming(0.0, 0.3, 0.3, 1)]
    timings = good + unary + failed + one_token
    streamed = [True] * 5 + [False] * 5 + [True] * 5 + [True]

    run = LoadRun(4, timings, streamed)

    assert run.percentile("ttft_s", 100) == pytest.approx(0.5)
    assert run.percentile("ttft_s", 0) == pytest.approx(0.1)
    assert run.percentile("ttft_s", 50) == pytest.approx(0.3)
    # TPOT of the good ones is 0.9 / 9 = 0.1; the one-token request has none.
    assert run.percentile("tpot_s", 99) == pytest.approx(0.1)


def test_percentile_without_streamed_requests_is_nan() -> None:
    run = _run(2, _done_at([1.0, 2.0]))

    assert math.isnan(run.percentile("ttft_s", 99))


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
    assert sweep.levels == sorted(sweep.levels)
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
