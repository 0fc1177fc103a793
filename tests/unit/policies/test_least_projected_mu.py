"""least_projected_mu: (in-flight + reserved + this request's MU on the pair) / capacity."""

from __future__ import annotations

import pytest

from router.policies import RequestView, build_policy
from router.policies.synthetic import make_node


def request(mu_by_pair: dict[str, float]) -> RequestView:
    return RequestView("r", "t", "llama-3.1-8b", 1000, 256, mu_by_pair)


def test_accounts_for_capacity() -> None:
    """A node with 2× the capacity and 1.5× the in-flight MU wins."""
    nodes = [
        make_node("small", pair="p", capacity_mu_s=500.0, inflight_mu=1000.0),
        make_node("big", pair="p", capacity_mu_s=1000.0, inflight_mu=1500.0),
    ]
    decision = build_policy("least_projected_mu").choose(request({"p": 100.0}), nodes, 0.0)
    assert decision.node == "big"
    assert decision.scores["big"] == pytest.approx(-1.6)
    assert decision.scores["small"] == pytest.approx(-2.2)


def test_prices_the_request_on_each_pair_and_counts_reservations() -> None:
    nodes = [
        make_node("h100", pair="h100", capacity_mu_s=1000.0, inflight_mu=500.0),
        make_node("l40s", pair="l40s", capacity_mu_s=450.0, inflight_mu=100.0),
    ]
    # on its own pair the request is cheap on the l40s: (100 + 50) / 450 < (500 + 400) / 1000
    policy = build_policy("least_projected_mu")
    assert policy.choose(request({"h100": 400.0, "l40s": 50.0}), nodes, 0.0).node == "l40s"
    nodes[1] = make_node(
        "l40s", pair="l40s", capacity_mu_s=450.0, inflight_mu=100.0, reserved_mu=300.0
    )
    assert policy.choose(request({"h100": 400.0, "l40s": 50.0}), nodes, 1.0).node == "h100"
