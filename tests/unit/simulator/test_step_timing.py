"""StepTiming's closed forms, which let SimNode jump over a run of decode iterations."""

from __future__ import annotations

import random

import pytest

from python_backends.sim_engine.hardware import StepTiming


def _timings(rng: random.Random) -> StepTiming:
    return StepTiming(
        base_ms=rng.uniform(0.1, 20.0),
        per_prefill_token_us=rng.uniform(0, 50),
        per_decode_seq_us=rng.choice([0.0, rng.uniform(0, 200)]),
        per_context_token_ns=rng.choice([0.0, rng.uniform(0, 500)]),
    )


def _iterations(timing: StepTiming, steps: int, generating: int, context: int) -> float:
    return sum(timing.iteration_s(0, generating, context + i * generating) for i in range(steps))


@pytest.mark.parametrize("seed", range(4))
def test_decode_run_is_the_sum_of_its_iterations(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        timing = _timings(rng)
        steps = rng.randint(0, 400)
        generating = rng.randint(0, 300)
        context = rng.randint(0, 2_000_000)

        closed = timing.decode_run_s(steps, generating, context)

        assert closed == pytest.approx(_iterations(timing, steps, generating, context), rel=1e-9)


def test_decode_run_of_one_step_is_one_iteration() -> None:
    timing = StepTiming(
        base_ms=3.3, per_prefill_token_us=13.5, per_decode_seq_us=5.0, per_context_token_ns=24.0
    )
    assert timing.decode_run_s(1, 7, 12_345) == timing.iteration_s(0, 7, 12_345)
    assert timing.decode_run_s(0, 7, 12_345) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_steps_within_is_the_largest_whole_run_that_fits(seed: int) -> None:
    rng = random.Random(100 + seed)
    for _ in range(300):
        timing = _timings(rng)
        generating = rng.randint(1, 300)
        context = rng.randint(0, 2_000_000)
        horizon = timing.decode_run_s(rng.randint(1, 5000), generating, context)
        seconds = rng.choice([rng.uniform(0, horizon), horizon * rng.random() ** 4])

        k = timing.decode_steps_within(seconds, generating, context)

        assert k >= 0
        assert timing.decode_run_s(k, generating, context) <= seconds
        assert timing.decode_run_s(k + 1, generating, context) > seconds


@pytest.mark.parametrize("k", [1, 2, 17, 1000])
def test_steps_within_at_an_exact_boundary_counts_that_iteration(k: int) -> None:
    timing = StepTiming(
        base_ms=2.0, per_prefill_token_us=10.0, per_decode_seq_us=50.0, per_context_token_ns=100.0
    )
    boundary = timing.decode_run_s(k, 5, 1000)

    assert timing.decode_steps_within(boundary, 5, 1000) == k
    assert timing.decode_steps_within(boundary * (1 - 1e-12), 5, 1000) == k - 1


def test_steps_within_nothing_is_zero() -> None:
    timing = StepTiming(
        base_ms=2.0, per_prefill_token_us=0.0, per_decode_seq_us=0.0, per_context_token_ns=0.0
    )
    assert timing.decode_steps_within(0.0, 3, 10) == 0
    assert timing.decode_steps_within(-1.0, 3, 10) == 0
    assert timing.decode_steps_within(0.0019, 3, 10) == 0
    assert timing.decode_steps_within(0.002, 3, 10) == 1
    assert timing.decode_steps_within(1.0, 3, 10) == 500
