"""Unit tests for PriorityMapper: tier bands, MU within a band, aging, clamping."""

from __future__ import annotations

import itertools
import random

import pytest
from pydantic import ValidationError

from router.admission import CANARY_LEVEL, TIERS, PriorityConfig, PriorityMapper

CHEAP, DEAR = 100.0, 5000.0


def _mapper(**kw: object) -> PriorityMapper:
    return PriorityMapper(PriorityConfig.model_validate({"cheap_mu": 500.0, **kw}))


def test_total_and_default_levels() -> None:
    m = _mapper()
    assert m.total_levels == 7  # 1 canary level + 3 tiers x 2
    assert m.default_level == 5  # standard band, expensive end
    assert m.band("interactive") == (2, 3)
    assert m.band("standard") == (4, 5)
    assert m.band("batch") == (6, 7)
    assert _mapper(levels_per_tier=3, cheap_mu=[100.0, 1000.0]).total_levels == 10
    assert m.level(None, CHEAP, 0.0, 2) == m.default_level


def test_tier_order() -> None:
    m = _mapper()
    for mu in (CHEAP, DEAR):
        levels = [m.level(tier, mu, 0.0, 2) for tier in TIERS]
        assert levels == sorted(levels) and len(set(levels)) == 3
    # even the expensive interactive request runs ahead of the cheapest standard one
    assert m.level("interactive", DEAR, 0.0, 2) < m.level("standard", 0.0, 0.0, 2)
    assert m.level("standard", DEAR, 0.0, 2) < m.level("batch", 0.0, 0.0, 2)


def test_cheap_ahead_of_expensive_within_a_tier() -> None:
    m = _mapper()
    assert m.level("interactive", CHEAP, 0.0, 2) == 2
    assert m.level("interactive", 500.0, 0.0, 2) == 2  # the threshold itself is cheap
    assert m.level("interactive", 500.01, 0.0, 2) == 3
    assert m.level("batch", CHEAP, 0.0, 2) == 6
    assert m.level("batch", DEAR, 0.0, 2) == 7


def test_boundaries_list() -> None:
    m = _mapper(levels_per_tier=3, cheap_mu=[100.0, 1000.0])
    assert [m.level("standard", mu, 0.0, 2) for mu in (50, 100, 101, 1000, 1e6)] == [
        5,
        5,
        6,
        6,
        7,
    ]


def test_custom_tier_order() -> None:
    m = _mapper(tiers=["batch", "interactive", "standard"])
    assert m.level("batch", CHEAP, 0.0, 2) == 2
    assert m.default_level == 7


def test_aging_promotes_one_level_per_aging_s() -> None:
    m = _mapper(aging_s=10.0)
    assert [m.level("batch", DEAR, w, 2) for w in (0, 9.9, 10, 25, 40, 50, 1e6)] == [
        7,
        7,
        6,
        5,
        3,
        2,
        2,  # never above level 2
    ]
    assert m.level("batch", DEAR, -5.0, 2) == 7  # negative waits count as none
    no_aging = _mapper(aging_s=None)
    assert no_aging.level("batch", DEAR, 1e6, 2) == 7
    with pytest.raises(ValueError):
        m.level("batch", DEAR, float("inf"), 2)


def test_level_one_is_never_returned() -> None:
    m = _mapper(aging_s=1.0)
    rng = random.Random(0)
    seen = set()
    for _ in range(2000):
        level = m.level(
            rng.choice([None, *TIERS]),
            rng.uniform(0, 2000),
            rng.uniform(0, 20),
            rng.randint(2, 9),
            requested=rng.choice([None, -3, 0, 1, 2, 5, 99]),
        )
        assert CANARY_LEVEL < level <= m.total_levels
        seen.add(level)
    assert seen == set(range(2, 8))


def test_clamped_to_max_priority() -> None:
    m = _mapper(aging_s=10.0)
    # a standard-only tenant (max_priority 4) asking for the interactive tier, or level 1
    assert m.level("interactive", CHEAP, 0.0, 4) == 4
    assert m.level("standard", CHEAP, 0.0, 4, requested=1) == 4
    assert m.level("standard", CHEAP, 0.0, 4, requested=2) == 4
    # aging cannot lift it above its maximum either
    assert m.level("batch", DEAR, 1e3, 4) == 4
    # asking for a *lower* priority than the mapping is honoured
    assert m.level("interactive", CHEAP, 0.0, 2, requested=6) == 6
    # beyond Triton's priority_levels it would run at the default level: kept in range
    assert m.level("batch", DEAR, 0.0, 2, requested=99) == 7
    assert m.level("standard", CHEAP, 0.0, 50) == 7


def test_monotone_in_mu_and_wait() -> None:
    m = _mapper(levels_per_tier=4, cheap_mu=[50.0, 200.0, 800.0], aging_s=3.0)
    mus = [0, 10, 50, 51, 199, 200, 201, 799, 800, 801, 1e5]
    waits = [0, 1, 3, 5, 6, 9, 30]
    for tier, cap in itertools.product(TIERS, (2, 3, 6)):
        for a, b in itertools.pairwise(mus):
            assert m.level(tier, a, 0.0, cap) <= m.level(tier, b, 0.0, cap)
        for a, b in itertools.pairwise(waits):
            assert m.level(tier, 300, a, cap) >= m.level(tier, 300, b, cap)


@pytest.mark.parametrize(
    "bad",
    [
        {"tiers": ["interactive", "standard"]},
        {"tiers": ["interactive", "standard", "standard"]},
        {"levels_per_tier": 3, "cheap_mu": 100.0},
        {"levels_per_tier": 3, "cheap_mu": [200.0, 100.0]},
        {"levels_per_tier": 2, "cheap_mu": [0.0]},
        {"levels_per_tier": 0},
        {"aging_s": 0.0},
        {"extra": 1},
    ],
)
def test_config_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PriorityConfig.model_validate(bad)


def test_single_level_per_tier() -> None:
    m = _mapper(levels_per_tier=1, cheap_mu=[])
    assert m.total_levels == 4
    assert [m.level(t, DEAR, 0.0, 2) for t in TIERS] == [2, 3, 4]
    with pytest.raises(ValueError):
        m.level("batch", -1.0, 0.0, 2)
