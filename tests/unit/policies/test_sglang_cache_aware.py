"""sglang_cache_aware: shortest queue if imbalanced, else the longest prefix over the threshold."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from router.policies import (
    Decision,
    NodeSnapshot,
    NodeState,
    Policy,
    PolicyConfigError,
    RequestView,
    block_hashes,
    build_policy,
)
from router.policies.sglang_cache_aware import SglangCacheAware
from router.policies.synthetic import make_node

SYSTEM = list(range(1000, 1320))  # 320 tokens: 20 blocks of 16


def request(tokens: list[int], rid: str = "r") -> RequestView:
    hashes = block_hashes(tokens, 16)
    return RequestView(
        rid, "t", "llama-3.1-8b", len(tokens), 128, {"p": 100.0}, block_hashes=hashes
    )


def fleet(**running: int) -> list[NodeSnapshot]:
    return [
        make_node(name, pair="p", inflight_requests=running.get(name, 0)) for name in ("a", "b")
    ]


def send(
    policy: Policy, req: RequestView, nodes: Sequence[NodeSnapshot], now: float = 0.0
) -> Decision:
    decision = policy.choose(req, nodes, now)
    policy.on_routed(req, decision.node, now)
    return decision


def test_defaults_are_the_gateway_launch_defaults() -> None:
    policy = build_policy("sglang_cache_aware")
    assert isinstance(policy, SglangCacheAware)
    p = policy.params
    assert (p.cache_threshold, p.balance_abs_threshold, p.balance_rel_threshold) == (0.3, 64, 1.5)
    assert p.max_tree_tokens == 2**24
    assert p.miss_fallback == "min_load"


def test_sticks_to_the_prefix_holder_while_balanced() -> None:
    policy = build_policy("sglang_cache_aware")
    first = send(policy, request([*SYSTEM, 1, 2, 3]), fleet(a=3, b=1))
    assert (first.node, first.kind) == ("b", "cache_miss")  # nothing cached: least loaded
    # b is now the busier one (60 running vs 0), but balanced (60 - 0 ≤ 64): the prefix wins
    again = send(policy, request([*SYSTEM, *range(48)]), fleet(a=0, b=60))
    assert (again.node, again.kind) == ("b", "cache_hit")
    assert again.scores["b"] == pytest.approx(320 / 368)
    assert again.scores["a"] == 0.0
    assert "prefix match 87% > 30%" in again.reason


def test_switches_to_shortest_queue_only_when_both_thresholds_are_exceeded() -> None:
    policy = build_policy("sglang_cache_aware")
    send(policy, request(SYSTEM), fleet(b=1))  # -> a holds the prompt
    # abs: 300 - 230 = 70 > 64, but rel: 300 ≤ 1.5 × 230 -> still balanced, stays on a
    only_abs = send(policy, request(SYSTEM), fleet(a=300, b=230))
    assert (only_abs.node, only_abs.kind) == ("a", "cache_hit")
    # rel: 60 > 1.5 × 0, but abs: 60 - 0 ≤ 64 -> balanced, stays on a
    only_rel = send(policy, request(SYSTEM), fleet(a=60, b=0))
    assert (only_rel.node, only_rel.kind) == ("a", "cache_hit")
    # both: 100 - 10 = 90 > 64 and 100 > 15 -> least loaded, despite the cache
    both = send(policy, request(SYSTEM), fleet(a=100, b=10))
    assert (both.node, both.kind) == ("b", "load_balance")
    assert dict(both.scores) == {"a": -100.0, "b": -10.0}
    assert "load imbalanced (max 100, min 10 running)" in both.reason


def test_imbalance_is_measured_over_candidates_only() -> None:
    policy = build_policy("sglang_cache_aware")
    send(policy, request(SYSTEM), fleet(b=1))  # -> a
    # counting the cordoned c (500 running) would make it imbalanced and pick b
    cordoned = make_node("c", pair="p", state=NodeState.CORDONED, inflight_requests=500)
    decision = send(policy, request(SYSTEM), [*fleet(a=20, b=0), cordoned])
    assert (decision.node, decision.kind) == ("a", "cache_hit")


def test_imbalanced_routing_still_records_the_prompt() -> None:
    policy = build_policy("sglang_cache_aware")
    send(policy, request(SYSTEM), fleet(a=100, b=10))  # imbalanced -> b, and b learns it
    assert send(policy, request(SYSTEM), fleet(a=0, b=5)).node == "b"


def test_a_match_below_the_threshold_is_a_miss() -> None:
    policy = build_policy("sglang_cache_aware")
    send(policy, request(SYSTEM[:64]), fleet(b=1))  # -> a holds 4 blocks
    # 4 of 20 blocks = 20 % ≤ 30 %: a miss, so the least loaded node, not the holder
    decision = send(policy, request([*SYSTEM[:64], *range(256)]), fleet(a=2, b=1))
    assert (decision.node, decision.kind) == ("b", "cache_miss")
    assert "best prefix match 20% ≤ 30%: fewest running requests" in decision.reason


def test_the_threshold_is_exclusive() -> None:
    policy = build_policy("sglang_cache_aware", {"cache_threshold": 0.5})
    send(policy, request(SYSTEM[:32]), fleet(b=1))  # -> a holds 2 blocks
    half = request([*SYSTEM[:32], *range(32)])  # 2 of 4 blocks: rate 0.5, not > 0.5
    decision = policy.choose(half, fleet(a=2, b=1), 0.0)
    assert (decision.node, decision.kind) == ("b", "cache_miss")
    more = request([*SYSTEM[:32], *range(16)])  # 2 of 3 blocks: rate 0.67 > 0.5
    assert send(policy, more, fleet(a=2, b=1)).node == "a"


def test_miss_goes_to_the_smallest_tree_in_that_mode() -> None:
    for fallback, expected in (("min_load", "a"), ("smallest_tree", "b")):
        policy = build_policy("sglang_cache_aware", {"miss_fallback": fallback})
        policy.on_routed(request(SYSTEM), "a", 0.0)  # a's tree: 20 blocks
        policy.on_routed(request(SYSTEM[:32]), "b", 0.0)  # b's tree: 2 blocks
        unrelated = request(list(range(5000, 5320)))
        decision = send(policy, unrelated, fleet(a=0, b=5))  # balanced, a less loaded
        assert (decision.node, decision.kind) == (expected, "cache_miss"), fallback
    assert dict(decision.scores) == {"a": -20.0, "b": -2.0}
    assert decision.reason.endswith("smallest tree")


def test_tree_is_bounded_by_max_tree_tokens() -> None:
    policy = build_policy("sglang_cache_aware", {"max_tree_tokens": 64})
    assert isinstance(policy, SglangCacheAware)
    send(policy, request(SYSTEM[:128]), fleet(b=1))  # 8 blocks -> a keeps the first 4
    index = policy.index(request(SYSTEM))
    assert index.blocks_on("a") == 4
    decision = send(policy, request(SYSTEM[:128]), fleet(a=3, b=0))
    assert (decision.node, decision.kind) == ("a", "cache_hit")
    assert decision.scores["a"] == pytest.approx(0.5)


def test_a_restart_forgets_the_tree() -> None:
    policy = build_policy("sglang_cache_aware")
    send(policy, request(SYSTEM), fleet(b=1))  # -> a
    nodes = fleet(a=1, b=0)
    assert send(policy, request(SYSTEM), nodes).node == "a"
    nodes[0] = make_node("a", pair="p", state=NodeState.RESTARTING)
    assert send(policy, request(SYSTEM), nodes).node == "b"  # the only candidate
    # both would match in full (a tie, to a by name) had a kept its tree
    decision = policy.choose(request(SYSTEM), fleet(a=0, b=3), 1.0)
    assert decision.scores["a"] == 0.0 and decision.node == "b"


def test_rejects_a_misspelt_fallback() -> None:
    with pytest.raises(PolicyConfigError, match="miss_fallback"):
        build_policy("sglang_cache_aware", {"miss_fallback": "random"})
