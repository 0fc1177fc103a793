"""One node's row in the node table, and the two types that come with it.

A :class:`NodeEntry` holds what the router knows about a node (configuration, health state
and its history of :class:`Transition`, in-flight ledger, scrapes, capacity factors); the
:class:`~router.fleet.table.NodeTable` owns the entries and is the only thing that changes
them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from router.fleet.metrics import NodeMetrics
from router.fleet.node_config import NodeConfig
from router.policies.base import NodeSnapshot, NodeState

__all__ = ["NodeEntry", "Transition", "UnknownNodeError"]


class UnknownNodeError(KeyError):
    """No node of that name is in the table."""

    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        super().__init__(name)
        self.name = name
        shown = ", ".join(sorted(known)[:8]) + (", …" if len(known) > 8 else "")
        self.message = f"unknown node {name!r}" + (f" (known: {shown})" if known else "")

    def __str__(self) -> str:
        return self.message


class Transition(NamedTuple):
    """One change of a node's health state."""

    at: float
    from_state: NodeState
    to_state: NodeState
    reason: str


@dataclass(eq=False)
class NodeEntry:
    """Everything the table holds about one node. Read it; change it through the table."""

    config: NodeConfig
    capacity_mu_s: float
    state: NodeState
    reason: str
    since: float
    history: deque[Transition] = field(repr=False)
    operator_hold: bool = False
    """Set by an operator's cordon/drain and cleared by uncordon; the health machine must not
    make the node routable while it is set."""
    metrics: NodeMetrics | None = None
    prev_metrics: NodeMetrics | None = None
    reserved_mu: float = 0.0
    inflight: dict[str, float] = field(default_factory=dict, repr=False)
    """request id → MU it holds."""
    inflight_mu: float = 0.0
    requests_started: int = 0
    requests_finished: int = 0
    mu_started: float = 0.0
    mu_finished: float = 0.0
    last_finished_at: float | None = None
    busy_since: float | None = None
    """When the router's in-flight count on the node last went from 0 to 1."""
    last_token_at: float | None = None
    """When a response of any request last arrived from the node."""
    trust: float = 1.0
    """The health machine's share for the node (see ``NodeSnapshot.trust``)."""
    capacity_factor: float = 1.0
    """The health machine's share of the calibrated capacity (a throttled GPU works slower)."""
    config_capacity_factor: float = 1.0
    """The share granted for the node's engine configuration against its pair profile's
    (:mod:`router.fleet.engine_check`); multiplies :attr:`capacity_factor`."""
    scrape_failures: int = 0
    """Consecutive failed scrapes (0 after a good one)."""
    scrape_failures_total: int = 0
    last_scrape_error: str | None = None
    last_scrape_error_at: float | None = None
    # Snapshot cache: fields without metrics_age_s (None: rebuild) and the last snapshot.
    _fields: dict[str, Any] | None = field(default=None, repr=False)
    _snapshot: NodeSnapshot | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def inflight_requests(self) -> int:
        return len(self.inflight)

    @property
    def effective_capacity_factor(self) -> float:
        """The GPU-health and engine-configuration factors together."""
        return self.capacity_factor * self.config_capacity_factor

    @property
    def effective_capacity_mu_s(self) -> float:
        """The capacity policies and admission see: the calibrated one times both factors."""
        return self.capacity_mu_s * self.capacity_factor * self.config_capacity_factor

    def metrics_age_s(self, now: float) -> float:
        """Seconds since the last good scrape; ``inf`` when never scraped."""
        if self.metrics is None:
            return math.inf
        return max(now - self.metrics.scraped_at, 0.0)

    def changed(self) -> None:
        """Something a snapshot shows changed: rebuild it on the next :meth:`NodeTable.snapshot`."""
        self._fields = None
        self._snapshot = None
