"""The shared pipeline: eligibility, probation share, tie-breaks, the node table, scores."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from router.policies import NodeState, RequestView, build_policy
from router.policies.least_request import LeastRequest, LeastRequestParams
from router.policies.scoring import BoolArray, FloatArray, NodeTable, ScoreMap, unit_hash
from router.policies.synthetic import SyntheticTraffic, make_node


def test_ties_go_to_the_first_name_whatever_the_row_order() -> None:
    request = SyntheticTraffic(seed=0).next()
    for order in (["c", "a", "b"], ["a", "b", "c"], ["b", "c", "a"]):
        nodes = [make_node(n) for n in order]
        assert build_policy("least_request").choose(request, nodes, 0.0).node == "a"
        assert build_policy("least_projected_mu").choose(request, nodes, 0.0).node == "a"


def share_of_node(trust: float) -> float:
    """Fraction of 2000 requests a node of the given trust gets when it is the idlest of two."""
    policy = LeastRequest(LeastRequestParams())
    traffic = SyntheticTraffic(seed=9)
    nodes = [
        make_node("busy", inflight_requests=50),
        make_node("trial", state=NodeState.PROBATION, trust=trust),
    ]
    hits = sum(policy.choose(traffic.next(), nodes, 0.0).node == "trial" for _ in range(2000))
    return hits / 2000


def test_a_partly_trusted_node_gets_its_share() -> None:
    assert share_of_node(0.2) == pytest.approx(0.2, abs=0.04)
    assert share_of_node(0.6) == pytest.approx(0.6, abs=0.04)
    assert share_of_node(1.0) == 1.0
    assert share_of_node(0.0) == 0.0


def test_an_untrusted_node_is_used_when_it_is_the_only_candidate() -> None:
    policy = build_policy("round_robin")
    nodes = [
        make_node("trial", state=NodeState.PROBATION, trust=0.0),
        make_node("x", models=("other",)),
    ]
    for request in SyntheticTraffic(seed=1).take(20):
        assert policy.choose(request, nodes, 0.0).node == "trial"


def test_trust_is_read_again_when_a_snapshot_changes() -> None:
    table = NodeTable()
    table.sync([make_node("a", trust=0.3)], 10.0)
    assert table.trust.tolist() == [0.3]
    table.sync([make_node("a")], 20.0)
    assert table.trust.tolist() == [1.0]


def test_unit_hash_is_uniform_enough_and_stable() -> None:
    values = [unit_hash("req", str(i)) for i in range(4000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert abs(sum(values) / len(values) - 0.5) < 0.02
    assert unit_hash("a", "b") == unit_hash("a", "b") != unit_hash("b", "a")


def test_table_rewrites_only_replaced_rows() -> None:
    table = NodeTable()
    nodes = [make_node(f"n{i}", inflight_mu=float(i)) for i in range(64)]
    assert table.sync(nodes, 0.0) is None  # first sight: rebuilt
    layout = table.layout
    assert table.sync(nodes, 0.0) == []
    nodes[5] = replace(nodes[5], inflight_mu=100.0, capacity_mu_s=500.0)
    nodes[9] = replace(nodes[9], pair="other-pair", models=frozenset({"m2"}))
    assert table.eligible("m2").sum() == 0  # cached mask, updated in place below
    assert table.sync(nodes, 0.0) == [5, 9]
    assert table.inflight_mu[5] == 100.0
    assert table.load_ratio[5] == pytest.approx(0.2)
    assert table.pairs[table.pair_idx[9]] == "other-pair"
    assert table.eligible("m2").tolist() == [i == 9 for i in range(64)]
    assert table.layout == layout
    # many changes, or other names: rebuilt, same values as a fresh table
    nodes = [replace(n, queued_requests=3) for n in nodes]
    assert table.sync(nodes, 0.0) is None
    fresh = NodeTable()
    fresh.sync(nodes, 0.0)
    for column in ("inflight_mu", "capacity", "load_ratio", "queued_requests", "pair_idx"):
        assert np.array_equal(getattr(table, column), getattr(fresh, column)), column


def test_table_reports_nodes_that_lost_their_kv() -> None:
    table = NodeTable()
    nodes = [make_node("a"), make_node("b")]
    table.sync(nodes, 0.0)
    nodes[1] = make_node("b", state=NodeState.RESTARTING)
    table.sync(nodes, 1.0)
    assert table.kv_lost == ["b"]
    assert not table.routable[1]
    nodes[1] = make_node("b", state=NodeState.PROBATION)  # same restart: not again
    nodes[0] = make_node("a", state=NodeState.PROBATION)  # restarted between two looks
    table.sync(nodes, 2.0)
    assert table.kv_lost == ["b", "a"]
    table.sync([make_node("b", state=NodeState.RESTARTING), make_node("a")], 3.0)  # rebuilt
    assert table.kv_lost == ["b", "a", "b"]


def test_score_map_is_a_lazy_mapping_over_candidates() -> None:
    names = ("a", "b", "c")
    scores = ScoreMap(
        names, {"a": 0, "b": 1, "c": 2}, np.array([1.0, 2.0, 3.0]), np.array([True, False, True])
    )
    assert dict(scores) == {"a": 1.0, "c": 3.0}
    assert len(scores) == 2
    assert "b" not in scores
    with pytest.raises(KeyError):
        scores["b"]
    assert "ScoreMap" in repr(scores)


def test_nan_scores_fall_back_to_name_order() -> None:
    class Broken(LeastRequest):
        def score(
            self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
        ) -> FloatArray:
            return np.full(len(table), np.nan)

    nodes = [make_node("b"), make_node("a")]
    assert Broken().choose(SyntheticTraffic().next(), nodes, 0.0).node == "a"
