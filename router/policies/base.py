"""What a routing policy sees and returns, and the one interface every policy implements.

Policies are pure: no I/O, no clock of their own (``now`` is an argument), importable
without tritonclient or asyncio, so the service, the fleet simulator and the tests drive
the very same objects. A policy gets a :class:`RequestView` and one :class:`NodeSnapshot`
per node and returns a :class:`Decision`; the caller tells it what happened afterwards
(:meth:`Policy.on_routed`, :meth:`Policy.on_finished`) so that stateful policies (prefix
index, session affinity) learn from real traffic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable


class NodeState(str, Enum):
    """The health state machine's states (``healthy → suspect → cordoned → restarting →
    probation → healthy``); ``draining`` is an operator's cordon that lets work finish."""

    HEALTHY = "healthy"
    SUSPECT = "suspect"
    CORDONED = "cordoned"
    DRAINING = "draining"
    RESTARTING = "restarting"
    PROBATION = "probation"

    @property
    def routable(self) -> bool:
        """New work may go to a node in this state."""
        return self in (NodeState.HEALTHY, NodeState.SUSPECT, NodeState.PROBATION)


ROUTABLE_STATES = frozenset(s for s in NodeState if s.routable)


@dataclass(frozen=True)
class NodeSnapshot:
    """One node as the router sees it at one instant."""

    name: str
    pair: str
    """The (model, hardware) pair whose profile prices work on this node."""
    models: frozenset[str]
    capacity_mu_s: float
    state: NodeState = NodeState.HEALTHY
    inflight_mu: float = 0.0
    """MU of requests the router has sent and not seen finish (its own ledger)."""
    inflight_requests: int = 0
    queued_requests: int = 0
    """Requests waiting in the node (Triton pending + engine waiting), from its metrics."""
    kv_used_fraction: float = 0.0
    metrics_age_s: float = 0.0
    """Seconds since the node's metrics were last scraped (stale metrics count against it)."""
    reserved_mu: float = 0.0
    """Headroom held on this node for open agent sessions."""
    trust: float = 1.0
    """The health machine's confidence in the node, in [0, 1]: the share of requests a
    policy may send it (suspect, on probation, or ramping up after probation)."""

    @property
    def load_ratio(self) -> float:
        """Projected in-flight MU over capacity (MU/s): seconds of queued work."""
        return (self.inflight_mu + self.reserved_mu) / max(self.capacity_mu_s, 1e-9)


@dataclass(frozen=True)
class RequestView:
    """What a policy may know about one request (never its true output length)."""

    request_id: str
    tenant: str
    model: str
    prompt_tokens: int
    max_tokens: int
    mu_by_pair: Mapping[str, float]
    """The request's MU estimate on each candidate pair."""
    session_id: str | None = None
    block_hashes: tuple[int, ...] = ()
    """Chained hashes of the prompt's full token blocks (see :mod:`router.policies.prefix`)."""
    block_size: int = 16
    priority: int = 2

    def mu_on(self, node: NodeSnapshot) -> float:
        return self.mu_by_pair.get(node.pair, 0.0)


@dataclass(frozen=True)
class Decision:
    """The chosen node and why, for metrics and logs."""

    node: str
    reason: str
    """Free text for logs and response headers (may hold numbers and keys)."""
    scores: Mapping[str, float] = field(default_factory=dict)
    kind: str = "best_score"
    """A small fixed vocabulary per policy: the metrics label (bounded cardinality)."""


class NoCandidateError(LookupError):
    """No node can take the request (none routable, or none serves its model)."""


@runtime_checkable
class Policy(Protocol):
    """Every routing policy: choose a node, then learn what happened."""

    name: str

    def choose(self, request: RequestView, nodes: Sequence[NodeSnapshot], now: float) -> Decision:
        """Pick a node for ``request``; raises :class:`NoCandidateError` if none fits."""
        ...

    def on_routed(self, request: RequestView, node: str, now: float) -> None:
        """``request`` was sent to ``node``."""
        ...

    def on_finished(self, request: RequestView, node: str, now: float) -> None:
        """``request`` ended on ``node`` (successfully or not)."""
        ...
