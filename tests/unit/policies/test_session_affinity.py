"""session_affinity: consistent hashing with bounded loads."""

from __future__ import annotations

from collections import Counter

import pytest

from router.policies import NodeSnapshot, RequestView, build_policy
from router.policies.session_affinity import SessionAffinity
from router.policies.synthetic import make_node


def request(session: str | None, tenant: str = "acme") -> RequestView:
    return RequestView(
        f"r-{session}", tenant, "llama-3.1-8b", 500, 128, {"p": 10.0}, session_id=session
    )


def fleet(n: int, load: float = 1.0, **overrides: float) -> list[NodeSnapshot]:
    return [
        make_node(f"n{i}", pair="p", inflight_mu=1000.0 * overrides.get(f"n{i}", load))
        for i in range(n)
    ]


def test_keeps_the_session_until_its_node_exceeds_the_bound_then_moves() -> None:
    policy = build_policy("session_affinity", {"epsilon": 0.25})
    home = policy.choose(request("s1"), fleet(4), 0.0).node
    # full when x > 1.25 · (3 + x) / 4, i.e. x > 1.3636...
    for load in (1.0, 1.2, 1.3, 1.36):
        assert policy.choose(request("s1"), fleet(4, **{home: load}), 0.0).node == home
    moved = policy.choose(request("s1"), fleet(4, **{home: 1.4}), 0.0)
    assert moved.node != home
    assert "skipped" in moved.reason
    # a different full node does not disturb it; when the load evens out it comes home
    other = moved.node
    assert policy.choose(request("s1"), fleet(4, **{other: 3.0}), 0.0).node == home
    assert policy.choose(request("s1"), fleet(4), 0.0).node == home


def test_spill_goes_to_the_next_node_on_the_ring_consistently() -> None:
    policy = build_policy("session_affinity")
    home = policy.choose(request("s7"), fleet(8), 0.0).node
    spills = {policy.choose(request("s7"), fleet(8, **{home: 5.0}), t).node for t in range(5)}
    assert len(spills) == 1 and home not in spills


def test_sessions_spread_over_nodes() -> None:
    policy = build_policy("session_affinity", {"virtual_nodes": 128})
    counts = Counter(policy.choose(request(f"s{i}"), fleet(8), 0.0).node for i in range(4000))
    assert len(counts) == 8
    assert max(counts.values()) < 2 * 4000 / 8
    assert min(counts.values()) > 0.5 * 4000 / 8


def test_falls_back_to_the_tenant() -> None:
    policy = build_policy("session_affinity")
    nodes = fleet(16)
    picks = {policy.choose(request(None, "tenant-x"), nodes, 0.0).node for _ in range(5)}
    assert len(picks) == 1
    tenants = {policy.choose(request(None, f"t{i}"), nodes, 0.0).node for i in range(64)}
    assert len(tenants) > 4


def test_removing_a_node_moves_only_its_sessions() -> None:
    policy = build_policy("session_affinity")
    sessions = [f"s{i}" for i in range(500)]
    before = {s: policy.choose(request(s), fleet(8), 0.0).node for s in sessions}
    smaller = [n for n in fleet(8) if n.name != "n3"]
    after = {s: policy.choose(request(s), smaller, 0.0).node for s in sessions}
    moved = {s for s in sessions if before[s] != after[s]}
    assert moved == {s for s in sessions if before[s] == "n3"}


def test_request_count_load_metric() -> None:
    policy = build_policy("session_affinity", {"load_metric": "requests", "epsilon": 0.5})
    nodes = [make_node(f"n{i}", inflight_requests=4) for i in range(4)]
    home = policy.choose(request("s1"), nodes, 0.0).node
    busy = [make_node(n.name, inflight_requests=20 if n.name == home else 4) for n in nodes]
    assert policy.choose(request("s1"), busy, 0.0).node != home


@pytest.mark.parametrize("epsilon", [0.0, -0.1])
def test_epsilon_must_be_positive(epsilon: float) -> None:
    with pytest.raises(ValueError, match="epsilon"):
        build_policy("session_affinity", {"epsilon": epsilon})


def test_subsets_of_the_fleet_reuse_the_ring() -> None:
    policy = build_policy("session_affinity")
    assert isinstance(policy, SessionAffinity)
    full = fleet(8)
    home = policy.choose(request("s1"), full, 0.0).node
    ring = policy._ring_points
    subset = [n for n in full if n.name != home]
    away = policy.choose(request("s1"), subset, 1.0).node
    assert away != home
    assert policy.choose(request("s1"), full, 2.0).node == home
    assert policy._ring_points is ring  # no node was new: the ring was not rebuilt
    # many departed names are pruned
    for i in range(5):
        others = [make_node(f"gen{i}-{j}", pair="p") for j in range(40)]
        policy.choose(request("s1"), others, 3.0 + i)
    assert len(policy._ids) <= 2 * 40 + 64 + 40
