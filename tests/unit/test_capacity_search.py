"""The capacity search against a synthetic engine whose latency grows with concurrency."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest

from mufleet.calibration.capacity import CapacitySearch, LoadPoint, SearchSettings
from router.cost_model import SLO

SLO_ = SLO(ttft_p99_s=1.0, tpot_p99_s=0.030)


@dataclass
class SyntheticEngine:
    """TPOT rises linearly with concurrency: 10 ms + 0.5 ms per sequence, so its p99 (about
    1.1x the mean here) crosses 30 ms near concurrency 32."""

    seed: int = 0
    outliers: dict[int, int] = field(default_factory=dict)
    """Level → how many of its measurements (from the first) get one slow request."""
    flukes: dict[int, int] = field(default_factory=dict)
    """Level → measurement number whose requests are all twice as slow (a host hiccup)."""
    paced_below_scale: dict[int, float] = field(default_factory=dict)
    """Level → the time scale it needs before it stops being host-paced."""
    time_scale: float = 1.0
    calls: list[tuple[int, int]] = field(default_factory=list)
    scales: dict[int, set[float]] = field(default_factory=dict)
    """Level → the time scales it was measured at."""

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def measure(self, level: int, samples: int) -> LoadPoint:
        self.calls.append((level, samples))
        nth = sum(1 for c, _ in self.calls if c == level)
        slow = 2.0 if self.flukes.get(level) == nth else 1.0
        tpot_mean = (0.010 + 0.0005 * level) * slow
        tpot = [tpot_mean * self.rng.uniform(0.9, 1.1) for _ in range(samples)]
        ttft = [0.05 * self.rng.uniform(0.5, 1.5) * slow for _ in range(samples)]
        if nth <= self.outliers.get(level, 0):
            ttft[samples // 2] = 60.0
            tpot[samples // 2] = 5.0
        paced = self.time_scale < self.paced_below_scale.get(level, 0.0)
        rps = level / (0.05 + 128 * tpot_mean)
        self.scales.setdefault(level, set()).add(self.time_scale)
        return LoadPoint(
            level,
            rps,
            tuple(ttft),
            tuple(tpot),
            host_paced=paced,
            pace_note="lag",
            time_scale=self.time_scale,
        )


def search(engine: SyntheticEngine, **settings: object) -> CapacitySearch:
    return CapacitySearch(SearchSettings(SLO_, **settings), engine.measure)  # type: ignore[arg-type]


def test_it_finds_the_knee_by_bisection_with_a_full_measurement() -> None:
    result = search(SyntheticEngine()).run()
    assert result.slo_bounded
    assert result.first_failing is not None
    # 0.5 ms/seq x 1.1 (p99 of the noise) crosses 30 ms at ~30-34
    assert 26 <= result.concurrency <= 34, [p.concurrency for p in result.points]
    assert result.first_failing - result.concurrency <= max(1, math.ceil(0.1 * result.concurrency))
    assert result.best is not None and result.best.samples >= 200
    assert result.best.meets(SLO_)


def test_one_slow_outlier_does_not_move_the_capacity_point() -> None:
    clean = search(SyntheticEngine(seed=3)).run()
    assert clean.best is not None
    knee = clean.best.concurrency
    dirty = search(SyntheticEngine(seed=3, outliers={knee: 9})).run()
    assert dirty.best is not None
    assert dirty.best.concurrency == knee
    assert dirty.best.rps == pytest.approx(clean.best.rps)
    assert max(dirty.best.ttft_s) == 60.0  # the outlier is in the point, and below its p99


def test_a_breaking_level_is_re_run_before_it_counts() -> None:
    engine = SyntheticEngine(flukes={16: 1})
    result = search(engine, margin=0.01).run()  # no scout passes on margin: all full
    runs_at_16 = [s for c, s in engine.calls if c == 16]
    assert len(runs_at_16) == 2  # failed once (the hiccup), re-run, passed
    assert result.concurrency > 16


def test_a_host_paced_point_is_measured_again_after_slowing_the_emulation() -> None:
    engine = SyntheticEngine(paced_below_scale={8: 4.0, 16: 4.0})
    fixes: list[int] = []

    def slow_down(point: LoadPoint) -> bool:
        fixes.append(point.concurrency)
        engine.time_scale *= 2
        return True

    s = CapacitySearch(SearchSettings(SLO_), engine.measure, on_host_paced=slow_down)
    result = s.run()
    assert fixes == [8, 8]  # twice at the first paced level: x2, x2 = 4
    assert engine.time_scale == 4.0
    assert not any(p.host_paced for p in [result.best] if p)
    assert 26 <= result.concurrency <= 34


def test_when_the_host_cannot_be_outpaced_the_search_stops_below_and_says_so() -> None:
    engine = SyntheticEngine(paced_below_scale={16: 1e9})
    s = CapacitySearch(SearchSettings(SLO_), engine.measure, on_host_paced=lambda p: False)
    result = s.run()
    assert result.concurrency == 8
    assert not result.slo_bounded
    assert any("host set the pace" in note for note in result.notes)
    assert result.best is not None and result.best.samples >= 200


def test_a_search_that_never_breaks_the_slo_says_its_capacity_is_a_lower_bound() -> None:
    result = search(SyntheticEngine(), max_level=16).run()
    assert result.concurrency == 16
    assert not result.slo_bounded
    assert any("lower bound" in note for note in result.notes)


def test_scout_levels_far_inside_the_slo_are_cheap() -> None:
    engine = SyntheticEngine()
    search(engine).run()
    assert engine.calls[:3] == [(1, 8), (2, 8), (4, 8)]
    assert len(engine.calls) < 20


def test_the_capacity_point_keeps_the_time_scale_it_was_measured_at() -> None:
    """A level above the knee that slows the emulation after the knee was measured does
    not change the scale the knee is recorded at."""
    engine = SyntheticEngine(paced_below_scale={64: 2.0, 48: 4.0})

    def slow_down(point: LoadPoint) -> bool:
        engine.time_scale *= 2
        return True

    result = CapacitySearch(SearchSettings(SLO_), engine.measure, on_host_paced=slow_down).run()
    assert engine.time_scale == 4.0
    assert result.best is not None
    assert result.best.time_scale == max(engine.scales[result.best.concurrency])
    assert result.best.time_scale < engine.time_scale
