"""The two kinds of probe the health monitor runs.

* A :class:`NodeProbe` asks one node something over the network on its own cadence
  (readiness, the canary, the GPU agent) and answers with a
  :class:`~router.health.signals.Signal`, or ``None`` when it has nothing to say (no GPU
  agent configured for the node).
* A :class:`FleetJudge` reads what the router already knows (scraped metrics, outcomes of
  real requests) for every node at once; it is pure and called on the monitor's tick.

Both keep their own per-node counters (consecutive failures and the like), so thresholds
live with the probe that knows what its failures mean.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from router.fleet import NodeConfig, NodeTable
from router.health.signals import Signal


@runtime_checkable
class NodeProbe(Protocol):
    name: str

    def interval_s(self, node: str) -> float:
        """Seconds until this probe should run on ``node`` again (may vary with jitter or
        with the node's state)."""
        ...

    async def probe(self, node: NodeConfig, now: float) -> Signal | None:
        """Probe ``node`` once, bounded by the probe's own timeouts; never raises."""
        ...


@runtime_checkable
class FleetJudge(Protocol):
    name: str

    def evaluate(self, table: NodeTable, now: float) -> list[Signal]:
        """Signals about any nodes whose verdict this judge has something to say about."""
        ...

    def forget(self, node: str) -> None:
        """The node restarted: what the judge learnt about it no longer describes it."""
        ...
