"""round_robin: cycles in name order."""

from __future__ import annotations

from collections.abc import Sequence

from router.policies import NodeSnapshot, NodeState, Policy, build_policy
from router.policies.synthetic import SyntheticTraffic, make_node


def route(policy: Policy, nodes: Sequence[NodeSnapshot], n: int) -> list[str]:
    out = []
    for step, request in enumerate(SyntheticTraffic(seed=0).take(n)):
        node = policy.choose(request, nodes, float(step)).node
        policy.on_routed(request, node, float(step))
        out.append(node)
    return out


def test_cycles_in_name_order_whatever_the_load() -> None:
    nodes = [make_node("c", inflight_mu=9e9), make_node("a"), make_node("b")]
    assert route(build_policy("round_robin"), nodes, 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_skips_ineligible_and_survives_fleet_changes() -> None:
    policy = build_policy("round_robin")
    nodes = [make_node("a"), make_node("b", state=NodeState.CORDONED), make_node("c")]
    assert route(policy, nodes, 3) == ["a", "c", "a"]
    nodes = [make_node("a"), make_node("b"), make_node("c"), make_node("d")]
    assert route(policy, nodes, 4) == ["b", "c", "d", "a"]
    nodes = [make_node("a"), make_node("c")]  # "a" was last: next is "c"
    assert route(policy, nodes, 2) == ["c", "a"]


def test_choose_alone_does_not_advance() -> None:
    policy = build_policy("round_robin")
    nodes = [make_node("a"), make_node("b")]
    request = SyntheticTraffic().next()
    assert [policy.choose(request, nodes, 0.0).node for _ in range(3)] == ["a", "a", "a"]
    policy.on_routed(request, "a", 0.0)
    assert policy.choose(request, nodes, 0.0).node == "b"
