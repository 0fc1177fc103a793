"""Outlier detection on real traffic: what the router's own requests say about each node.

The pipeline reports every attempt's outcome (:meth:`PassiveJudge.record`): ``ok`` with its
time to first token, ``node_fault`` (the node failed it: error, reset, missed deadline),
``garbage`` (tokens outside the vocabulary). A client's 4xx is never reported: a bad
request says nothing about the node. From those, per node:

* **stall**: requests in flight and nothing received from the node for ``stall_s`` — a
  wedged node goes quiet while it looks idle to a load-aware policy;
* consecutive node faults, and the node-fault rate over ``window_s`` (``min_samples``
  attempts at least);
* garbage answers in the window;
* **first-token decay**: the median TTFT of the node's recent requests over its own
  baseline (a slow EWMA of its earlier TTFTs, frozen while it decays), counted only when it
  is also an outlier against the fleet's median ratio — a fleet-wide slowdown makes no node
  an outlier, and a slow node is suspect (less traffic), never ejected for slowness alone.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from router.fleet import NodeTable
from router.health.config import PassiveConfig
from router.health.signals import Signal, Verdict

AttemptKind = Literal["ok", "node_fault", "garbage"]


@dataclass
class _NodeTraffic:
    attempts: deque[tuple[float, AttemptKind]] = field(default_factory=deque)
    ttft: deque[tuple[float, float]] = field(default_factory=deque)
    consecutive_faults: int = 0
    baseline_ttft: float | None = None
    last: Verdict = Verdict.PASS


class PassiveJudge:
    name = "passive"

    def __init__(self, config: PassiveConfig, nodes: list[str]) -> None:
        self.config = config
        self.nodes = {name: _NodeTraffic() for name in nodes}

    def record(self, node: str, kind: AttemptKind, ttft_s: float | None, now: float) -> None:
        """One attempt on ``node`` ended (``ttft_s`` for an ``ok`` one that streamed)."""
        t = self.nodes.get(node)
        if t is None:
            return
        t.attempts.append((now, kind))
        t.consecutive_faults = 0 if kind == "ok" else t.consecutive_faults + 1
        if kind == "ok" and ttft_s is not None:
            t.ttft.append((now, ttft_s))
            ratio = self._decay(t)
            if ratio is None or ratio < self.config.ttft_decay_factor:
                a = self.config.baseline_alpha
                t.baseline_ttft = (
                    ttft_s if t.baseline_ttft is None else (1 - a) * t.baseline_ttft + a * ttft_s
                )

    def forget(self, node: str) -> None:
        """A restarted node starts a new record (its baseline is learnt again)."""
        if node in self.nodes:
            self.nodes[node] = _NodeTraffic()

    def evaluate(self, table: NodeTable, now: float) -> list[Signal]:
        c = self.config
        horizon = now - c.window_s
        ratios: dict[str, float] = {}
        for name, t in self.nodes.items():
            while t.attempts and t.attempts[0][0] < horizon:
                t.attempts.popleft()
            while t.ttft and t.ttft[0][0] < horizon:
                t.ttft.popleft()
            ratio = self._decay(t)
            if ratio is not None:
                ratios[name] = ratio
        fleet_ratio = statistics.median(ratios.values()) if ratios else 1.0
        signals: list[Signal] = []
        for name, t in self.nodes.items():
            verdict, reason = self._judge(table, name, t, ratios.get(name), fleet_ratio, now)
            if verdict is not Verdict.PASS or t.last is not Verdict.PASS:
                signals.append(Signal(name, self.name, verdict, reason, now))
            t.last = verdict
        return signals

    def _judge(
        self,
        table: NodeTable,
        name: str,
        t: _NodeTraffic,
        ratio: float | None,
        fleet_ratio: float,
        now: float,
    ) -> tuple[Verdict, str]:
        c = self.config
        n = len(t.attempts)
        faults = sum(1 for _, kind in t.attempts if kind != "ok")
        garbage = sum(1 for _, kind in t.attempts if kind == "garbage")
        if garbage >= c.garbage_fail:
            return Verdict.FAIL, f"{garbage} garbage answers in {c.window_s:g} s"
        if n >= c.min_samples and faults / n >= c.error_rate_fail:
            return Verdict.FAIL, f"{faults} of {n} requests failed in {c.window_s:g} s"
        stalled = table.stalled_for(name, now)
        if stalled >= c.stall_s:
            inflight = table.entry(name).inflight_requests
            return Verdict.SUSPECT, f"{inflight} in flight, nothing received for {stalled:.1f} s"
        if t.consecutive_faults >= c.consecutive_faults_suspect:
            return Verdict.SUSPECT, f"{t.consecutive_faults} failed requests in a row"
        if n >= c.min_samples and faults / n >= c.error_rate_suspect:
            return Verdict.SUSPECT, f"{faults} of {n} requests failed in {c.window_s:g} s"
        if (
            ratio is not None
            and ratio >= c.ttft_decay_factor
            and ratio >= c.ttft_fleet_factor * fleet_ratio
        ):
            return Verdict.SUSPECT, (
                f"first token {ratio:.1f}× slower than its baseline (fleet {fleet_ratio:.1f}×)"
            )
        return Verdict.PASS, "real traffic looks normal"

    def _decay(self, t: _NodeTraffic) -> float | None:
        """Recent median TTFT over the baseline (``None`` without enough of either)."""
        if t.baseline_ttft is None or len(t.ttft) < self.config.min_samples:
            return None
        recent = statistics.median(v for _, v in list(t.ttft)[-self.config.min_samples :])
        return recent / max(t.baseline_ttft, 1e-6)
