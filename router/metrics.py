"""The router's own Prometheus metrics, in a registry per router (no process globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)


class RouterMetrics:
    """Per node and tenant: admission, MU, latency, routing and node faults."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mufleet_router_requests",
            "Requests that ended, by tenant, node and outcome",
            ["tenant", "node", "outcome"],
            registry=r,
        )
        self.admitted_mu = Counter(
            "mufleet_router_admitted_mu",
            "MU admitted (charged up front), by tenant and kind (reserved, best_effort)",
            ["tenant", "kind"],
            registry=r,
        )
        self.admitted_requests = Counter(
            "mufleet_router_admitted_requests", "Requests admitted", ["tenant", "kind"], registry=r
        )
        self.rejected_mu = Counter(
            "mufleet_router_rejected_mu", "MU refused with 429", ["tenant"], registry=r
        )
        self.rejected_requests = Counter(
            "mufleet_router_rejected_requests", "Requests refused with 429", ["tenant"], registry=r
        )
        self.settled_mu = Counter(
            "mufleet_router_settled_mu", "MU charged after reconciliation", ["tenant"], registry=r
        )
        self.inflight_mu = Gauge(
            "mufleet_router_inflight_mu", "MU in flight on each node", ["node"], registry=r
        )
        self.utilisation = Gauge(
            "mufleet_router_utilisation_ratio",
            "In-flight MU over capacity (seconds of queued work) per node",
            ["node"],
            registry=r,
        )
        self.ttft = Histogram(
            "mufleet_router_ttft_seconds",
            "Time to first token seen by the router",
            ["tenant", "node"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "mufleet_router_tpot_seconds",
            "Mean time per output token after the first",
            ["tenant", "node"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "mufleet_router_routing_decisions",
            "Routing decisions by policy and reason",
            ["policy", "reason"],
            registry=r,
        )
        self.affinity_hits = Counter(
            "mufleet_router_affinity_hits",
            "Session requests that went to the node holding the session",
            ["tenant"],
            registry=r,
        )
        self.estimate_ratio = Histogram(
            "mufleet_router_mu_actual_over_estimate",
            "Actual MU over the MU estimated before the request ran",
            ["tenant"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.node_errors = Counter(
            "mufleet_router_node_errors",
            "Node failures by fault (node, timeout); client faults are not counted",
            ["node", "fault"],
            registry=r,
        )
        self.failovers = Counter(
            "mufleet_router_failovers",
            "Requests re-sent to another node before any token reached the client",
            ["node"],
            registry=r,
        )

        self.migrations = Counter(
            "mufleet_router_migrations",
            "Streams continued on another node after their node failed mid-way",
            ["node"],
            registry=r,
        )
        self.retry_budget_refused = Counter(
            "mufleet_router_retry_budget_refused",
            "Retries refused because the retry budget was spent",
            registry=r,
        )
        self.queued_requests = Gauge(
            "mufleet_router_queued_requests",
            "Requests waiting for a routable node",
            registry=r,
        )
        self.evicted = Counter(
            "mufleet_router_evicted_requests",
            "Requests moved off a node the health machine cordoned",
            ["node"],
            registry=r,
        )
        # -- fleet health --------------------------------------------------------------
        self.node_state = Gauge(
            "mufleet_router_node_state",
            "1 for each node's current health state",
            ["node", "state"],
            registry=r,
        )
        self.node_transitions = Counter(
            "mufleet_router_node_transitions",
            "Health state changes",
            ["node", "from_state", "to_state"],
            registry=r,
        )
        self.node_trust = Gauge(
            "mufleet_router_node_trust",
            "Share of requests the health machine allows the node (0 to 1)",
            ["node"],
            registry=r,
        )
        self.node_capacity_factor = Gauge(
            "mufleet_router_node_capacity_factor",
            "Share of the calibrated capacity the node is credited with (GPU throttling)",
            ["node"],
            registry=r,
        )
        self.node_config_mismatch = Gauge(
            "mufleet_router_node_config_mismatch",
            "1 while the node's engine parameter differs from its pair profile's (0 once it "
            "matches again)",
            ["node", "parameter"],
            registry=r,
        )
        self.node_config_capacity_factor = Gauge(
            "mufleet_router_node_config_capacity_factor",
            "Share of the profile's capacity granted for the node's engine configuration",
            ["node"],
            registry=r,
        )
        self.probe_signals = Counter(
            "mufleet_router_probe_signals",
            "Probe verdicts by node, probe and verdict",
            ["node", "probe", "verdict"],
            registry=r,
        )
        self.canary_ttft = Histogram(
            "mufleet_router_canary_first_token_seconds",
            "First-token time of canaries (failed ones at the time they were given up)",
            ["node"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.restarts = Counter(
            "mufleet_router_node_restarts",
            "Restart attempts by node, restarter and result",
            ["node", "restarter", "result"],
            registry=r,
        )
        self.panic = Gauge(
            "mufleet_router_panic_mode",
            "1 while too few nodes are healthy (suspect nodes keep full weight)",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
