"""Builds the health monitor of a router from its configuration (the service's wiring)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import httpx

from router.fleet import NodeTable
from router.health.config import HealthConfig
from router.health.machine import HealthMachine
from router.health.monitor import HealthMonitor, log_transition
from router.health.probes import (
    CanaryProbe,
    FleetJudge,
    GpuAgentProbe,
    MetricsJudge,
    NodeProbe,
    PassiveJudge,
    ReadinessProbe,
)
from router.health.restarters.base import RestartResult
from router.health.restarters.registry import build_restarters
from router.health.signals import Evict, Signal
from router.metrics import RouterMetrics
from router.policies.base import NodeState
from router.upstream import NodeChannel


class EvictionTarget(Protocol):
    """What eviction needs from the request path (the pipeline's forwarder)."""

    def evict(self, node: str, reason: str, streams: bool) -> int: ...

    def fleet_changed(self) -> None: ...


def build_health(
    config: HealthConfig,
    table: NodeTable,
    channels: Mapping[str, NodeChannel],
    vocab_size: int,
    metrics: RouterMetrics,
    target: EvictionTarget,
    client: httpx.AsyncClient,
    priority_parameter: str,
) -> tuple[HealthMonitor, PassiveJudge]:
    """The monitor (to run) and the passive judge (the pipeline's attempt sink)."""

    def on_transition(
        node: str, before: NodeState, after: NodeState, reason: str, at: float
    ) -> None:
        log_transition(node, before, after, reason, at)
        metrics.node_transitions.labels(node, before.value, after.value).inc()
        for state in NodeState:
            metrics.node_state.labels(node, state.value).set(1.0 if state is after else 0.0)

    restarters = build_restarters(config.restarters)
    machine = HealthMachine(
        table, config.machine, can_restart=bool(restarters), on_transition=on_transition
    )
    for name in table.names:
        metrics.node_state.labels(name, table.state(name).value).set(1.0)
    probes: list[NodeProbe] = []
    if config.readiness.enabled:
        probes.append(ReadinessProbe(config.readiness, client))
    if config.canary.enabled:
        probes.append(
            CanaryProbe(
                config.canary,
                channels,
                vocab_size,
                table.state,
                priority_parameter=priority_parameter,
            )
        )
    if config.gpu.enabled and any(e.config.gpu_url for e in table):
        probes.append(GpuAgentProbe(config.gpu, client))
    passive = PassiveJudge(config.passive, table.names)
    judges: list[FleetJudge] = []
    if config.metrics.enabled:
        judges.append(MetricsJudge(config.metrics, table.names))
    if config.passive.enabled:
        judges.append(passive)

    def evict(action: Evict) -> None:
        moved = target.evict(action.node, action.reason, action.streams)
        if moved:
            metrics.evicted.labels(action.node).inc(moved)

    def on_signal(signal: Signal) -> None:
        metrics.probe_signals.labels(signal.node, signal.source, signal.verdict.value).inc()
        if signal.source == "canary" and signal.latency_s is not None:
            metrics.canary_ttft.labels(signal.node).observe(signal.latency_s)

    def on_change() -> None:
        metrics.panic.set(1.0 if machine.panic() else 0.0)
        for entry in table:
            metrics.node_trust.labels(entry.name).set(entry.trust)
            metrics.node_capacity_factor.labels(entry.name).set(entry.capacity_factor)
        target.fleet_changed()

    def on_restart(node: str, result: RestartResult) -> None:
        metrics.restarts.labels(node, result.restarter, "ok" if result.ok else "failed").inc()

    monitor = HealthMonitor(
        table,
        machine,
        probes,
        judges,
        restarters,
        evict=evict,
        on_change=on_change,
        on_signal=on_signal,
        on_restart=on_restart,
        tick_s=config.tick_s,
    )
    return monitor, passive
