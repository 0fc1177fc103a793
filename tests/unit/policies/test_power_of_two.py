"""power_of_two: two seeded random candidates, the less loaded wins."""

from __future__ import annotations

from collections import Counter

import pytest

from router.policies import NodeSnapshot, build_policy
from router.policies.synthetic import SyntheticTraffic, make_node


def fleet() -> list[NodeSnapshot]:
    return [make_node(f"n{i}", inflight_mu=100.0 * i, capacity_mu_s=1000.0) for i in range(10)]


def test_never_picks_the_worse_of_its_two() -> None:
    nodes = fleet()
    load = {n.name: n.load_ratio for n in nodes}
    policy = build_policy("power_of_two", {"seed": 3})
    picked: Counter[str] = Counter()
    for request in SyntheticTraffic(seed=3).take(500):
        decision = policy.choose(request, nodes, 0.0)
        assert len(decision.scores) == 2
        a, b = decision.scores
        assert a != b
        assert load[decision.node] == min(load[a], load[b])
        assert decision.scores[decision.node] == pytest.approx(-load[decision.node])
        picked[decision.node] += 1
    assert "n9" not in picked  # the most loaded can never win a pair
    assert picked["n0"] > picked["n8"]
    assert len(picked) == 9


def test_seed_changes_the_samples() -> None:
    requests = SyntheticTraffic(seed=1).take(50)
    runs = []
    for seed in (1, 1, 2):
        policy = build_policy("power_of_two", {"seed": seed})
        runs.append([tuple(policy.choose(r, fleet(), 0.0).scores) for r in requests])
    assert runs[0] == runs[1] != runs[2]


def test_two_candidates_compares_both() -> None:
    nodes = [make_node("a", inflight_mu=10.0), make_node("b")]
    decision = build_policy("power_of_two").choose(SyntheticTraffic().next(), nodes, 0.0)
    assert decision.node == "b"
    assert set(decision.scores) == {"a", "b"}
