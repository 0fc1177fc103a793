"""Load schedules: the user count at each second, and their spans."""

from __future__ import annotations

import pytest

from mufleet.load.shapes import Spike, Steady, StepRamp, TraceReplay, build_schedule


def test_steady_holds_then_ends() -> None:
    shape = Steady(10, 2.0, 30.0)
    assert shape.at(0.0) == (10, 2.0) and shape.at(29.9) == (10, 2.0)
    assert shape.at(30.0) is None


def test_step_ramp_rises_evenly_to_the_last_step() -> None:
    ramp = StepRamp.to(48, 6, 120.0, 5.0)
    assert ramp.levels == (8, 16, 24, 32, 40, 48)
    assert ramp.step_s == 20.0 and ramp.duration_s == 120.0
    assert ramp.at(19.9) == (8, 5.0) and ramp.at(20.0) == (16, 5.0)
    assert ramp.at(119.9) == (48, 5.0) and ramp.at(120.0) is None
    spans = ramp.spans()
    assert [(s.start_s, s.end_s, s.users) for s in spans[:2]] == [(0, 20, 8), (20, 40, 16)]


def test_step_ramp_never_drops_and_needs_a_user_per_step() -> None:
    ramp = StepRamp.to(10, 4, 40.0, 1.0)
    assert ramp.levels == (3, 5, 8, 10)
    counts = [ramp.at(t / 10)[0] for t in range(400)]  # type: ignore[index]
    assert counts == sorted(counts)
    with pytest.raises(ValueError):
        StepRamp.to(3, 4, 40.0, 1.0)


def test_spike_jumps_to_the_peak_at_once_and_back() -> None:
    spike = Spike.of(40, 100.0, 2.0)
    assert spike.at(39.9) == (10, 2.0)
    users, rate = spike.at(40.0)  # type: ignore[misc]
    assert users == 40 and rate >= 40, "the peak arrives within a second"
    assert spike.at(59.9)[0] == 40  # type: ignore[index]
    assert spike.at(60.0) == (10, 2.0) and spike.at(100.0) is None
    assert [s.name for s in spike.spans()] == ["before", "spike", "after"]


def test_trace_replay_keeps_a_drain_inside_the_test_and_spawns_the_pool_at_once() -> None:
    replay = build_schedule("trace", 32, 2.0, 60.0, drain_s=15.0)
    assert isinstance(replay, TraceReplay)
    assert (replay.replay_s, replay.drain_s, replay.duration_s) == (45.0, 15.0, 60.0)
    assert replay.at(0.0) == (32, 32.0)
    short = build_schedule("trace", 4, 1.0, 20.0, drain_s=15.0)
    assert isinstance(short, TraceReplay) and short.drain_s == 5.0, "at most a quarter"


def test_build_schedule_checks_its_inputs() -> None:
    assert isinstance(build_schedule("steady", 5, 1.0, 10.0), Steady)
    ramp = build_schedule("step", 3, 1.0, 30.0, steps=6)
    assert isinstance(ramp, StepRamp) and ramp.levels == (1, 2, 3), "no more steps than users"
    with pytest.raises(ValueError, match="unknown shape"):
        build_schedule("wave", 5, 1.0, 10.0)
    with pytest.raises(ValueError):
        build_schedule("steady", 0, 1.0, 10.0)
