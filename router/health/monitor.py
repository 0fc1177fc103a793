"""Runs the probes on their cadences, feeds the machine, and carries out its actions.

One asyncio task per (node, network probe), each sleeping its own interval (or woken at once
by a :class:`~router.health.signals.ProbeNow`), so a slow or hung node delays nobody else;
one tick task for the judges over the table (metrics, passive traffic) and the machine's
time-driven moves. Actions go out through plain callables: ``evict`` (the pipeline moves the
node's work), the restarter chain (tried in order until one succeeds), and ``on_change``
(called after any state change, so waiting requests look again).

Transitions are logged as one JSON object per line on the ``mufleet.health`` logger and
counted in the router's metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from router.fleet import NodeTable
from router.health.machine import HealthMachine
from router.health.probes.base import FleetJudge, NodeProbe
from router.health.restarters.base import Restarter, RestartResult
from router.health.signals import Action, Evict, ProbeNow, Restart, Signal
from router.policies.base import NodeState

log = logging.getLogger("mufleet.health")

SignalHook = Callable[[Signal], None]


class HealthMonitor:
    """The asyncio side of fleet health; :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        table: NodeTable,
        machine: HealthMachine,
        probes: Sequence[NodeProbe],
        judges: Sequence[FleetJudge],
        restarters: Sequence[Restarter],
        *,
        evict: Callable[[Evict], None],
        on_change: Callable[[], None] = lambda: None,
        on_signal: SignalHook | None = None,
        on_restart: Callable[[str, RestartResult], None] | None = None,
        tick_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.machine = machine
        self.probes = list(probes)
        self.judges = list(judges)
        self.restarters = list(restarters)
        self.evict = evict
        self.on_change = on_change
        self.on_signal = on_signal
        self.on_restart = on_restart
        self.tick_s = tick_s
        self.clock = clock
        self._wake: dict[tuple[str, str], asyncio.Event] = {}
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._states = {name: table.state(name) for name in table.names}

    # -- lifecycle ----------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loops = [
            asyncio.create_task(self._probe_loop(name, probe), name=f"{probe.name}:{name}")
            for probe in self.probes
            for name in self.table.names
        ]
        loops.append(asyncio.create_task(self._tick_loop(), name="health-tick"))
        try:
            await self._stop.wait()
        finally:
            for task in [*loops, *self._tasks]:
                task.cancel()
            await asyncio.gather(*loops, *self._tasks, return_exceptions=True)

    # -- inputs -------------------------------------------------------------------------
    def observe(self, signal: Signal) -> None:
        """Feed one signal (from a probe, or from the pipeline) to the machine."""
        if self.on_signal is not None:
            self.on_signal(signal)
        self._apply(self.machine.observe(signal, self.clock()))

    def probe_now(self, node: str, source: str) -> None:
        event = self._wake.get((node, source))
        if event is not None:
            event.set()

    # -- loops ------------------------------------------------------------------------------
    async def _probe_loop(self, node: str, probe: NodeProbe) -> None:
        config = self.table.config(node)
        wake = self._wake.setdefault((node, probe.name), asyncio.Event())
        # Spread the first probes of a large fleet over one interval.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), probe.interval_s(node) * (hash(node) % 97) / 97)
        while not self._stop.is_set():
            wake.clear()
            if not (probe.name == "canary" and self.table.state(node) is NodeState.RESTARTING):
                signal = await probe.probe(config, self.clock())
                if signal is not None:
                    self.observe(signal)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), probe.interval_s(node))

    async def _tick_loop(self) -> None:
        while not self._stop.is_set():
            now = self.clock()
            for judge in self.judges:
                for signal in judge.evaluate(self.table, now):
                    self.observe(signal)
            self._apply(self.machine.tick(now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.tick_s)

    # -- actions ------------------------------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Evict):
                self.evict(action)
            elif isinstance(action, Restart):
                task = asyncio.create_task(self._restart(action), name=f"restart:{action.node}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(action, ProbeNow):
                self.probe_now(action.node, action.source)
        self._sync()

    async def _restart(self, action: Restart) -> None:
        config = self.table.config(action.node)
        result = RestartResult(ok=False, detail="no restarter configured", restarter="none")
        details = []
        for restarter in self.restarters:
            result = await restarter.restart(config)
            details.append(f"{result.restarter}: {result.detail}")
            if self.on_restart is not None:
                self.on_restart(action.node, result)
            if result.ok:
                break
        detail = result.detail if result.ok else "; ".join(details) or result.detail
        self._apply(self.machine.restart_finished(action.node, result.ok, detail, self.clock()))
        self.probe_now(action.node, "readiness")

    def _sync(self) -> None:
        """Push trust and capacity factors to the table; log and announce state changes."""
        now = self.clock()
        changed = False
        for name in self.table.names:
            self.table.set_health(
                name, self.machine.trust(name, now), self.machine.capacity_factor(name)
            )
            state = self.table.state(name)
            if state is not self._states[name]:
                changed = True
                self._states[name] = state
                if state in (NodeState.RESTARTING, NodeState.PROBATION):
                    for judge in self.judges:
                        judge.forget(name)
        if changed:
            self.on_change()


def log_transition(node: str, before: NodeState, after: NodeState, reason: str, at: float) -> None:
    """The machine's transition hook: one structured line per change."""
    log.warning(
        json.dumps(
            {
                "event": "node_state",
                "node": node,
                "from": before.value,
                "to": after.value,
                "reason": reason,
                "monotonic_s": round(at, 3),
                "unix_s": round(time.time(), 3),
            }
        )
    )
