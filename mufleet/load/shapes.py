"""Load schedules: how many users run at each second of a test.

Pure objects: ``at(t)`` gives ``(users, spawn_rate)`` at ``t`` seconds into the test, or
``None`` once it is over. ``loadtests/load_shapes.py`` wraps one in a Locust
``LoadTestShape``; the report builds the same schedule from the same options to know
where each step or spike began.

* :class:`Steady` – a constant user count.
* :class:`StepRamp` – equal-length steps of rising user counts, to find the knee where
  throughput stops growing and latency takes off.
* :class:`Spike` – a base load, a sudden peak, then the base again.
* :class:`TraceReplay` – a fixed pool of replay users while a trace window is replayed,
  then a drain; the trace's own timestamps set the arrivals, not the user count.

User counts never drop inside a step ramp or a replay, so no user is stopped mid-request
there. A spike's fall does stop users; ``--stop-timeout`` (``mufleet load`` sets it) lets
their current request finish first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

SHAPES = ("steady", "step", "spike", "trace")


class Schedule(Protocol):
    duration_s: float

    def at(self, t: float) -> tuple[int, float] | None: ...


@dataclass(frozen=True)
class Span:
    """A named part of a schedule, ``[start_s, end_s)`` from the test's start."""

    name: str
    start_s: float
    end_s: float
    users: int


@dataclass(frozen=True)
class Steady:
    users: int
    spawn_rate: float
    duration_s: float

    def at(self, t: float) -> tuple[int, float] | None:
        return (self.users, self.spawn_rate) if t < self.duration_s else None

    def spans(self) -> list[Span]:
        return [Span("steady", 0.0, self.duration_s, self.users)]


@dataclass(frozen=True)
class StepRamp:
    levels: tuple[int, ...]
    step_s: float
    spawn_rate: float

    @classmethod
    def to(cls, users: int, steps: int, duration_s: float, spawn_rate: float) -> StepRamp:
        """``steps`` equal steps over ``duration_s`` whose user counts rise evenly to
        ``users`` (each at least one more than the last)."""
        if steps < 1 or users < steps:
            raise ValueError(f"a step ramp needs 1 ≤ steps ≤ users, got {steps} and {users}")
        levels = tuple(math.ceil(users * (i + 1) / steps) for i in range(steps))
        return cls(levels, duration_s / steps, spawn_rate)

    @property
    def duration_s(self) -> float:
        return self.step_s * len(self.levels)

    def at(self, t: float) -> tuple[int, float] | None:
        if t >= self.duration_s:
            return None
        return self.levels[int(t // self.step_s)], self.spawn_rate

    def spans(self) -> list[Span]:
        return [
            Span(f"step {i + 1}", i * self.step_s, (i + 1) * self.step_s, users)
            for i, users in enumerate(self.levels)
        ]


@dataclass(frozen=True)
class Spike:
    base_users: int
    peak_users: int
    start_s: float
    hold_s: float
    duration_s: float
    spawn_rate: float

    @classmethod
    def of(cls, users: int, duration_s: float, spawn_rate: float) -> Spike:
        """A peak of ``users`` for the fifth of the test that starts at 40% of it, over a
        base of a quarter of them; the peak arrives within a second."""
        base = max(1, users // 4)
        return cls(base, users, 0.4 * duration_s, 0.2 * duration_s, duration_s, spawn_rate)

    def at(self, t: float) -> tuple[int, float] | None:
        if t >= self.duration_s:
            return None
        if self.start_s <= t < self.start_s + self.hold_s:
            return self.peak_users, max(self.spawn_rate, float(self.peak_users))
        return self.base_users, self.spawn_rate

    def spans(self) -> list[Span]:
        end = self.start_s + self.hold_s
        return [
            Span("before", 0.0, self.start_s, self.base_users),
            Span("spike", self.start_s, end, self.peak_users),
            Span("after", end, self.duration_s, self.base_users),
        ]


@dataclass(frozen=True)
class TraceReplay:
    users: int
    replay_s: float
    drain_s: float
    spawn_rate: float

    @property
    def duration_s(self) -> float:
        return self.replay_s + self.drain_s

    def at(self, t: float) -> tuple[int, float] | None:
        return (self.users, self.spawn_rate) if t < self.duration_s else None

    def spans(self) -> list[Span]:
        return [
            Span("replay", 0.0, self.replay_s, self.users),
            Span("drain", self.replay_s, self.duration_s, self.users),
        ]


AnySchedule = Steady | StepRamp | Spike | TraceReplay


def build_schedule(
    shape: str,
    users: int,
    spawn_rate: float,
    duration_s: float,
    *,
    steps: int = 6,
    drain_s: float = 15.0,
) -> AnySchedule:
    """The schedule ``mufleet load`` and the locustfile agree on for the same options.

    ``users`` is the steady count, the last step, the spike's peak or the replay pool.
    ``duration_s`` is the whole test; a trace replay keeps its last ``drain_s`` (at most a
    quarter of it) for the requests still running.
    """
    if users < 1 or duration_s <= 0 or spawn_rate <= 0:
        raise ValueError("users, duration and spawn rate must be positive")
    if shape == "steady":
        return Steady(users, spawn_rate, duration_s)
    if shape == "step":
        return StepRamp.to(users, min(steps, users), duration_s, spawn_rate)
    if shape == "spike":
        return Spike.of(users, duration_s, spawn_rate)
    if shape == "trace":
        drain = min(drain_s, duration_s / 4)
        # the whole pool at once: a replay user not yet started cannot take its request
        return TraceReplay(users, duration_s - drain, drain, max(spawn_rate, float(users)))
    raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
