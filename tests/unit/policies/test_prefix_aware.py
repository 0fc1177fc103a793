"""prefix_aware: longest cached prefix, unless its node is too far behind the least loaded."""

from __future__ import annotations

from collections.abc import Sequence

from router.policies import (
    Decision,
    NodeSnapshot,
    NodeState,
    Policy,
    RequestView,
    block_hashes,
    build_policy,
)
from router.policies.synthetic import make_node

EXACT = {"index_tokens": 16}  # index every 16-token block


def request(tokens: list[int], rid: str = "r") -> RequestView:
    return RequestView(
        rid,
        "t",
        "llama-3.1-8b",
        len(tokens),
        128,
        {"p": 100.0},
        block_hashes=block_hashes(tokens, 16),
    )


def fleet(**loads: float) -> list[NodeSnapshot]:
    return [
        make_node(name, pair="p", inflight_mu=1000.0 * loads.get(name, 0.0))
        for name in ("a", "b", "c")
    ]


def send(
    policy: Policy, req: RequestView, nodes: Sequence[NodeSnapshot], now: float = 0.0
) -> Decision:
    decision = policy.choose(req, nodes, now)
    policy.on_routed(req, decision.node, now)
    return decision


SYSTEM = list(range(1000, 1320))  # 20 blocks


def test_repeated_prefix_goes_to_the_same_node() -> None:
    policy = build_policy("prefix_aware", EXACT)
    first = send(policy, request([*SYSTEM, 1, 2, 3]), fleet(a=0.5, b=0.5))
    assert first.node == "c"  # nothing cached: least loaded
    # c is now busier than a and b, but holds the prefix (within load_gap_s = 2 s)
    again = send(policy, request([*SYSTEM, *range(40)]), fleet(a=0.5, b=0.5, c=1.5))
    assert again.node == "c"
    assert again.scores["c"] == 20.0 and again.scores["a"] == 0.0
    assert "20 of 22 blocks cached" in again.reason
    unrelated = send(policy, request(list(range(5000, 5400))), fleet(a=0.5, b=0.5, c=1.5))
    assert unrelated.node == "a"


def test_longer_match_wins_and_ties_go_to_the_least_loaded() -> None:
    policy = build_policy("prefix_aware", EXACT)
    short, long = [*SYSTEM[:160]], [*SYSTEM]
    send(policy, request(short), fleet(b=1.0, c=1.0))  # -> a holds 10 blocks
    send(policy, request(long), fleet(a=3.0, c=3.0))  # a too busy -> b holds 20 blocks
    assert send(policy, request(long), fleet()).node == "b"
    send(policy, request(short), fleet(a=3.0, b=3.0))  # -> c holds 10 blocks
    # a and c both hold the 10 blocks of `short`, b too: all tie on 10, least loaded wins
    assert send(policy, request(short), fleet(a=0.3, b=0.2, c=0.1)).node == "c"


def test_overloaded_holder_loses_to_the_least_loaded() -> None:
    policy = build_policy("prefix_aware", {**EXACT, "load_gap_s": 1.0})
    send(policy, request(SYSTEM), fleet(b=1.0, c=1.0))  # -> a
    assert send(policy, request(SYSTEM), fleet(a=1.9, b=1.0, c=1.0)).node == "a"
    decision = send(policy, request(SYSTEM), fleet(a=2.5, b=1.2, c=1.0))
    assert decision.node == "c"
    assert "least loaded" in decision.reason


def test_evicts_per_lru() -> None:
    policy = build_policy("prefix_aware", {**EXACT, "block_capacity": 30})
    only_a = [make_node("a", pair="p"), make_node("b", pair="p", state=NodeState.CORDONED)]
    first, second, third = list(range(0, 320)), list(range(400, 560)), list(range(600, 760))
    send(policy, request(first), only_a)  # a: 20 blocks
    send(policy, request(second), only_a)  # a: 30 blocks (full)
    both = [make_node("b", pair="p"), make_node("a", pair="p", inflight_mu=500.0)]
    assert send(policy, request(first, "again"), both).node == "a"  # a still holds it
    send(policy, request(third), only_a)  # 10 more: the LRU blocks (of `second`) go
    assert send(policy, request(second, "late"), both).node == "b"
    assert send(policy, request(first, "still"), both).node == "a"


def test_a_restart_forgets_what_the_node_held() -> None:
    policy = build_policy("prefix_aware", EXACT)
    send(
        policy,
        request(SYSTEM),
        [make_node("a", pair="p"), make_node("b", pair="p", inflight_mu=10.0)],
    )
    restarting = [make_node("a", pair="p", state=NodeState.RESTARTING), make_node("b", pair="p")]
    assert send(policy, request(SYSTEM), restarting).node == "b"
    back = [make_node("a", pair="p"), make_node("b", pair="p", inflight_mu=10.0)]
    assert send(policy, request(list(range(9000, 9320))), back).node == "a"
    # b got SYSTEM while a was restarting; a's copy is gone
    assert send(policy, request(SYSTEM), back).node == "b"


def test_ttl_forgets_idle_prefixes() -> None:
    policy = build_policy("prefix_aware", {**EXACT, "ttl_s": 60.0})
    send(policy, request(SYSTEM), fleet(b=0.1, c=0.1), now=0.0)  # -> a
    assert send(policy, request(SYSTEM), fleet(a=0.2, b=0.1, c=0.1), now=30.0).node == "a"
    assert send(policy, request(SYSTEM), fleet(a=0.2, b=0.1, c=0.1), now=200.0).node == "b"
