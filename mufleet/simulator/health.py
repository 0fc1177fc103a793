"""Node faults and the router's health machine, on the simulator's clock.

The :class:`~router.health.machine.HealthMachine` is the router's own; what is modelled is
what its probes would report. A probe runs only where it could tell something (a node that
is faulty or not yet healthy again): on a working node every probe passes, which changes
nothing in the machine, so leaving those out changes no decision.

* readiness (every ``readiness.interval_s``): refused on a killed node → fail at once;
* canary (every ``canary.interval_s``, ``probation_interval_s`` on probation): a hung node
  never gives the first token, so the canary fails at its first-token deadline; anywhere
  else the top-priority canary is admitted ahead of the batch and passes;
* the machine's actions are carried out as the service's monitor does: ``Evict`` takes the
  node's requests off it (those that have streamed continue elsewhere from their prompt plus
  the tokens already sent; the others are re-sent), ``Restart`` cures the node after
  ``reload_s`` (a hang: model reload) or ``process_restart_s`` (a killed process), with an
  empty KV cache, and ``ProbeNow`` probes at once.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mufleet.simulator.faults import Fault, FaultPlan
from mufleet.simulator.node import SimNode, SimRequest
from mufleet.simulator.router import SimRouter
from router.health.config import HealthConfig
from router.health.machine import HealthMachine
from router.health.signals import Action, Evict, ProbeNow, Restart, Signal, Verdict
from router.policies import NodeState

__all__ = ["HealthTimings", "SimHealth"]

Reroute = Callable[[SimRequest, float], None]
Schedule = Callable[[SimNode], None]


@dataclass(frozen=True)
class HealthTimings:
    reload_s: float = 6.0
    """A model reload through the repository API (hung engine), until ready."""
    process_restart_s: float = 30.0
    """A killed server's process restart until ready (model load included)."""


class SimHealth:
    """Applies a :class:`FaultPlan` to the nodes and runs the router's health machine."""

    def __init__(
        self,
        router: SimRouter,
        nodes: list[SimNode],
        plan: FaultPlan,
        reroute: Reroute,
        schedule: Schedule,
        config: HealthConfig | None = None,
        timings: HealthTimings | None = None,
        seed: int = 0,
    ) -> None:
        self.router = router
        self.nodes = nodes
        self.config = config or HealthConfig()
        self.timings = timings or HealthTimings()
        self.reroute = reroute
        self.schedule = schedule
        """Puts a node's new run end on the simulator's event queue."""
        self.machine = HealthMachine(
            router.table, self.config.machine, on_transition=self._transition
        )
        self._events: list[tuple[float, int, str, int]] = []
        self._seq = 0
        self.dead: set[int] = set()
        self.hung: set[int] = set()
        self.evicted = 0
        self.log: list[dict[str, object]] = []
        self._probing: set[int] = set()
        self._restarting: set[int] = set()
        self.plan = plan
        self._rng = random.Random(seed)
        self._recovered: dict[int, float] = {}
        """Fault index → when its node was healthy again."""
        for i, fault in enumerate(plan.faults):
            self._push(fault.start_s, "start", i)
            if math.isfinite(fault.end_s):
                self._push(fault.end_s, "end", i)

    def _transition(
        self, node: str, old: NodeState, new: NodeState, reason: str, now: float
    ) -> None:
        self.log.append({"t": now, "node": node, "event": f"{old.value} → {new.value}: {reason}"})
        if new is NodeState.HEALTHY:
            row = self.router.rows[node]
            for i, fault in enumerate(self.plan.faults):
                if fault.node == row and fault.start_s <= now and i not in self._recovered:
                    self._recovered[i] = now

    # -- the event queue --------------------------------------------------------------------
    def _push(self, at: float, kind: str, arg: int) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, arg))

    def next_time(self) -> float:
        return self._events[0][0] if self._events else math.inf

    def windows(self) -> list[tuple[float, float]]:
        """When each fault was in force: from its start until its node was healthy again
        (or its duration ran out, for a fault no probe sees)."""
        return [
            (f.start_s, min(f.end_s, self._recovered.get(i, math.inf)))
            for i, f in enumerate(self.plan.faults)
        ]

    def fire(self, now: float) -> None:
        """Handle every event due at ``now``."""
        while self._events and self._events[0][0] <= now:
            _, _, kind, arg = heapq.heappop(self._events)
            getattr(self, f"_on_{kind}")(arg, now)
        self._sync(now)

    # -- faults ---------------------------------------------------------------------------
    def _on_start(self, index: int, now: float) -> None:
        fault = self.plan.faults[index]
        node = self.nodes[fault.node]
        self.log.append({"t": now, "node": node.name, "event": f"{fault.kind} starts"})
        if fault.kind == "slow":
            node.set_slowdown(fault.factor, now)
            self.schedule(node)
            return
        (self.hung if fault.kind == "hang" else self.dead).add(fault.node)
        node.set_hung(True, now)
        self.schedule(node)
        self._watch(fault.node, now)

    def _on_end(self, index: int, now: float) -> None:
        fault: Fault = self.plan.faults[index]
        node = self.nodes[fault.node]
        if fault.kind == "slow":
            node.set_slowdown(1.0, now)
        elif fault.kind == "hang" and fault.node in self.hung:
            self.hung.discard(fault.node)
            node.set_hung(False, now)
        self.schedule(node)
        self.log.append({"t": now, "node": node.name, "event": f"{fault.kind} ends"})

    # -- probes ---------------------------------------------------------------------------
    def _watch(self, node: int, now: float) -> None:
        """Probe ``node`` from now on; the first probe comes at the probes' own cadence,
        a seeded random phase of the interval after the fault began."""
        if node not in self._probing:
            self._probing.add(node)
            interval = min(self.config.canary.interval_s, self.config.readiness.interval_s)
            self._push(now + self._rng.random() * interval, "probe", node)

    def _on_probe(self, node: int, now: float) -> None:
        name = self.nodes[node].name
        state = self.router.table.state(name)
        if node in self.dead:
            self._signal(Signal(name, "readiness", Verdict.FAIL, "connection refused", now), now)
        elif node in self._restarting:
            pass
        else:
            if state is NodeState.RESTARTING:
                self._signal(Signal(name, "readiness", Verdict.PASS, "ready", now), now)
            if node in self.hung:
                deadline = self.config.canary.first_token_deadline_s
                self._push(now + deadline, "canary_timeout", node)
            else:
                self._signal(Signal(name, "canary", Verdict.PASS, "first token in time", now), now)
        state = self.router.table.state(name)
        if state is NodeState.HEALTHY and node not in self.dead and node not in self.hung:
            self._probing.discard(node)
            return
        interval = self.config.canary.interval_s
        if state is NodeState.PROBATION:
            interval = self.config.canary.probation_interval_s
        if node in self.dead:
            interval = min(interval, self.config.readiness.interval_s)
        self._push(now + interval, "probe", node)

    def _on_canary_timeout(self, node: int, now: float) -> None:
        name = self.nodes[node].name
        if node in self.hung:
            self._signal(
                Signal(name, "canary", Verdict.FAIL, "no first token by the deadline", now), now
            )

    def _on_tick(self, node: int, now: float) -> None:
        self._act(self.machine.tick(now), now)

    def _signal(self, signal: Signal, now: float) -> None:
        self._act(self.machine.observe(signal, now), now)

    # -- actions ------------------------------------------------------------------------------
    def _act(self, actions: Sequence[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Evict):
                self._evict(self.router.rows[action.node], now)
            elif isinstance(action, Restart):
                row = self.router.rows[action.node]
                self._restarting.add(row)
                took = self.timings.process_restart_s if row in self.dead else self.timings.reload_s
                self._push(now + took, "restarted", row)
                self.log.append({"t": now, "node": action.node, "event": "restart"})
            elif isinstance(action, ProbeNow):
                self._push(now, "probe", self.router.rows[action.node])

    def _evict(self, row: int, now: float) -> None:
        taken = self.nodes[row].evict_all()
        self.evicted += len(taken)
        for request in taken:
            self.router.evicted(request, now)
            self.reroute(request, now)

    def _on_restarted(self, row: int, now: float) -> None:
        node = self.nodes[row]
        self._restarting.discard(row)
        self.dead.discard(row)
        self.hung.discard(row)
        leftovers = node.evict_all()  # a restart drops whatever the engine still held
        for request in leftovers:
            self.router.evicted(request, now)
            self.reroute(request, now)
        node.set_hung(False, now)
        self.schedule(node)
        self.log.append({"t": now, "node": node.name, "event": "restarted"})
        self._act(self.machine.restart_finished(node.name, True, "restarted", now), now)
        self._watch(row, now)
        self._push(now, "probe", row)

    # -- what the router reads ------------------------------------------------------------------
    def _sync(self, now: float) -> None:
        """Copy trust into the table, and keep the machine ticking while anything is off."""
        busy = False
        for row, node in enumerate(self.nodes):
            entry = self.router.table.entry(node.name)
            trust = self.machine.trust(node.name, now)
            if entry.trust != trust or entry.state is not NodeState.HEALTHY:
                self.router.table.set_health(
                    node.name, trust, self.machine.capacity_factor(node.name)
                )
                self.router.refresh(row)
            busy = busy or entry.state is not NodeState.HEALTHY
        self.router.routable_changed()
        if busy and not any(kind == "tick" for _, _, kind, _ in self._events):
            self._push(now + self.config.tick_s * 10, "tick", 0)

    def pending(self) -> bool:
        """Is anything still to happen that could matter (a restart, a probe of a bad node)?"""
        return bool(self._restarting or self.dead or self.hung) or any(
            kind in ("start", "restarted") for _, _, kind, _ in self._events
        )
