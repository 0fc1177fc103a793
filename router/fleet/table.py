"""The node table: what the router knows about each Triton node, and the snapshots policies see.

Per node: its configuration, its health state (with reason, since when, and a bounded history
of transitions), the router's own in-flight ledger (requests sent and not yet finished, and the
MU they hold), the latest two metric scrapes, scrape errors, the MU reserved for open agent
sessions, and two capacity factors kept apart and multiplied: the health machine's (GPU
throttling, :meth:`NodeTable.set_health`) and the engine configuration's
(:meth:`NodeTable.set_config_factor`). :meth:`NodeTable.snapshot` turns that into one
:class:`~router.policies.base.NodeSnapshot` per node for a routing policy.

Pure and single-threaded: every method that depends on time takes ``now`` (the caller's clock,
the same one the scraper stamps metrics with); nothing here does I/O or locks. In the
router it is touched from the event loop only.

Snapshots are cheap enough to take per request: a node's snapshot fields are rebuilt only
after something about it changed, and a node whose metrics age is unchanged (never scraped,
or the same ``now``) returns the very same object.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from router.fleet.metrics import MetricsDelta, NodeMetrics, delta
from router.fleet.node_config import DEFAULT_MODELS, NodeConfig
from router.fleet.node_entry import NodeEntry, Transition, UnknownNodeError
from router.policies.base import NodeSnapshot, NodeState

__all__ = [
    "DEFAULT_MODELS",
    "NodeConfig",
    "NodeEntry",
    "NodeTable",
    "Transition",
    "UnknownNodeError",
]


_SNAPSHOT_FIELDS = tuple(f.name for f in dataclasses.fields(NodeSnapshot))
# Building a frozen dataclass through __init__ costs ~1.3 µs (one object.__setattr__ per field);
# filling the instance dict of an unslotted one directly costs ~0.2 µs. The result is the same
# object (tested against the constructor); if NodeSnapshot ever gains slots or a __post_init__,
# the constructor is used instead.
_FAST_SNAPSHOT = (
    not hasattr(NodeSnapshot, "__slots__")
    and not hasattr(NodeSnapshot, "__post_init__")
    and set(_SNAPSHOT_FIELDS)
    == {
        "name",
        "pair",
        "models",
        "capacity_mu_s",
        "state",
        "inflight_mu",
        "inflight_requests",
        "queued_requests",
        "kv_used_fraction",
        "metrics_age_s",
        "reserved_mu",
        "trust",
    }
)


def _make_snapshot(fields: dict[str, Any], age: float) -> NodeSnapshot:
    if _FAST_SNAPSHOT:
        snap = object.__new__(NodeSnapshot)
        attrs = snap.__dict__
        attrs.update(fields)
        attrs["metrics_age_s"] = age
        return snap
    return NodeSnapshot(**fields, metrics_age_s=age)


class NodeTable:
    """The fleet's nodes, their states and ledgers; produces :class:`NodeSnapshot` lists.

    ``capacity_of(pair)`` gives a pair's capacity in MU/s (e.g. from its
    :class:`~router.cost_model.CostModel`); a node's ``capacity_mu_s`` overrides it. Nodes start
    :attr:`NodeState.HEALTHY` at ``now`` (0.0 unless given).
    """

    def __init__(
        self,
        nodes: Sequence[NodeConfig],
        capacity_of: Callable[[str], float],
        *,
        now: float = 0.0,
        history_len: int = 64,
    ) -> None:
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {history_len}")
        self._entries: dict[str, NodeEntry] = {}
        for config in nodes:
            if config.name in self._entries:
                raise ValueError(f"duplicate node name {config.name!r}")
            capacity = config.capacity_mu_s
            if capacity is None:
                capacity = float(capacity_of(config.pair))
            if not (math.isfinite(capacity) and capacity > 0):
                raise ValueError(
                    f"node {config.name!r}: capacity of pair {config.pair!r} must be a finite "
                    f"number > 0 MU/s, got {capacity}"
                )
            self._entries[config.name] = NodeEntry(
                config=config,
                capacity_mu_s=capacity,
                state=NodeState.HEALTHY,
                reason="initial",
                since=now,
                history=deque(maxlen=history_len),
            )
        self._order = list(self._entries.values())

    # -- lookup ----------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._order]

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[NodeEntry]:
        return iter(self._order)

    def entry(self, name: str) -> NodeEntry:
        """The node's entry; raises :class:`UnknownNodeError`."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNodeError(name, list(self._entries)) from None

    def config(self, name: str) -> NodeConfig:
        return self.entry(name).config

    def state(self, name: str) -> NodeState:
        return self.entry(name).state

    # -- in-flight ledger ------------------------------------------------------------------

    def start(self, node: str, request_id: str, mu: float, now: float) -> None:
        """The router sent ``request_id`` (estimated at ``mu``) to ``node``.

        Idempotent: starting a request already in flight on the node changes nothing.
        """
        e = self.entry(node)
        if not (math.isfinite(mu) and mu >= 0):
            raise ValueError(f"mu must be a finite number >= 0, got {mu}")
        if request_id in e.inflight:
            return
        if not e.inflight:
            e.busy_since = now
        e.inflight[request_id] = mu
        e.inflight_mu += mu
        e.requests_started += 1
        e.mu_started += mu
        e.changed()

    def finish(self, node: str, request_id: str, now: float) -> float:
        """``request_id`` ended on ``node`` (any outcome); returns the MU it held.

        Idempotent: a request that is not in flight there (already finished, never started)
        returns 0.0 and changes nothing.
        """
        e = self.entry(node)
        mu = e.inflight.pop(request_id, None)
        if mu is None:
            return 0.0
        # Recomputing at zero stops float drift from leaving a phantom residue.
        e.inflight_mu = e.inflight_mu - mu if e.inflight else 0.0
        e.requests_finished += 1
        e.mu_finished += mu
        e.last_finished_at = now
        e.changed()
        return mu

    def first_token(self, node: str, request_id: str, remaining_mu: float) -> None:
        """``request_id``'s prefill is done on ``node``: it holds ``remaining_mu`` from now.

        In-flight MU is the work still to do, so a request that streams keeps only its
        decode share; a node busy decoding long answers is not mistaken for one with as
        many prompts still to prefill. Never raises what a request holds.
        """
        e = self._entries.get(node)
        held = None if e is None else e.inflight.get(request_id)
        if e is None or held is None or not remaining_mu < held:
            return
        remaining = max(remaining_mu, 0.0)
        e.inflight[request_id] = remaining
        e.inflight_mu = max(e.inflight_mu - (held - remaining), 0.0)
        e.mu_finished += held - remaining
        e.changed()

    def note_progress(self, node: str, now: float) -> None:
        """A response arrived from ``node`` (cheap: called for every streamed token)."""
        self._entries[node].last_token_at = now

    def stalled_for(self, node: str, now: float) -> float:
        """Seconds the node has had requests in flight without sending anything (0 when it
        has none in flight or answered since they started)."""
        e = self.entry(node)
        if not e.inflight or e.busy_since is None:
            return 0.0
        last = max(e.busy_since, e.last_token_at or e.busy_since, e.last_finished_at or 0.0)
        return max(now - last, 0.0)

    def set_health(self, node: str, trust: float, capacity_factor: float) -> None:
        """The health machine's trust and capacity factor for ``node`` (both in [0, 1])."""
        e = self.entry(node)
        trust = min(max(trust, 0.0), 1.0)
        factor = min(max(capacity_factor, 0.01), 1.0)
        if trust != e.trust or factor != e.capacity_factor:
            e.trust, e.capacity_factor = trust, factor
            e.changed()

    def set_config_factor(self, node: str, factor: float) -> None:
        """The share of the calibrated capacity granted for ``node``'s engine configuration,
        in (0, 1]; kept apart from the health machine's factor, which :meth:`set_health`
        sets, and multiplied with it."""
        e = self.entry(node)
        if not math.isfinite(factor):
            raise ValueError(f"the configuration factor must be finite, got {factor}")
        factor = min(max(factor, 1e-3), 1.0)
        if factor != e.config_capacity_factor:
            e.config_capacity_factor = factor
            e.changed()

    def inflight(self, node: str) -> Mapping[str, float]:
        """A copy of the node's in-flight requests (id → MU)."""
        return dict(self.entry(node).inflight)

    def set_reserved(self, reserved: Mapping[str, float]) -> None:
        """Replace every node's reserved MU (nodes not named get 0)."""
        for name, mu in reserved.items():
            self.entry(name)
            if not (math.isfinite(mu) and mu >= 0):
                raise ValueError(f"reserved MU of {name!r} must be finite and >= 0, got {mu}")
        for e in self._order:
            mu = float(reserved.get(e.name, 0.0))
            if mu != e.reserved_mu:
                e.reserved_mu = mu
                e.changed()

    # -- metrics ---------------------------------------------------------------------------

    def update_metrics(self, node: str, metrics: NodeMetrics) -> bool:
        """Record a good scrape; the previous one is kept for :meth:`delta`.

        A scrape no newer than the current one is ignored (returns False).
        """
        e = self.entry(node)
        if e.metrics is not None and metrics.scraped_at <= e.metrics.scraped_at:
            return False
        e.prev_metrics, e.metrics = e.metrics, metrics
        e.scrape_failures = 0
        e.changed()
        return True

    def record_scrape_error(self, node: str, error: str, now: float) -> None:
        """A scrape of ``node`` failed (the last good metrics stay, and age)."""
        e = self.entry(node)
        e.scrape_failures += 1
        e.scrape_failures_total += 1
        e.last_scrape_error = error
        e.last_scrape_error_at = now

    def delta(self, node: str) -> MetricsDelta | None:
        """Rates between the node's last two scrapes; ``None`` before it has two."""
        e = self.entry(node)
        if e.metrics is None or e.prev_metrics is None:
            return None
        return delta(e.prev_metrics, e.metrics)

    # -- state -----------------------------------------------------------------------------

    def transition(self, node: str, state: NodeState | str, reason: str, now: float) -> bool:
        """Move ``node`` to ``state``; returns whether the state changed.

        A change is recorded in the node's bounded history. Moving to the current state only
        updates the reason.
        """
        e = self.entry(node)
        target = NodeState(state)
        if target is e.state:
            e.reason = reason
            return False
        e.history.append(Transition(now, e.state, target, reason))
        e.state = target
        e.reason = reason
        e.since = now
        e.changed()
        return True

    def cordon(self, node: str, reason: str, now: float) -> bool:
        """Operator: take ``node`` out of routing now; work queued there is to be re-routed."""
        e = self.entry(node)
        e.operator_hold = True
        return self.transition(node, NodeState.CORDONED, f"operator: {reason}", now)

    def drain(self, node: str, reason: str, now: float) -> bool:
        """Operator: send ``node`` no new work and let what it has finish."""
        e = self.entry(node)
        e.operator_hold = True
        return self.transition(node, NodeState.DRAINING, f"operator: {reason}", now)

    def uncordon(self, node: str, now: float) -> bool:
        """Operator: release a cordon or drain. A cordoned or draining node becomes healthy;
        a node in any other state keeps it (the health machine owns it) and loses the hold."""
        e = self.entry(node)
        e.operator_hold = False
        if e.state in (NodeState.CORDONED, NodeState.DRAINING):
            return self.transition(node, NodeState.HEALTHY, "operator: uncordoned", now)
        return False

    def drained(self, node: str) -> bool:
        """The node is draining and has nothing of the router's left in flight."""
        e = self.entry(node)
        return e.state is NodeState.DRAINING and not e.inflight

    def history(self, node: str) -> list[Transition]:
        """The node's recent state changes, oldest first."""
        return list(self.entry(node).history)

    # -- views -----------------------------------------------------------------------------

    def _fields_of(self, e: NodeEntry) -> dict[str, Any]:
        fields = e._fields
        if fields is None:
            m = e.metrics
            kv = m.kv_used_fraction if m is not None else None
            fields = {
                "name": e.config.name,
                "pair": e.config.pair,
                "models": frozenset(e.config.models),
                "capacity_mu_s": e.effective_capacity_mu_s,
                "state": e.state,
                "inflight_mu": e.inflight_mu,
                "inflight_requests": len(e.inflight),
                "queued_requests": m.queued if m is not None else 0,
                "kv_used_fraction": kv if kv is not None else 0.0,
                "reserved_mu": e.reserved_mu,
                "trust": e.trust,
            }
            e._fields = fields
        return fields

    def snapshot_of(self, node: str, now: float) -> NodeSnapshot:
        return self._snapshot_entry(self.entry(node), now)

    def _snapshot_entry(self, e: NodeEntry, now: float) -> NodeSnapshot:
        m = e.metrics
        age = math.inf if m is None else max(now - m.scraped_at, 0.0)
        snap = e._snapshot
        if snap is None or snap.metrics_age_s != age:
            snap = _make_snapshot(self._fields_of(e), age)
            e._snapshot = snap
        return snap

    def snapshot(self, now: float) -> list[NodeSnapshot]:
        """One snapshot per node, in table order, as of ``now``."""
        # _snapshot_entry inlined: this runs for every node on every request.
        out: list[NodeSnapshot] = []
        append = out.append
        fields_of = self._fields_of
        for e in self._order:
            m = e.metrics
            if m is None:
                age = math.inf
            else:
                age = now - m.scraped_at
                if age < 0.0:
                    age = 0.0
            snap = e._snapshot
            if snap is None or snap.metrics_age_s != age:
                snap = _make_snapshot(e._fields or fields_of(e), age)
                e._snapshot = snap
            append(snap)
        return out

    def admin_view(self, now: float) -> list[dict[str, Any]]:
        """One JSON-ready dict per node for the admin API (no NaN or infinity: unknown is null)."""
        out: list[dict[str, Any]] = []
        for e in self._order:
            m = e.metrics
            c = e.config
            out.append(
                {
                    "name": c.name,
                    "url": c.http_url,
                    "grpc_url": c.grpc_url,
                    "state": e.state.value,
                    "reason": e.reason,
                    "since": e.since,
                    "operator_hold": e.operator_hold,
                    "inflight_mu": e.inflight_mu,
                    "inflight_requests": len(e.inflight),
                    "reserved_mu": e.reserved_mu,
                    "capacity_mu_s": e.capacity_mu_s,
                    "capacity_factor": e.capacity_factor,
                    "config_capacity_factor": e.config_capacity_factor,
                    "effective_capacity_mu_s": e.effective_capacity_mu_s,
                    "trust": e.trust,
                    "utilisation": e.inflight_mu / e.effective_capacity_mu_s,
                    "queued": m.queued if m is not None else None,
                    "kv_used_fraction": m.kv_used_fraction if m is not None else None,
                    "engine": None if m is None or m.engine is None else m.engine.model_dump(),
                    "metrics_age_s": None if m is None else max(now - m.scraped_at, 0.0),
                    "scrape_failures": e.scrape_failures,
                    "last_scrape_error": e.last_scrape_error,
                    "models": list(c.models),
                    "pair": c.pair,
                }
            )
        return out
