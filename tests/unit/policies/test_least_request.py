"""least_request: fewest in flight plus queued."""

from __future__ import annotations

from router.policies import build_policy
from router.policies.synthetic import SyntheticTraffic, make_node


def test_picks_the_idlest_by_count() -> None:
    nodes = [
        make_node("a", inflight_requests=3, queued_requests=2),  # 5
        make_node("b", inflight_requests=1, queued_requests=3),  # 4
        make_node("c", inflight_requests=4, queued_requests=0, inflight_mu=1.0),  # 4
        make_node("d", inflight_requests=2, queued_requests=5),  # 7
    ]
    decision = build_policy("least_request").choose(SyntheticTraffic().next(), nodes, 0.0)
    assert decision.node == "b"  # tie with c broken by name
    assert dict(decision.scores) == {"a": -5.0, "b": -4.0, "c": -4.0, "d": -7.0}


def test_blind_to_size_and_capacity() -> None:
    nodes = [
        make_node("big-busy", capacity_mu_s=4000.0, inflight_requests=2, inflight_mu=10.0),
        make_node("small-idle", capacity_mu_s=100.0, inflight_requests=1, inflight_mu=5000.0),
    ]
    assert build_policy("least_request").choose(SyntheticTraffic().next(), nodes, 0).node == (
        "small-idle"
    )
