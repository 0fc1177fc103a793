"""The per-node health state machine: ``healthy → suspect → cordoned → restarting →
probation → healthy``.

Pure and clock-injected (``now`` is an argument; no I/O, no asyncio), so the router's
monitor, the fleet simulator and the tests drive the very same object. It keeps the latest
non-passing :class:`~router.health.signals.Signal` of every probe per node, moves the node's
state in the :class:`~router.fleet.NodeTable` (every move with its reason), and returns
:class:`~router.health.signals.Action` objects for the caller to carry out.

The rules:

* **healthy / suspect**: the worst live verdict decides. ``suspect`` makes the node suspect
  (still routable at ``suspect_weight`` of its capacity) and asks for a confirming canary
  now (and again after each canary it fails, so confirmation never waits for the cadence);
  a canary failure that another source's live suspicion corroborates (real traffic silent,
  metrics without progress) counts as ``fail`` when ``corroborated_fail`` is on; ``fail``
  cordons it (its work is evicted, streams migrated) and schedules a restart;
  ``drain`` cordons it without touching its streams and without a restart (a fatal GPU XID
  is not fixed by restarting Triton). Verdicts lapse after ``verdict_ttl_s`` unless renewed.
* **No cascade**: a node is taken out only while fewer than ``max_out_fraction`` of the
  fleet (at least one node) are out (cordoned, draining, restarting or on probation);
  beyond the cap it stays suspect with the withheld verdict as its reason. Below
  ``panic_healthy_fraction`` healthy nodes the fleet is in panic: suspect nodes keep their
  full capacity, since starving the few remaining nodes would be worse.
* **cordoned → restarting**: the first restart is immediate, later ones back off
  (``restart_backoff_s`` doubling up to ``restart_backoff_max_s``); after ``max_restarts``
  failed attempts in a row the node stays cordoned for an operator. Without restarters a
  cordoned node returns to probation once its failing verdicts clear.
* **restarting → probation**: when the restarter reported success *and* a readiness probe
  passed after that; a restart that does not finish within ``restart_timeout_s`` counts as
  failed.
* **probation → healthy**: on probation a node takes canaries only (trust 0) until
  ``probation_canaries`` pass in a row; then its share of real traffic (``trust``) ramps
  from ``ramp_start`` to 1 over ``ramp_s`` and it becomes healthy. Any failing canary, or
  any failing probe, sends it back to cordoned.
* What policies see: ``trust`` (the share of requests a node may get: 1 when healthy,
  ``suspect_weight`` when suspect — 1 in panic —, the ramp on probation, 0 otherwise) and
  ``capacity_factor`` (the GPU agent's share of the calibrated capacity for a throttled GPU).
* An operator's cordon or drain (``operator_hold``) freezes the machine for that node; the
  verdicts are still recorded and shown.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from router.fleet import NodeTable
from router.health.config import MachineConfig
from router.health.signals import Action, Evict, ProbeNow, Restart, Signal, Verdict
from router.policies.base import NodeState

OUT_STATES = frozenset(
    {NodeState.CORDONED, NodeState.DRAINING, NodeState.RESTARTING, NodeState.PROBATION}
)
TransitionHook = Callable[[str, NodeState, NodeState, str, float], None]


@dataclass
class NodeHealth:
    """What the machine remembers about one node."""

    verdicts: dict[str, Signal] = field(default_factory=dict)
    """Latest non-passing signal per source (a passing one removes its source)."""
    canary_passes: int = 0
    """Passing canaries in a row (counts toward probation)."""
    cordon_kind: Literal["restart", "drain"] | None = None
    restarts: int = 0
    """Restart attempts since the node was last healthy."""
    next_restart_at: float | None = None
    restart_started_at: float | None = None
    restart_done_at: float | None = None
    gave_up: bool = False
    trusted_at: float | None = None
    """When the node passed its probation canaries (its trust ramps from then)."""
    gpu_factor: float = 1.0

    def worst(self) -> Signal | None:
        if not self.verdicts:
            return None
        return max(self.verdicts.values(), key=lambda s: (s.verdict.rank, s.at))


class HealthMachine:
    """Health states of every node of ``table``; see the module docstring for the rules."""

    def __init__(
        self,
        table: NodeTable,
        config: MachineConfig | None = None,
        *,
        can_restart: bool = True,
        on_transition: TransitionHook | None = None,
    ) -> None:
        self.table = table
        self.config = config or MachineConfig()
        self.can_restart = can_restart
        self.on_transition = on_transition
        self.health: dict[str, NodeHealth] = {name: NodeHealth() for name in table.names}

    # -- inputs ---------------------------------------------------------------------------
    def observe(self, signal: Signal, now: float) -> list[Action]:
        """Take one probe's verdict; returns what the router must do about it."""
        h = self.health[signal.node]
        if signal.verdict is Verdict.PASS:
            h.verdicts.pop(signal.source, None)
        else:
            h.verdicts[signal.source] = signal
        if signal.source == "gpu" and signal.capacity_factor is not None:
            h.gpu_factor = min(max(signal.capacity_factor, 0.05), 1.0)
        if signal.source == "canary":
            h.canary_passes = h.canary_passes + 1 if signal.verdict is Verdict.PASS else 0
        entry = self.table.entry(signal.node)
        if entry.operator_hold:
            return []
        state = entry.state
        if state in (NodeState.HEALTHY, NodeState.SUSPECT):
            actions = self._judge(signal.node, now)
            confirm = ProbeNow(signal.node, "canary")
            if (
                signal.source == "canary"
                and signal.verdict is Verdict.SUSPECT
                and self.table.state(signal.node) is NodeState.SUSPECT
                and confirm not in actions
            ):
                actions.append(confirm)
            return actions
        if state is NodeState.RESTARTING:
            if (
                signal.source == "readiness"
                and signal.verdict is Verdict.PASS
                and h.restart_done_at is not None
                and signal.at >= h.restart_done_at
            ):
                self._to_probation(signal.node, "restarted and ready", now)
            return []
        if state is NodeState.PROBATION:
            return self._probation(signal, now)
        if state is NodeState.CORDONED:
            self._maybe_recovered(signal.node, now)
        return []

    def tick(self, now: float) -> list[Action]:
        """Time-driven moves: lapsed verdicts, due restarts, restarts that timed out."""
        actions: list[Action] = []
        ttl = self.config.verdict_ttl_s
        for name, h in self.health.items():
            lapsed = [s for s, sig in h.verdicts.items() if now - sig.at > ttl]
            for source in lapsed:
                del h.verdicts[source]
            entry = self.table.entry(name)
            if entry.operator_hold:
                continue
            state = entry.state
            if lapsed and state in (NodeState.HEALTHY, NodeState.SUSPECT):
                actions += self._judge(name, now)
            elif state is NodeState.CORDONED:
                if not self._maybe_recovered(name, now):
                    actions += self._restart_if_due(name, now)
            elif state is NodeState.PROBATION:
                if h.trusted_at is not None and now - h.trusted_at >= self.config.ramp_s:
                    h.restarts = 0
                    self._move(name, NodeState.HEALTHY, "probation passed; fully trusted", now)
            elif state is NodeState.RESTARTING:
                started = h.restart_started_at if h.restart_started_at is not None else now
                if now - started > self.config.restart_timeout_s:
                    self._restart_failed(
                        name, f"not ready {now - started:.0f} s after restart", now
                    )
                    actions += self._restart_if_due(name, now)
        return actions

    def restart_finished(self, node: str, ok: bool, detail: str, now: float) -> list[Action]:
        """The restarter chain returned for ``node``."""
        h = self.health[node]
        if self.table.state(node) is not NodeState.RESTARTING:
            return []
        if ok:
            h.restart_done_at = now
            self._move(node, NodeState.RESTARTING, f"{detail}; waiting for ready", now)
            return []
        self._restart_failed(node, detail, now)
        return self._restart_if_due(node, now)

    # -- what the router reads --------------------------------------------------------------
    def trust(self, node: str, now: float) -> float:
        """The share of requests ``node`` may get (see the module docstring)."""
        h = self.health[node]
        state = self.table.state(node)
        if state is NodeState.HEALTHY:
            return 1.0
        if state is NodeState.SUSPECT:
            return 1.0 if self.panic() else self.config.suspect_weight
        if state is NodeState.PROBATION and h.trusted_at is not None:
            c = self.config
            ramp = 1.0 if c.ramp_s <= 0 else min(max(now - h.trusted_at, 0.0) / c.ramp_s, 1.0)
            return c.ramp_start + (1.0 - c.ramp_start) * ramp
        return 0.0

    def capacity_factor(self, node: str) -> float:
        """The node's share of its calibrated capacity (a throttled GPU works slower)."""
        return self.health[node].gpu_factor

    def panic(self) -> bool:
        """Too few healthy nodes: keep every routable one at full weight."""
        healthy = sum(1 for e in self.table if e.state is NodeState.HEALTHY)
        return healthy < self.config.panic_healthy_fraction * len(self.table)

    def out_limit(self) -> int:
        """How many nodes may be out at once (at least one)."""
        return max(1, math.floor(self.config.max_out_fraction * len(self.table) + 1e-9))

    def out_count(self) -> int:
        return sum(1 for e in self.table if e.state in OUT_STATES)

    def view(self, node: str, now: float) -> dict[str, Any]:
        """JSON-ready facts for ``/admin/nodes``."""
        h = self.health[node]
        return {
            "verdicts": {
                s: {"verdict": sig.verdict.value, "reason": sig.reason, "age_s": now - sig.at}
                for s, sig in sorted(h.verdicts.items())
            },
            "canary_passes": h.canary_passes,
            "restarts": h.restarts,
            "gave_up": h.gave_up,
            "trust": self.trust(node, now),
            "capacity_factor": h.gpu_factor,
        }

    # -- rules ------------------------------------------------------------------------------
    def _judge(self, node: str, now: float) -> list[Action]:
        h = self.health[node]
        worst = h.worst()
        if worst is None or worst.verdict is Verdict.PASS:
            if self.table.state(node) is NodeState.SUSPECT:
                self._move(node, NodeState.HEALTHY, "recovered: every probe passes", now)
            return []
        why = f"{worst.source}: {worst.reason}"
        corroborated = self._corroborated(h)
        if corroborated is not None:
            worst, why = corroborated, f"{corroborated.source}: {corroborated.reason}"
        if worst.verdict in (Verdict.FAIL, Verdict.DRAIN):
            if self.out_count() < self.out_limit():
                return self._cordon(node, worst, now)
            why = (
                f"cordon withheld, {self.out_count()} of {len(self.table)} nodes already out "
                f"(cap {self.out_limit()}): {why}"
            )
        changed = self._move(node, NodeState.SUSPECT, why, now)
        return [ProbeNow(node, "canary")] if changed else []

    def _corroborated(self, h: NodeHealth) -> Signal | None:
        """A failed canary plus another source's suspicion, as one ``fail`` signal."""
        canary = h.verdicts.get("canary")
        if not self.config.corroborated_fail or canary is None:
            return None
        if canary.verdict is not Verdict.SUSPECT:
            return None
        others = [s for src, s in h.verdicts.items() if src != "canary" and s.verdict.rank >= 1]
        if not others:
            return None
        other = max(others, key=lambda s: (s.verdict.rank, s.at))
        return Signal(
            canary.node,
            "canary",
            Verdict.FAIL,
            f"{canary.reason}, corroborated by {other.source}: {other.reason}",
            canary.at,
            latency_s=canary.latency_s,
        )

    def _cordon(self, node: str, signal: Signal, now: float) -> list[Action]:
        h = self.health[node]
        drain = signal.verdict is Verdict.DRAIN
        h.cordon_kind = "drain" if drain else "restart"
        h.canary_passes = 0
        reason = f"{signal.source}: {signal.reason}"
        self._move(node, NodeState.CORDONED, reason, now)
        actions: list[Action] = [Evict(node, reason, streams=not drain)]
        if not drain and self.can_restart:
            h.next_restart_at = now + self._backoff(h.restarts)
            actions += self._restart_if_due(node, now)
        return actions

    def _restart_if_due(self, node: str, now: float) -> list[Action]:
        h = self.health[node]
        if (
            h.cordon_kind != "restart"
            or not self.can_restart
            or h.next_restart_at is None
            or now < h.next_restart_at
        ):
            return []
        if h.restarts >= self.config.max_restarts:
            if not h.gave_up:
                h.gave_up = True
                self._move(
                    node,
                    NodeState.CORDONED,
                    f"gave up after {h.restarts} restarts; an operator must look "
                    f"(last: {self.table.entry(node).reason})",
                    now,
                )
            h.next_restart_at = None
            return []
        h.restarts += 1
        h.next_restart_at = None
        h.restart_started_at = now
        h.restart_done_at = None
        reason = self.table.entry(node).reason
        self._move(node, NodeState.RESTARTING, f"restart #{h.restarts}: {reason}", now)
        return [Restart(node, reason, h.restarts)]

    def _restart_failed(self, node: str, detail: str, now: float) -> None:
        h = self.health[node]
        h.next_restart_at = now + self._backoff(h.restarts)
        self._move(node, NodeState.CORDONED, f"restart #{h.restarts} failed: {detail}", now)

    def _backoff(self, attempts: int) -> float:
        c = self.config
        if attempts <= 0:
            return 0.0
        return min(c.restart_backoff_s * 2 ** (attempts - 1), c.restart_backoff_max_s)

    def _maybe_recovered(self, node: str, now: float) -> bool:
        """A cordoned node that no restart will fix returns to probation once its failing
        verdicts have cleared."""
        h = self.health[node]
        if h.cordon_kind == "restart" and self.can_restart:
            return False
        worst = h.worst()
        if worst is not None and worst.verdict.rank >= Verdict.FAIL.rank:
            return False
        self._to_probation(node, "failing probes cleared", now)
        return True

    def _to_probation(self, node: str, reason: str, now: float) -> None:
        h = self.health[node]
        h.canary_passes = 0
        h.cordon_kind = None
        h.gave_up = False
        h.trusted_at = None
        # What the probes said about the node before its restart no longer describes it.
        for source in ("canary", "passive", "metrics", "readiness"):
            h.verdicts.pop(source, None)
        self._move(node, NodeState.PROBATION, reason, now)

    def _probation(self, signal: Signal, now: float) -> list[Action]:
        h = self.health[signal.node]
        if signal.verdict is not Verdict.PASS and (
            signal.source == "canary" or signal.verdict.rank >= Verdict.FAIL.rank
        ):
            failed = Signal(
                signal.node,
                signal.source,
                Verdict.DRAIN if signal.verdict is Verdict.DRAIN else Verdict.FAIL,
                f"on probation: {signal.reason}",
                signal.at,
            )
            return self._cordon(signal.node, failed, now)
        if (
            h.trusted_at is None
            and h.canary_passes >= self.config.probation_canaries
            and h.worst() is None
        ):
            h.trusted_at = now
            if self.config.ramp_s <= 0:
                h.restarts = 0
                self._move(signal.node, NodeState.HEALTHY, "probation passed", now)
            else:
                self._move(
                    signal.node,
                    NodeState.PROBATION,
                    f"{h.canary_passes} canaries passed in a row; traffic ramps up over "
                    f"{self.config.ramp_s:g} s",
                    now,
                )
        return []

    def _move(self, node: str, state: NodeState, reason: str, now: float) -> bool:
        before = self.table.state(node)
        changed = self.table.transition(node, state, reason, now)
        if changed and self.on_transition is not None:
            self.on_transition(node, before, state, reason, now)
        return changed
