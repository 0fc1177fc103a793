"""The router's own objects, driven on the simulator's clock.

Exactly what :class:`router.pipeline.Pipeline` does per request, without the network: price
the request on every pair (:class:`~router.cost_model.CostModel` with the learnt expected
output of :class:`~router.output_length.OutputLengthEstimator`), admit it
(:class:`~router.admission.Admission` with the tenant's MU bucket), give it a Triton level
(:class:`~router.admission.priority.PriorityMapper`), pick a node with the policy over the
:class:`~router.fleet.table.NodeTable`'s snapshots, record it in the table's in-flight
ledger, and settle the actual MU when it ends. Scrapes fill the table's metrics from the
simulated engines at the router's scrape interval.

The one liberty taken: snapshots are stamped at the last scrape, so a node's metrics age is
0 until the next scrape instead of growing by microseconds with every request. Every policy
here ignores ages below its staleness threshold (seconds), and it lets the policies' column
tables stay valid between scrapes, as they do in the service when a node's metrics change
once per scrape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mufleet.simulator.fleet_spec import FleetSpec
from mufleet.simulator.node import SimNode, SimRequest
from router.admission import Admission, AdmissionConfig
from router.admission.admission import Ticket
from router.admission.priority import PriorityMapper
from router.admission.tenants import TenantConfig
from router.cost_model import CostModel, RequestShape
from router.fleet.metrics import NodeMetrics
from router.fleet.table import NodeConfig, NodeTable
from router.output_length import OutputLengthEstimator
from router.pipeline import PipelineSettings
from router.policies import NoCandidateError, NodeSnapshot, Policy, RequestView

__all__ = ["MODEL", "SimRouter", "TenantTotals"]

MODEL = "ensemble"
"""The model name every simulated request asks for."""


@dataclass
class TenantTotals:
    admitted_mu: float = 0.0
    shed_mu: float = 0.0
    admitted: int = 0
    shed: int = 0
    unroutable: int = 0
    """Admitted, then refused for want of a routable node (503)."""


@dataclass
class _InFlight:
    view: RequestView
    ticket: Ticket
    node: str
    row: int


@dataclass
class SimRouter:
    """Pricing, admission, priority and routing of one simulated router."""

    fleet: FleetSpec
    policy: Policy
    tenants: Sequence[TenantConfig]
    knows_output: bool = False
    """An oracle's router: prices with the true output length instead of an estimate."""
    admission_config: AdmissionConfig = field(default_factory=AdmissionConfig)
    settings: PipelineSettings = field(default_factory=PipelineSettings)

    def __post_init__(self) -> None:
        self.costs = {g.pair: CostModel(g.profile) for g in self.fleet.groups}
        configs: list[NodeConfig] = []
        self.node_pairs: list[str] = []
        for g in self.fleet.groups:
            for _ in range(g.count):
                i = len(configs)
                configs.append(
                    NodeConfig.local(
                        i, g.pair, name=f"{g.pair}-{i}", base_port=20000, models=[MODEL]
                    )
                )
                self.node_pairs.append(g.pair)
        self.table = NodeTable(configs, lambda pair: self.costs[pair].capacity_mu_s)
        self.names = self.table.names
        self.rows = {name: i for i, name in enumerate(self.names)}
        self.capacity = [self.costs[p].capacity_mu_s for p in self.node_pairs]
        self.total_capacity = sum(self.capacity)
        self.admission = Admission(self.admission_config)
        self.priorities = PriorityMapper()
        self.estimator = OutputLengthEstimator()
        self.tenant_by_name = {t.name: t for t in self.tenants}
        self.totals = {t.name: TenantTotals() for t in self.tenants}
        self.inflight_mu = 0.0
        self.snap_time = 0.0
        self.snapshots: list[NodeSnapshot] = self.table.snapshot(0.0)
        self._open: dict[int, _InFlight] = {}
        self._pairs = tuple(self.costs)

    # -- the request path ---------------------------------------------------------------------
    def price(self, request: SimRequest) -> dict[str, float]:
        tenant = request.tenant
        if self.knows_output:
            expected = float(min(request.output_tokens, request.max_tokens))
        else:
            expected = self.estimator.expected(tenant, MODEL, request.max_tokens)
        prompt, budget = request.prompt_tokens, request.max_tokens
        return {p: self.costs[p].estimate(prompt, budget, 0, expected) for p in self._pairs}

    def route(
        self, request: SimRequest, now: float, block_hashes: tuple[int, ...], block_size: int
    ) -> int | None:
        """Admit and route ``request``; the node's index, or ``None`` when it is shed."""
        mu_by_pair = self.price(request)
        estimate = sum(mu_by_pair.values()) / len(mu_by_pair)
        tenant = self.tenant_by_name[request.tenant]
        totals = self.totals[request.tenant]
        capacity = self.total_capacity
        headroom = max(capacity - self.inflight_mu / self.settings.headroom_window_s, 0.0)
        ticket = self.admission.admit(tenant, estimate, now, headroom, capacity)
        if not ticket.admitted:
            totals.shed += 1
            totals.shed_mu += estimate
            request.shed = True
            return None
        request.level = self.priorities.level(tenant.tier, estimate, 0.0, tenant.max_priority)
        try:
            row = self._dispatch(request, now, mu_by_pair, ticket, block_hashes, block_size)
        except NoCandidateError:  # the service answers 503: no routable node
            self.admission.refund(ticket, now)
            totals.unroutable += 1
            request.shed = True
            return None
        totals.admitted += 1
        totals.admitted_mu += estimate
        return row

    def _dispatch(
        self,
        request: SimRequest,
        now: float,
        mu_by_pair: dict[str, float],
        ticket: Ticket,
        block_hashes: tuple[int, ...],
        block_size: int,
    ) -> int:
        view = RequestView(
            request_id=str(request.index),
            tenant=request.tenant,
            model=MODEL,
            prompt_tokens=request.prompt_tokens,
            max_tokens=request.max_tokens,
            mu_by_pair=mu_by_pair,
            block_hashes=block_hashes,
            block_size=block_size,
            priority=request.level,
        )
        decision = self.policy.choose(view, self.snapshots, now)
        name = decision.node
        row = self.rows[name]
        self.policy.on_routed(view, name, now)
        mu = mu_by_pair[self.node_pairs[row]]
        self.table.start(name, view.request_id, mu, now)
        self.inflight_mu += mu
        self.snapshots[row] = self.table.snapshot_of(name, self.snap_time)
        self._open[request.index] = _InFlight(view, ticket, name, row)
        return row

    def first_token(self, request: SimRequest, now: float) -> None:
        """``request`` streams: the table keeps only its decode share in flight."""
        item = self._open.get(request.index)
        if item is None:
            return
        view = item.view
        pair = self.node_pairs[item.row]
        decode = view.mu_by_pair[pair] - self.costs[pair].prefill_mu(view.prompt_tokens)
        before = self.table.entry(item.node).inflight_mu
        self.table.first_token(item.node, view.request_id, decode)
        after = self.table.entry(item.node).inflight_mu
        self.inflight_mu = max(self.inflight_mu - (before - after), 0.0)
        self.refresh(item.row)

    def finished(self, request: SimRequest, now: float) -> None:
        """``request`` ended on its node: free the ledger, settle the actual MU."""
        item = self._open.pop(request.index)
        mu = self.table.finish(item.node, item.view.request_id, now)
        self.inflight_mu = max(self.inflight_mu - mu, 0.0)
        self.policy.on_finished(item.view, item.node, now)
        self.snapshots[item.row] = self.table.snapshot_of(item.node, self.snap_time)
        cost = self.costs[self.node_pairs[item.row]]
        shape = RequestShape(request.original_prompt, request.total_output)
        self.admission.settle(item.ticket, cost.actual(shape), now)
        self.estimator.observe(request.tenant, MODEL, request.max_tokens, request.total_output)

    # -- failover ----------------------------------------------------------------------------
    def evicted(self, request: SimRequest, now: float) -> None:
        """``request`` was taken off its node (cordon): free that node's ledger."""
        item = self._open[request.index]
        mu = self.table.finish(item.node, item.view.request_id, now)
        self.inflight_mu = max(self.inflight_mu - mu, 0.0)
        self.policy.on_finished(item.view, item.node, now)
        self.refresh(item.row)

    def redispatch(self, request: SimRequest, now: float) -> int | None:
        """Route an evicted request again (admitted already); ``None``: no node can take it."""
        item = self._open.pop(request.index)
        view = item.view
        try:
            return self._dispatch(
                request, now, dict(view.mu_by_pair), item.ticket, view.block_hashes, view.block_size
            )
        except NoCandidateError:
            self.admission.refund(item.ticket, now)
            return None

    def abandon(self, request: SimRequest, now: float) -> None:
        """Give up on an evicted request (out of attempts): refund its charge."""
        item = self._open.pop(request.index)
        self.admission.refund(item.ticket, now)

    def refresh(self, row: int) -> None:
        """The table changed for node ``row``: take its snapshot again."""
        self.snapshots[row] = self.table.snapshot_of(self.names[row], self.snap_time)

    def routable_changed(self) -> None:
        """Admission prices capacity from routable nodes only (as the service does)."""
        total = 0.0
        for name, capacity in zip(self.names, self.capacity, strict=True):
            entry = self.table.entry(name)
            if entry.state.routable:
                total += capacity * entry.capacity_factor
        self.total_capacity = total

    # -- scrapes --------------------------------------------------------------------------------
    def scrape(self, nodes: Sequence[SimNode], now: float) -> None:
        """One scrape of every node's engine figures (as of each one's last iteration)."""
        table = self.table
        for name, node in zip(self.names, nodes, strict=True):
            pool = node.pool
            waiting, active, kv_used = node.gauges
            metrics = NodeMetrics(
                scraped_at=now,
                pending=0,
                active=active,
                max_sequences=node.shape.max_num_sequences,
                waiting=waiting,
                kv_blocks_max=pool.total_blocks,
                kv_blocks_used=kv_used,
                kv_tokens_per_block=pool.block_tokens,
            )
            table.update_metrics(name, metrics)
        self.snap_time = now
        self.snapshots = table.snapshot(now)
