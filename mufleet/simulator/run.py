"""The discrete-event loop: trace arrivals, node iterations and router scrapes in time order.

One run is one policy at one rate over one fleet. Everything is deterministic for a seed:
arrivals (bucket spreading, copy offsets), policies' own seeded RNGs and event ties (by
time, then node index).
"""

from __future__ import annotations

import gc
import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mufleet.simulator.faults import FaultPlan
from mufleet.simulator.fleet_spec import FleetSpec
from mufleet.simulator.health import SimHealth
from mufleet.simulator.node import EngineShape, SimNode, SimRequest
from mufleet.simulator.router import SimRouter, TenantTotals
from mufleet.simulator.workload import Workload
from router.admission.tenants import TenantConfig
from router.cost_model import CostModel, RequestShape
from router.policies import Policy, build_policy

__all__ = [
    "ORACLE",
    "RunResult",
    "SimSettings",
    "default_tenant",
    "make_policy",
    "no_reuse_capacity_rps",
    "simulate",
]

ORACLE = "oracle"
"""``mu_cost`` with the true output lengths: a bound on what pricing can gain, not a rival."""

Progress = Callable[[str], None]

METRICS_REFRESH_S = {"llmd_scorers": 0.05}
"""Policies whose router refreshes model-server metrics faster than mufleet's (1 s):
llm-d's endpoint picker polls every 50 ms by default (``DefaultRefreshMetricsInterval``,
kubernetes-sigs/gateway-api-inference-extension ``pkg/epp/server/runserver.go``). Its
queue and KV scorers read nothing else, so it is simulated with its own refresh."""


@dataclass(frozen=True)
class SimSettings:
    max_tokens: int | None = 2048
    """``max_tokens`` of every request (a trace has none); engines reserve KV for it.
    ``None``: each request's own output length, as a client that knows its budget."""
    max_num_sequences: int | None = None
    """Cap the engines' batch below their hardware profile's (a node started so)."""
    time_scale: float = 1.0
    """Stretch every iteration, as the sim engine's ``--time-scale`` does."""
    scrape_interval_s: float = 1.0
    reserve_factor: float = 2.0
    """The trace's tenant reserves this many times the fleet's calibrated MU/s, so that
    admission sheds only past it and routing, not admission, bounds the rate at the SLO."""
    kv_block_tokens: int | None = None
    """KV block of the simulated pools (default: the trace's prefix block, else the
    profile's)."""
    discharge_prefill: bool = True
    """At a request's first token, keep only its decode share in the node's in-flight MU
    (as the service does)."""
    progress_every_s: float = 5.0
    """Wall seconds between progress lines."""


def default_tenant(fleet: FleetSpec, settings: SimSettings) -> TenantConfig:
    return TenantConfig(
        name="trace",
        api_key="sim",
        tier="standard",
        reserved_mu_s=settings.reserve_factor * fleet.capacity_mu_s,
        best_effort=True,
    )


def make_policy(name: str) -> tuple[Policy, bool]:
    """The policy called ``name`` and whether its router knows true output lengths."""
    if name == ORACLE:
        return build_policy("mu_cost"), True
    return build_policy(name), False


def no_reuse_capacity_rps(workload: Workload, fleet: FleetSpec) -> float:
    """Requests/s the fleet's calibrated MU/s buys for this trace with no prefix reuse."""
    requests = workload.trace.requests
    total = 0.0
    for g in fleet.groups:
        cost = CostModel(g.profile)
        mean_mu = sum(
            cost.actual(RequestShape(r.input_tokens, r.output_tokens)) for r in requests
        ) / max(len(requests), 1)
        total += g.count * g.profile.capacity_mu_s / max(mean_mu, 1e-9)
    return total


@dataclass
class RunResult:
    policy: str
    rate_multiplier: float
    rate_rps: float
    duration_s: float
    requests: list[SimRequest]
    node_names: list[str]
    node_capacity: list[float]
    node_mu: list[float]
    """Actual MU served per node."""
    node_busy_s: list[float]
    """Seconds each node's engine spent iterating."""
    tenants: dict[str, TenantTotals]
    wall_s: float
    events: int
    lost: int = 0
    """Requests given up on after a node failure (out of failover attempts, or no node)."""
    fault_windows: list[tuple[float, float]] = field(default_factory=list)
    health_log: list[dict[str, object]] = field(default_factory=list)


def simulate(
    workload: Workload,
    fleet: FleetSpec,
    policy_name: str,
    settings: SimSettings | None = None,
    faults: FaultPlan | None = None,
    progress: Progress | None = None,
    policy: Policy | None = None,
) -> RunResult:
    """Replay ``workload`` over ``fleet`` routed by ``policy_name``; every request ends.

    ``policy``: a policy object to use instead of building ``policy_name`` (which then only
    names it in the result), e.g. one that replays another run's placements.
    """
    # Hundreds of thousands of live request objects make every pass of the cyclic garbage
    # collector walk them all, for nothing: the event loop makes no reference cycles.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _simulate(workload, fleet, policy_name, settings, faults, progress, policy)
    finally:
        if collecting:
            gc.enable()


def _simulate(
    workload: Workload,
    fleet: FleetSpec,
    policy_name: str,
    settings: SimSettings | None = None,
    faults: FaultPlan | None = None,
    progress: Progress | None = None,
    policy: Policy | None = None,
) -> RunResult:
    settings = settings or SimSettings()
    started = time.perf_counter()
    knows_output = False
    if policy is None:
        policy, knows_output = make_policy(policy_name)
    tenant = default_tenant(fleet, settings)
    router = SimRouter(fleet, policy, [tenant], knows_output=knows_output)
    block_size = workload.trace_block_tokens or 16
    done: list[SimRequest] = []
    node_mu = [0.0] * fleet.nodes
    costs = [router.costs[p] for p in router.node_pairs]

    def on_first_token(request: SimRequest, now: float) -> None:
        if settings.discharge_prefill:
            router.first_token(request, now)

    def on_finish(request: SimRequest, now: float) -> None:
        router.finished(request, now)
        node_mu[request.node] += costs[request.node].actual(
            RequestShape(request.prompt_tokens, request.output_tokens)
        )
        request.hashes = ()
        done.append(request)

    nodes: list[SimNode] = []
    for g in fleet.groups:
        shape = EngineShape.of(
            g.hardware,
            settings.kv_block_tokens or workload.pool_block_tokens,
            max_num_sequences=settings.max_num_sequences,
            time_scale=settings.time_scale,
        )
        for _ in range(g.count):
            i = len(nodes)
            nodes.append(SimNode(i, router.names[i], shape, on_first_token, on_finish))

    heap: list[tuple[float, int]] = []
    push, pop = heapq.heappush, heapq.heappop

    def schedule(node: SimNode) -> None:
        t = node.next_event()
        if t is not None:
            push(heap, (t, node.index))

    lost: list[SimRequest] = []

    def reroute(request: SimRequest, now: float) -> None:
        """Send an evicted request elsewhere, as the forwarder does, within its attempts."""
        request.retries += 1
        row = None
        if request.retries < router.settings.failover.max_attempts:
            row = router.redispatch(request, now)
        else:
            router.abandon(request, now)
        if row is None:
            request.shed = True
            lost.append(request)
            done.append(request)
            return
        nodes[row].submit(request, now)
        schedule(nodes[row])

    health = (
        SimHealth(router, nodes, faults, reroute, schedule, seed=workload.seed)
        if faults is not None
        else None
    )

    arrivals = workload.arrivals()
    requests = workload.trace.requests
    n, i, events = len(arrivals), 0, 0
    next_scrape = 0.0
    interval = METRICS_REFRESH_S.get(policy_name, settings.scrape_interval_s)
    next_progress = started + settings.progress_every_s
    inf = math.inf
    budget = settings.max_tokens
    while True:
        ta = arrivals[i].time_s if i < n else inf
        tn = heap[0][0] if heap else inf
        th = health.next_time() if health is not None else inf
        if ta == inf and tn == inf and (health is None or not health.pending()):
            break
        if next_scrape <= ta and next_scrape <= tn and next_scrape <= th:
            router.scrape(nodes, next_scrape)
            next_scrape += interval
            if progress is not None and time.perf_counter() >= next_progress:
                next_progress = time.perf_counter() + settings.progress_every_s
                progress(
                    f"  {policy_name}: t={next_scrape:7.0f}s of {workload.duration_s:.0f}s, "
                    f"{i}/{n} arrived, {len(done)} done"
                )
            continue
        events += 1
        if health is not None and th <= ta and th <= tn:
            health.fire(th)
            continue
        if tn <= ta:
            t, index = pop(heap)
            node = nodes[index]
            if node.next_event() != t:
                continue  # superseded by a shorter run
            node.handle(t)
            schedule(node)
            continue
        arrival = arrivals[i]
        i += 1
        trace_request = requests[arrival.index]
        hashes = workload.hashes(arrival.copy, arrival.index)
        request = SimRequest(
            i - 1,
            ta,
            trace_request.input_tokens,
            min(trace_request.output_tokens, budget or trace_request.output_tokens),
            budget or trace_request.output_tokens,
            hashes,
            tenant.name,
            0,
        )
        router_hashes = hashes[:: max(workload.trace_block_tokens // workload.pool_block_tokens, 1)]
        row = router.route(request, ta, router_hashes, block_size)
        if row is None:
            done.append(request)
            continue
        node = nodes[row]
        before = node.next_event()
        node.submit(request, ta)
        if node.next_event() != before:
            schedule(node)
    return RunResult(
        policy=policy_name,
        rate_multiplier=workload.rate_multiplier,
        rate_rps=workload.rate_rps,
        duration_s=workload.duration_s,
        requests=sorted(done, key=lambda r: r.index),
        node_names=list(router.names),
        node_capacity=list(router.capacity),
        node_mu=node_mu,
        node_busy_s=[node.busy_s for node in nodes],
        tenants=router.totals,
        wall_s=time.perf_counter() - started,
        events=events,
        lost=len(lost),
        fault_windows=health.windows() if health is not None else [],
        health_log=health.log if health is not None else [],
    )
