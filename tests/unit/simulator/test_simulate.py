"""simulate(): determinism, every policy end to end, and the router's own objects inside."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mufleet.simulator
from mufleet.simulator import router as sim_router
from mufleet.simulator import run as sim_run
from mufleet.simulator.fleet_spec import FleetSpec
from mufleet.simulator.node import EngineShape, SimNode
from mufleet.simulator.router import SimRouter
from mufleet.simulator.run import ORACLE, SimSettings, default_tenant, make_policy, simulate
from mufleet.simulator.workload import Workload
from mufleet.traces import Trace
from python_backends.sim_engine.block_pool import BlockPool
from router.admission import Admission
from router.cost_model import CostModel
from router.fleet.table import NodeTable
from router.output_length import OutputLengthEstimator
from router.policies import POLICIES, Policy, build_policy


def _timeline(result: sim_run.RunResult) -> list[tuple[Any, ...]]:
    return [
        (r.index, r.arrival_s, r.node, r.first_token_s, r.finish_s, r.cached_tokens, r.shed)
        for r in result.requests
    ]


@pytest.fixture(scope="module")
def small(sim_trace: Trace, fleet_of: Callable[[int], FleetSpec]) -> tuple[Trace, FleetSpec, float]:
    """The first 100 requests (about 20 s) on 3 nodes, and the multiplier of 0.8 × their
    no-reuse capacity."""
    trace = sim_trace.head(100)
    fleet = fleet_of(3)
    capacity = sim_run.no_reuse_capacity_rps(Workload(trace, 1.0), fleet)
    return trace, fleet, 0.8 * capacity / trace.rate_rps


# -- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["power_of_two", "mu_cost"])
def test_the_same_seed_gives_the_same_run(
    small: tuple[Trace, FleetSpec, float], policy: str
) -> None:
    trace, fleet, multiplier = small
    a = simulate(Workload(trace, multiplier, seed=7), fleet, policy)
    b = simulate(Workload(trace, multiplier, seed=7), fleet, policy)

    assert _timeline(a) == _timeline(b)
    assert a.node_mu == b.node_mu and a.events == b.events


def test_another_workload_seed_gives_another_run(small: tuple[Trace, FleetSpec, float]) -> None:
    trace, fleet, multiplier = small
    a = simulate(Workload(trace, multiplier, seed=7), fleet, "mu_cost")
    c = simulate(Workload(trace, multiplier, seed=8), fleet, "mu_cost")

    assert len(a.requests) == len(c.requests)
    assert [r.arrival_s for r in a.requests] != [r.arrival_s for r in c.requests]
    assert _timeline(a) != _timeline(c)


def test_the_same_workload_object_replays_identically(
    small: tuple[Trace, FleetSpec, float],
) -> None:
    trace, fleet, multiplier = small
    workload = Workload(trace, multiplier, seed=1)
    assert _timeline(simulate(workload, fleet, "round_robin")) == _timeline(
        simulate(workload, fleet, "round_robin")
    )


# -- every policy ----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [*sorted(POLICIES), ORACLE])
def test_every_policy_serves_every_request(
    small: tuple[Trace, FleetSpec, float], policy: str
) -> None:
    trace, fleet, multiplier = small
    workload = Workload(trace, multiplier, seed=2)
    settings = SimSettings(max_tokens=1024)

    result = simulate(workload, fleet, policy, settings)

    arrivals = workload.arrivals()
    assert result.policy == policy
    assert len(result.requests) == len(arrivals)
    assert [r.index for r in result.requests] == list(range(len(arrivals)))
    assert result.lost == 0
    for request, arrival in zip(result.requests, arrivals, strict=True):
        source = trace.requests[arrival.index]
        assert not request.shed
        assert request.arrival_s == arrival.time_s
        assert request.arrival_s <= request.first_token_s <= request.finish_s
        assert 0 <= request.node < fleet.nodes
        assert request.output_tokens == min(source.output_tokens, settings.max_tokens)
        assert 0 <= request.cached_tokens < request.prompt_tokens
    totals = result.tenants["trace"]
    assert totals.admitted == len(arrivals) and totals.shed == 0
    assert sum(result.node_mu) > 0
    assert all(busy >= 0 for busy in result.node_busy_s)
    assert sum(r.cached_tokens for r in result.requests) > 0  # block 0 at least


def test_a_cache_aware_policy_gets_more_hits_than_round_robin(
    small: tuple[Trace, FleetSpec, float],
) -> None:
    trace, fleet, multiplier = small
    workload = Workload(trace, multiplier, seed=2)

    def hits(policy: str) -> float:
        result = simulate(workload, fleet, policy)
        return sum(r.cached_tokens for r in result.requests) / sum(
            r.prompt_tokens for r in result.requests
        )

    assert hits("sglang_cache_aware") > hits("round_robin")


def test_shedding_when_the_tenant_reserve_is_small(small: tuple[Trace, FleetSpec, float]) -> None:
    trace, fleet, multiplier = small
    workload = Workload(trace, 2 * multiplier, seed=2)
    tight = SimSettings(reserve_factor=0.05)

    result = simulate(workload, fleet, "mu_cost", tight)

    shed = [r for r in result.requests if r.shed]
    assert len(result.requests) == len(workload.arrivals())
    assert shed and result.tenants["trace"].shed == len(shed)
    assert all(r.finish_s < 0 for r in shed)


# -- the router's and the engine's own objects ------------------------------------------------


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_make_policy_builds_the_registered_class(name: str) -> None:
    policy, knows_output = make_policy(name)

    assert type(policy) is POLICIES[name].cls
    assert isinstance(policy, Policy)
    assert knows_output is False


def test_the_oracle_is_mu_cost_that_knows_output_lengths() -> None:
    policy, knows_output = make_policy(ORACLE)
    assert type(policy) is POLICIES["mu_cost"].cls
    assert knows_output is True
    assert ORACLE not in POLICIES


def test_the_sim_router_is_made_of_the_routers_objects(
    fleet_of: Callable[[int], FleetSpec],
) -> None:
    fleet = fleet_of(2)
    policy = build_policy("least_request")
    router = SimRouter(fleet, policy, [default_tenant(fleet, SimSettings())])

    assert type(router.table) is NodeTable
    assert type(router.admission) is Admission
    assert type(router.estimator) is OutputLengthEstimator
    assert all(type(c) is CostModel for c in router.costs.values())
    assert router.policy is policy
    assert len(router.names) == 2 and router.table.names == router.names


def test_the_simulator_imports_what_the_service_runs() -> None:
    import router.admission as admission
    import router.cost_model as cost_model
    import router.fleet.table as table
    import router.policies as policies

    assert sim_run.build_policy is policies.build_policy
    assert sim_router.NodeTable is table.NodeTable
    assert sim_router.Admission is admission.Admission
    assert sim_router.CostModel is cost_model.CostModel
    assert sim_run.CostModel is cost_model.CostModel


def test_no_simulator_module_defines_its_own_policy() -> None:
    """No copies: nothing in mufleet/simulator defines a class with a policy's methods or
    imports a policy module from anywhere but router.policies."""
    package = Path(mufleet.simulator.__file__).parent
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                assert not {"choose", "on_routed"} & methods, f"{path.name}: {node.name}"
            if isinstance(node, ast.ImportFrom) and "polic" in (node.module or ""):
                assert str(node.module).startswith("router.policies"), f"{path.name}: {node.module}"


def test_simulate_drives_the_registered_policy_class(
    small: tuple[Trace, FleetSpec, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    trace, fleet, multiplier = small
    cls = POLICIES["round_robin"].cls
    calls: list[str] = []
    original = getattr(cls, "choose")  # noqa: B009

    def spy(self: Any, request: Any, nodes: Any, now: float) -> Any:
        calls.append(request.request_id)
        return original(self, request, nodes, now)

    monkeypatch.setattr(cls, "choose", spy)
    workload = Workload(trace, multiplier)
    result = simulate(workload, fleet, "round_robin")

    assert len(calls) == len(result.requests) == len(workload.arrivals())


def test_nodes_run_the_engines_pool_and_timing(fleet_of: Callable[[int], FleetSpec]) -> None:
    hardware = fleet_of(1).groups[0].hardware
    shape = EngineShape.of(hardware, 512)
    node = SimNode(0, "n", shape, lambda r, t: None, lambda r, t: None)

    assert shape.step is hardware.step
    assert type(node.pool) is BlockPool
    kv = hardware.kv_cache
    assert node.pool.total_blocks == kv.total_blocks * kv.block_tokens // 512
    assert EngineShape.of(hardware).block_tokens == kv.block_tokens
    assert shape.max_num_sequences == hardware.max_num_sequences
    assert shape.max_num_tokens == hardware.max_num_tokens
