"""One suite over every registered policy: the contract of ``router.policies.base.Policy``."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from router.policies import (
    POLICIES,
    Decision,
    NoCandidateError,
    NodeSnapshot,
    NodeState,
    Policy,
    PolicyConfigError,
    RequestView,
    build_policy,
)
from router.policies.synthetic import MODEL, SyntheticTraffic, make_node, synthetic_fleet

ROOT = Path(__file__).resolve().parents[3]
NAMES = sorted(POLICIES)
NOT_ROUTABLE = (NodeState.CORDONED, NodeState.DRAINING, NodeState.RESTARTING)


def drive(
    policy: Policy, requests: Sequence[RequestView], nodes: Sequence[NodeSnapshot]
) -> list[Decision]:
    decisions = []
    for step, request in enumerate(requests):
        decision = policy.choose(request, nodes, float(step))
        policy.on_routed(request, decision.node, float(step))
        decisions.append(decision)
    for step, (request, decision) in enumerate(zip(requests, decisions, strict=True)):
        policy.on_finished(request, decision.node, float(len(requests) + step))
    return decisions


def test_every_policy_in_the_design_is_registered() -> None:
    assert set(NAMES) >= {
        "round_robin",
        "least_request",
        "power_of_two",
        "least_projected_mu",
        "session_affinity",
        "prefix_aware",
        "mu_cost",
    }


@pytest.mark.parametrize("name", NAMES)
def test_builds_with_defaults_and_implements_policy(name: str) -> None:
    policy = build_policy(name)
    assert isinstance(policy, Policy)
    assert policy.name == name
    assert POLICIES[name].summary


@pytest.mark.parametrize("name", NAMES)
def test_decision_names_a_candidate(name: str) -> None:
    nodes = synthetic_fleet(16, seed=3)
    names = {n.name for n in nodes}
    for decision in drive(build_policy(name), SyntheticTraffic(seed=3).take(50), nodes):
        assert isinstance(decision, Decision)
        assert decision.node in names
        assert decision.reason.startswith(f"{name}: ")
        assert decision.node in decision.scores
        assert set(decision.scores) <= names
        assert all(isinstance(v, float) for v in decision.scores.values())


@pytest.mark.parametrize("name", NAMES)
def test_decision_kinds_are_a_small_fixed_set(name: str) -> None:
    """``kind`` is a metrics label: no numbers, keys or node names, few values."""
    nodes = synthetic_fleet(16, seed=5)
    kinds = {d.kind for d in drive(build_policy(name), SyntheticTraffic(seed=5).take(200), nodes)}
    assert kinds and len(kinds) <= 4, kinds
    assert all(re.fullmatch(r"[a-z_]+", k) for k in kinds), kinds


def tempting_fleet() -> list[NodeSnapshot]:
    """Ineligible nodes idle and huge; eligible ones busy and small."""
    nodes = [
        make_node(f"bad-{state.value}", state=state, capacity_mu_s=10_000.0)
        for state in NOT_ROUTABLE
    ]
    nodes.append(make_node("bad-other-model", models=("other-model",), capacity_mu_s=10_000.0))
    nodes += [
        make_node(
            f"ok-{i}",
            capacity_mu_s=450.0,
            inflight_mu=2000.0 + 100 * i,
            inflight_requests=20 + i,
            queued_requests=5,
        )
        for i in range(3)
    ]
    nodes.append(make_node("ok-probation", state=NodeState.PROBATION, inflight_mu=500.0))
    return nodes


@pytest.mark.parametrize("name", NAMES)
def test_never_picks_an_ineligible_node(name: str) -> None:
    policy = build_policy(name)
    requests = SyntheticTraffic(seed=5).take(120)
    # First let stateful policies learn with every node healthy (prefix index, sessions) ...
    drive(policy, requests[:40], [make_node(n.name, models=n.models) for n in tempting_fleet()])
    # ... then take the tempting nodes out.
    for decision in drive(policy, requests[40:], tempting_fleet()):
        assert decision.node.startswith("ok-"), decision


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "nodes",
    [
        [],
        [make_node(f"n{i}", state=s) for i, s in enumerate(NOT_ROUTABLE)],
        [make_node("n0", models=("other-model",)), make_node("n1", models=())],
        [
            make_node("n0", models=("other-model",)),
            make_node("n1", state=NodeState.CORDONED),
        ],
    ],
    ids=["no-nodes", "none-routable", "none-serve-model", "mixed"],
)
def test_no_candidate_raises(name: str, nodes: list[NodeSnapshot]) -> None:
    request = SyntheticTraffic(seed=1).next()
    with pytest.raises(NoCandidateError, match=MODEL):
        build_policy(name).choose(request, nodes, 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_same_inputs_and_seed(name: str) -> None:
    nodes = synthetic_fleet(24, seed=7)
    nodes[3] = make_node(nodes[3].name, pair=nodes[3].pair, state=NodeState.PROBATION)
    requests = SyntheticTraffic(seed=7).take(80)
    first = drive(build_policy(name), requests, nodes)
    again = drive(build_policy(name), requests, nodes)
    assert [(d.node, d.reason, dict(d.scores)) for d in first] == [
        (d.node, d.reason, dict(d.scores)) for d in again
    ]


@pytest.mark.parametrize("name", NAMES)
def test_single_node(name: str) -> None:
    nodes = [make_node("only", inflight_mu=5000.0, queued_requests=30, metrics_age_s=60.0)]
    for decision in drive(build_policy(name), SyntheticTraffic(seed=2).take(20), nodes):
        assert decision.node == "only"
        assert set(decision.scores) == {"only"}


@pytest.mark.parametrize("name", NAMES)
def test_512_nodes(name: str) -> None:
    nodes = synthetic_fleet(512, seed=11)
    nodes[100] = make_node(nodes[100].name, state=NodeState.CORDONED)
    nodes[200] = make_node(nodes[200].name, models=("other-model",))
    decisions = drive(build_policy(name), SyntheticTraffic(seed=11).take(200), nodes)
    picked = {d.node for d in decisions}
    assert nodes[100].name not in picked
    assert nodes[200].name not in picked
    assert picked <= {n.name for n in nodes}


@pytest.mark.parametrize("name", NAMES)
def test_accepts_list_tuple_and_in_place_updates(name: str) -> None:
    """The caller may pass a list, a tuple, or the same list with snapshots replaced."""
    nodes = [make_node("a"), make_node("b", state=NodeState.CORDONED)]
    policy = build_policy(name)
    requests = SyntheticTraffic(seed=4).take(3)
    assert policy.choose(requests[0], nodes, 0.0).node == "a"
    nodes[0] = make_node("a", state=NodeState.CORDONED)
    nodes[1] = make_node("b")
    assert policy.choose(requests[1], nodes, 1.0).node == "b"
    assert policy.choose(requests[2], tuple(reversed(nodes)), 2.0).node == "b"


@pytest.mark.parametrize("name", NAMES)
def test_rejects_unknown_params(name: str) -> None:
    with pytest.raises(PolicyConfigError) as error:
        build_policy(name, {"no_such_knob": 1})
    message = str(error.value)
    assert repr(name) in message
    assert "no_such_knob" in message


@pytest.mark.parametrize("name", NAMES)
def test_rejects_duplicate_node_names(name: str) -> None:
    request = SyntheticTraffic(seed=1).next()
    with pytest.raises(ValueError, match="unique"):
        build_policy(name).choose(request, [make_node("x"), make_node("x")], 0.0)


def test_importable_without_tritonclient_or_asyncio() -> None:
    code = (
        "import sys; import router.policies; "
        "from router.policies import build_policy, POLICIES; "
        "[build_policy(n) for n in POLICIES]; "
        "bad = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('tritonclient', 'asyncio', 'grpc', 'torch')); "
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
