"""A local fleet: N ``tritonserver`` nodes on loopback, restarted when they die."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mufleet.node import NodePorts, TritonNode
from mufleet.triton_dist import TritonDistribution

log = logging.getLogger("mufleet.fleet")


@dataclass
class RestartPolicy:
    """Exponential back-off between restarts of one node, reset after a stable run."""

    initial_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = 60.0


@dataclass
class _NodeState:
    node: TritonNode
    started_at: float = 0.0
    next_start_at: float = 0.0
    backoff_s: float = 0.0
    restarts: int = 0


@dataclass
class LocalFleet:
    """Starts, watches and stops the nodes of one machine."""

    repository: Path
    triton: TritonDistribution
    nodes: int = 2
    base_port: int = 8000
    host: str = "127.0.0.1"
    log_dir: Path | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    clock: Callable[[], float] = time.monotonic
    _states: list[_NodeState] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(self.nodes):
            node = TritonNode(
                name=f"node{i}",
                repository=self.repository,
                triton=self.triton,
                ports=NodePorts.for_index(i, self.base_port),
                host=self.host,
                log_path=self.log_dir / f"node{i}.log" if self.log_dir else None,
            )
            self._states.append(_NodeState(node))

    @property
    def members(self) -> list[TritonNode]:
        return [s.node for s in self._states]

    def start(self) -> None:
        for state in self._states:
            state.node.start()
            state.started_at = self.clock()

    def wait_ready(self, timeout: float = 300.0) -> None:
        for state in self._states:
            state.node.wait_ready(timeout)

    def supervise_once(self) -> list[str]:
        """Restart every node whose process has exited; returns the names restarted."""
        restarted: list[str] = []
        now = self.clock()
        for state in self._states:
            node = state.node
            if node.alive():
                if now - state.started_at > self.policy.stable_s:
                    state.backoff_s = 0.0
                continue
            if state.next_start_at == 0.0:
                code = node.stop()
                state.backoff_s = min(
                    max(state.backoff_s * 2, self.policy.initial_s), self.policy.max_s
                )
                state.next_start_at = now + state.backoff_s
                log.warning(
                    "%s exited with code %s; restarting in %.0fs", node.name, code, state.backoff_s
                )
            if now >= state.next_start_at:
                node.start()
                state.started_at, state.next_start_at = now, 0.0
                state.restarts += 1
                restarted.append(node.name)
                log.warning("%s restarted (restart #%d)", node.name, state.restarts)
        return restarted

    def restarts(self) -> dict[str, int]:
        return {s.node.name: s.restarts for s in self._states}

    def stop(self) -> None:
        for state in self._states:
            state.node.stop()
