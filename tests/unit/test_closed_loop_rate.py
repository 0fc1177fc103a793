"""The closed loop's rate estimator against the sim engine it measures, on a virtual clock.

Identical requests in a closed loop fall into lockstep waves on an inflight-batching
engine: every slot's request starts and ends with the others'. The rate a calibration
takes from three waves of such a run must be the engine's long-run rate.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from mufleet.calibration.load import EngineTiming, LoadRun
from python_backends.generation import GenerationSpec
from python_backends.sim_engine import engine as sim_module
from python_backends.sim_engine.engine import SimConfig, SimEngine
from python_backends.sim_engine.faults import FaultSwitches
from python_backends.sim_engine.hardware import HardwareProfile, resolve_profile

CONCURRENCY = 16
MEASURED_WAVES = 3
LONG_RUN_WAVES = 60


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


def closed_loop_on_sim(
    monkeypatch: pytest.MonkeyPatch,
    prompt: int,
    cached: int,
    output: int,
    total: int,
    stagger_s: float,
) -> tuple[list[EngineTiming], float]:
    """``total`` requests through a closed loop of ``CONCURRENCY`` slots, slot ``k``
    starting ``k * stagger_s`` late as :func:`~mufleet.calibration.load.closed_loop`
    starts them; every request's timing in send order, and the virtual time the last
    one ended."""
    clock = VirtualClock()
    monkeypatch.setattr(
        sim_module, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep)
    )
    profile = HardwareProfile.load(resolve_profile("llama-3.1-8b_a100-sxm-80gb_tp1"))
    engine = SimEngine(
        SimConfig(profile=profile, vocab_size=1000, max_num_sequences=profile.max_num_sequences)
    )
    engine.sleep = clock.sleep
    rng = random.Random(7)
    prefix = [rng.randrange(10, 1000) for _ in range(cached)]
    timings: list[EngineTiming | None] = [None] * total
    sent = 0

    def send() -> None:
        nonlocal sent
        index, began = sent, clock.now
        sent += 1
        ids = prefix + [rng.randrange(10, 1000) for _ in range(prompt - cached)]

        def emit(event: object) -> None:
            if getattr(event, "finished", False):
                timings[index] = EngineTiming(began, clock.now)
                if sent < total:
                    send()

        engine.submit(GenerationSpec(input_ids=tuple(ids), max_new_tokens=output), emit)

    starts = [k * stagger_s for k in range(CONCURRENCY)]
    faults = FaultSwitches()
    while any(t is None for t in timings):
        while starts and starts[0] <= clock.now:
            starts.pop(0)
            send()
        if engine.step(faults) == 0.0:
            assert starts, "the engine went idle with requests outstanding"
            clock.now = starts[0]
    done = [t for t in timings if t is not None]
    return done, max(t.finished_at for t in done)


@pytest.mark.parametrize(
    ("prompt", "cached", "output"),
    [(128, 0, 16), (256, 224, 32), (1024, 0, 16)],
    ids=["short", "cached-prefix", "long-prompt"],
)
@pytest.mark.parametrize("stagger_s", [0.0, 0.002, 0.01])
def test_three_lockstep_waves_give_the_engine_s_long_run_rate(
    monkeypatch: pytest.MonkeyPatch, prompt: int, cached: int, output: int, stagger_s: float
) -> None:
    total = CONCURRENCY * LONG_RUN_WAVES
    timings, end = closed_loop_on_sim(monkeypatch, prompt, cached, output, total, stagger_s)
    long_run_rate = total / end  # one wave of ramp in 60: within 2%

    measured = timings[CONCURRENCY : CONCURRENCY * (1 + MEASURED_WAVES)]
    rate = LoadRun(CONCURRENCY, measured).steady_rps()

    assert rate == pytest.approx(long_run_rate, rel=0.03)
