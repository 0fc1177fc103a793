"""mu_cost: projected completion cost with prefix and session credit (the default policy)."""

from __future__ import annotations

import pytest

from router.policies import NodeSnapshot, Policy, RequestView, block_hashes, build_policy
from router.policies.mu_cost import MuCost
from router.policies.synthetic import make_node

PROMPT = list(range(1600))  # 100 blocks of 16
EXACT = {"index_tokens": 16, "prefill_fraction": 0.5}


def request(
    tokens: list[int] | None = PROMPT,
    *,
    session: str | None = None,
    mu: dict[str, float] | None = None,
    rid: str = "r",
) -> RequestView:
    tokens = tokens or []
    return RequestView(
        rid,
        "acme",
        "llama-3.1-8b",
        max(len(tokens), 1),
        100,
        mu or {"h": 200.0},
        session_id=session,
        block_hashes=block_hashes(tokens, 16),
    )


def nodes(**inflight: float) -> list[NodeSnapshot]:
    return [make_node(n, pair="h", inflight_mu=inflight.get(n, 1000.0)) for n in ("a", "b", "c")]


def send(policy: Policy, req: RequestView, fleet: list[NodeSnapshot], now: float = 0.0) -> str:
    decision = policy.choose(req, fleet, now)
    policy.on_routed(req, decision.node, now)
    return decision.node


def test_prefers_the_cache_holding_node_when_loads_are_equal() -> None:
    policy = build_policy("mu_cost", EXACT)
    assert isinstance(policy, MuCost)
    assert send(policy, request(), nodes()) == "a"  # all equal: first by name
    other = request([*PROMPT[:800], *range(50_000, 50_800)], rid="r2")  # shares 50 blocks
    send(policy, request(list(range(9000, 9400))), nodes(a=2000.0))  # unrelated -> b
    decision = policy.choose(other, nodes(), 1.0)
    assert decision.node == "a"
    # a holds half the prompt: credit 0.5 on the prefill share 0.5 of 200 MU
    assert decision.scores["a"] == pytest.approx(-(1000 + 200 * (1 - 0.5 * 0.5)) / 1000)
    assert decision.scores["b"] == pytest.approx(-1.2)
    assert "50% of the prompt credited" in decision.reason


def test_session_leaves_an_overloaded_node() -> None:
    policy = build_policy("mu_cost", EXACT)
    assert isinstance(policy, MuCost)
    assert send(policy, request(session="s1"), nodes()) == "a"
    # a bit busier: the credit (100 MU saved = 0.1 s) still makes a the cheapest
    assert send(policy, request(session="s1"), nodes(a=1050.0)) == "a"
    # far busier: the session moves, credit or not
    decision = policy.choose(request(session="s1"), nodes(a=5000.0), 1.0)
    assert decision.node == "b"
    assert decision.scores["a"] == pytest.approx(-5.1)
    assert decision.scores["b"] == pytest.approx(-1.2)
    policy.on_routed(request(session="s1"), "b", 1.0)
    assert policy.sessions["s1"] == "b"


def test_session_credit_without_block_hashes() -> None:
    policy = build_policy("mu_cost", {"prefill_fraction": 0.5, "session_credit": 0.4})
    assert isinstance(policy, MuCost)
    chat = request(None, session="chat")
    assert send(policy, chat, nodes()) == "a"
    # credit on a: 200 · 0.5 · 0.4 = 40 MU = 0.04 s
    decision = policy.choose(chat, nodes(a=1030.0), 1.0)
    assert decision.node == "a"
    assert decision.scores["a"] == pytest.approx(-(1030 + 200 - 40) / 1000)
    assert policy.choose(chat, nodes(a=1050.0), 1.0).node == "b"
    # another session gets no credit on a
    assert policy.choose(request(None, session="other"), nodes(a=1030.0), 1.0).node == "b"


def test_prices_heterogeneous_capacity() -> None:
    policy = build_policy("mu_cost")
    fleet = [
        make_node("h100", pair="h100", capacity_mu_s=1000.0, inflight_mu=1500.0),
        make_node("l40s", pair="l40s", capacity_mu_s=450.0, inflight_mu=500.0),
    ]
    req = request(None, mu={"h100": 400.0, "l40s": 380.0})
    decision = policy.choose(req, fleet, 0.0)
    assert decision.node == "h100"  # 1.9 s against 880 / 450 = 1.956 s
    assert decision.scores["h100"] == pytest.approx(-1.9)
    assert decision.scores["l40s"] == pytest.approx(-880 / 450)
    fleet[1] = make_node("l40s", pair="l40s", capacity_mu_s=450.0, inflight_mu=400.0)
    assert policy.choose(req, fleet, 1.0).node == "l40s"  # 780 / 450 = 1.733 s


def test_prefill_share_is_estimated_from_tokens_unless_fixed() -> None:
    policy = build_policy("mu_cost")
    assert isinstance(policy, MuCost)
    req = RequestView("r", "t", "m", 2000, 1000, {})
    # 2000 prompt tokens against 0.3 · 1000 expected output tokens weighing 6.5 each
    assert policy.prefill_share(req) == pytest.approx(2000 / (2000 + 6.5 * 300))
    assert policy.prefill_share(RequestView("r", "t", "m", 0, 10, {})) == 0.0
    fixed = build_policy("mu_cost", {"prefill_fraction": 0.2})
    assert isinstance(fixed, MuCost)
    assert fixed.prefill_share(req) == 0.2


def test_only_the_prefill_share_is_credited() -> None:
    """Even a fully cached prompt leaves the decode share to pay."""
    policy = build_policy("mu_cost", {"index_tokens": 16, "prefill_fraction": 0.25})
    send(policy, request(), nodes())  # -> a
    decision = policy.choose(request(), nodes(a=1100.0), 1.0)
    assert decision.scores["a"] == pytest.approx(-(1100 + 200 * 0.75) / 1000)
    assert decision.node == "b"  # 1.25 s > 1.2 s: the cache is not worth 100 MU more load


def test_coarse_index_rounds_credit_down() -> None:
    policy = build_policy("mu_cost", {"prefill_fraction": 0.5})  # 64-token index: 4 blocks
    half = [*PROMPT[:808], *range(70_000, 70_792)]  # shares 50.5 blocks -> 48 indexed
    send(policy, request(), nodes())  # -> a
    decision = policy.choose(request(half), nodes(), 1.0)
    assert decision.scores["a"] == pytest.approx(-(1000 + 200 * (1 - 0.5 * 48 / 100)) / 1000)


def test_stale_metrics_and_queues_cost() -> None:
    policy = build_policy("mu_cost", {"stale_after_s": 5.0, "staleness_s_per_s": 0.1})
    fleet = [
        make_node("a", pair="h", inflight_mu=1000.0, metrics_age_s=25.0),  # +2 s
        make_node("b", pair="h", inflight_mu=2500.0, metrics_age_s=4.0),
        make_node("c", pair="h", inflight_mu=1000.0, queued_requests=10),  # +10·300/1000 s
    ]
    decision = policy.choose(request(None), fleet, 0.0)
    assert decision.scores["a"] == pytest.approx(-(1.2 + 2.0))
    assert decision.scores["b"] == pytest.approx(-2.7)
    assert decision.scores["c"] == pytest.approx(-(1.2 + 3.0))
    assert decision.node == "b"


def test_learns_the_mean_request_mu_and_bounds_sessions() -> None:
    policy = build_policy(
        "mu_cost", {"request_mu_alpha": 0.5, "initial_request_mu": 300.0, "max_sessions": 2}
    )
    assert isinstance(policy, MuCost)
    for i in range(3):
        send(policy, request(None, session=f"s{i}", rid=f"r{i}"), nodes())
    assert list(policy.sessions) == ["s1", "s2"]
    # three updates towards 200 MU, each halving the distance from 300
    assert policy.mean_request_mu == pytest.approx(200 + 100 / 2**3)
