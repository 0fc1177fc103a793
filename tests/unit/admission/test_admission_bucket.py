"""Unit tests for the MU token bucket: refill, depth, retry-after, refund, settle, debt."""

from __future__ import annotations

import math
import random

import pytest

from router.admission import MuBucket


def _bucket(rate: float = 100.0, depth: float = 300.0, now: float = 0.0) -> MuBucket:
    return MuBucket.full(rate, depth, now, min_retry_s=0.05, max_retry_s=60.0)


def test_starts_full_and_takes() -> None:
    b = _bucket()
    assert b.level(0.0) == 300.0
    assert b.try_take(120.0, 0.0)
    assert b.level(0.0) == pytest.approx(180.0)
    assert b.try_take(180.0, 0.0)
    assert not b.try_take(1.0, 0.0)
    assert b.level(0.0) == pytest.approx(0.0)


def test_refill_rate_and_depth_cap() -> None:
    b = _bucket()
    assert b.try_take(300.0, 10.0)
    assert b.level(10.5) == pytest.approx(50.0)
    assert b.level(12.0) == pytest.approx(200.0)
    assert b.level(1000.0) == 300.0  # capped at depth
    # level() does not change the state; time going backwards is no time passing
    assert b.level(5.0) == pytest.approx(0.0)
    assert b.try_take(0.0, 5.0)
    assert b.updated_at == 10.0


def test_retry_after_is_time_until_fit() -> None:
    b = _bucket()
    assert b.retry_after_s(50.0, 0.0) == 0.0
    assert b.try_take(300.0, 0.0)
    assert b.retry_after_s(50.0, 0.0) == pytest.approx(0.5)
    assert b.retry_after_s(50.0, 0.2) == pytest.approx(0.3)
    assert not b.try_take(50.0, 0.49)
    assert b.try_take(50.0, 0.5)


def test_retry_after_floor() -> None:
    b = _bucket()
    b.try_take(300.0, 0.0)
    assert b.retry_after_s(0.001, 0.0) == 0.05  # 10 µs of refill, floored


def test_oversized_request_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    b = _bucket()
    b.try_take(150.0, 0.0)
    # 1000 MU never fits a 300 MU bucket: the answer is the time to fill it, not infinity.
    assert b.retry_after_s(1000.0, 0.0) == pytest.approx(1.5)
    assert not b.try_take(1000.0, 1.0)
    assert b.try_take(1000.0, 1.5)
    assert b.level(1.5) == pytest.approx(-700.0)
    # the debt is paid back by the refill before anything else fits
    assert b.retry_after_s(10.0, 1.5) == pytest.approx(7.1)


def test_retry_after_never_infinite() -> None:
    b = _bucket()
    b.settle(0.0, 1e9, 0.0)  # a huge debt
    assert b.retry_after_s(1.0, 0.0) == 60.0
    frozen = MuBucket.full(0.0, 100.0, 0.0, max_retry_s=30.0)
    assert frozen.try_take(100.0, 0.0)
    assert frozen.retry_after_s(1.0, 5.0) == 30.0
    disabled = MuBucket.full(0.0, 0.0, 0.0, max_retry_s=30.0)
    assert not disabled.enabled
    assert not disabled.try_take(0.0, 0.0)
    assert disabled.retry_after_s(1.0, 0.0) == 30.0


def test_refund_capped_at_depth() -> None:
    b = _bucket()
    b.try_take(100.0, 0.0)
    b.refund(100.0, 0.0)
    assert b.level(0.0) == 300.0
    b.refund(500.0, 0.0)
    assert b.level(0.0) == 300.0
    b.try_take(300.0, 0.0)
    b.refund(100.0, 0.5)  # refilled 50 + 100 back
    assert b.level(0.5) == pytest.approx(150.0)


def test_settle_refunds_overestimate_and_draws_underestimate() -> None:
    b = _bucket()
    b.try_take(200.0, 0.0)  # level 100
    b.settle(200.0, 120.0, 0.0)  # overestimated by 80
    assert b.level(0.0) == pytest.approx(180.0)
    b.settle(100.0, 400.0, 0.0)  # underestimated by 300: debt
    assert b.level(0.0) == pytest.approx(-120.0)
    assert not b.try_take(0.0, 0.0)  # even a free request waits while in debt
    assert b.retry_after_s(0.0, 0.0) == pytest.approx(1.2)
    assert b.try_take(0.0, 1.2)
    b.settle(0.0, 0.0, 1.2)
    b.settle(50.0, 0.0, 100.0)  # credit capped at the depth
    assert b.level(100.0) == 300.0


def test_reconfigure_keeps_level_capped() -> None:
    b = _bucket()
    b.try_take(50.0, 0.0)  # 250
    b.reconfigure(10.0, 100.0, 0.0)
    assert b.level(0.0) == 100.0
    b.try_take(100.0, 0.0)
    assert b.level(2.0) == pytest.approx(20.0)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_rejects_bad_mu(bad: float) -> None:
    b = _bucket()
    with pytest.raises(ValueError):
        b.try_take(bad, 0.0)
    with pytest.raises(ValueError):
        b.settle(1.0, bad, 0.0)
    with pytest.raises(ValueError):
        b.retry_after_s(bad, 0.0)


def test_rejects_bad_construction() -> None:
    with pytest.raises(ValueError):
        MuBucket.full(-1.0, 10.0, 0.0)
    with pytest.raises(ValueError):
        MuBucket.full(1.0, math.inf, 0.0)
    with pytest.raises(ValueError):
        MuBucket.full(1.0, 1.0, 0.0, min_retry_s=2.0, max_retry_s=1.0)


@pytest.mark.parametrize("seed", range(20))
def test_random_sequences_match_a_reference_and_respect_invariants(seed: int) -> None:
    """Random takes/refunds/settles against a straightforward reference model."""
    rng = random.Random(seed)
    rate, depth = rng.uniform(1, 500), rng.uniform(1, 2000)
    b = MuBucket.full(rate, depth, 0.0, min_retry_s=0.01, max_retry_s=1e9)
    ref_level, ref_t, now = depth, 0.0, 0.0
    for _ in range(300):
        now += rng.expovariate(2.0)
        ref_level = min(depth, ref_level + rate * (now - ref_t))
        ref_t = now
        mu = rng.uniform(0, depth * 1.5)
        op = rng.random()
        if op < 0.5:
            retry = b.retry_after_s(mu, now)
            fits = ref_level >= min(mu, depth) - 1e-6 * depth
            took = b.try_take(mu, now)
            assert took == fits or abs(ref_level - min(mu, depth)) < 1e-6 * depth
            if took:
                ref_level -= mu
                assert retry == 0.0
            else:
                assert 0.01 <= retry < math.inf
                # waiting exactly retry-after is enough (when nothing else happens)
                probe = MuBucket(rate, depth, b.level_mu, b.updated_at, 0.01, 1e9)
                assert probe.try_take(mu, now + retry)
        elif op < 0.7:
            b.refund(mu, now)
            ref_level = min(depth, ref_level + mu)
        else:
            actual = mu * rng.uniform(0, 2)
            b.settle(mu, actual, now)
            ref_level = min(depth, ref_level + mu - actual)
        assert b.level(now) == pytest.approx(ref_level, abs=1e-6 * depth)
        assert b.level(now) <= depth
