"""A local fleet: N ``tritonserver`` nodes on loopback, restarted when they die.

The supervise loop (``supervise_once``, polled by ``mufleet up``) and the control API
(:mod:`mufleet.supervisor_api`, its own threads) both act on the nodes, so every method that
reads or changes a node holds the fleet's lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mufleet.node import NodePorts, TritonNode
from mufleet.triton_dist import TritonDistribution

log = logging.getLogger("mufleet.fleet")


class UnknownNodeError(KeyError):
    """No node of that name in the fleet."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown node"


@dataclass
class RestartPolicy:
    """Exponential back-off between restarts of one node, reset after a stable run."""

    initial_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = 60.0


@dataclass(frozen=True)
class NodeStatus:
    """One node as the control API reports it."""

    name: str
    pid: int | None
    alive: bool
    restarts: int


@dataclass
class _NodeState:
    node: TritonNode
    started_at: float = 0.0
    next_start_at: float = 0.0
    backoff_s: float = 0.0
    restarts: int = 0
    starts: int = 0
    """Every start of the process, the first included (tells a restart already done)."""


def _kill(node: TritonNode) -> int | None:
    """SIGKILL the node's process group and reap it; works on a stopped (SIGSTOP) process,
    which SIGTERM would never reach."""
    proc = node.process
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    return node.stop()


class LocalFleet:
    """Starts, watches and stops the nodes of one machine.

    Either builds ``nodes`` nodes named ``node0…`` on consecutive ports from ``base_port``
    (``mufleet up``), or supervises the given ``members`` (their own names and ports).
    """

    def __init__(
        self,
        repository: Path | None = None,
        triton: TritonDistribution | None = None,
        nodes: int = 2,
        base_port: int = 8000,
        host: str = "127.0.0.1",
        log_dir: Path | None = None,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        members: Sequence[TritonNode] | None = None,
    ) -> None:
        if members is None:
            if repository is None or triton is None:
                raise ValueError("LocalFleet needs members, or a repository and a triton")
            members = [
                TritonNode(
                    name=f"node{i}",
                    repository=repository,
                    triton=triton,
                    ports=NodePorts.for_index(i, base_port),
                    host=host,
                    log_path=log_dir / f"node{i}.log" if log_dir else None,
                )
                for i in range(nodes)
            ]
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be distinct, got {names}")
        self.policy = policy or RestartPolicy()
        self.clock = clock
        self._states = [_NodeState(m) for m in members]
        self._lock = threading.RLock()

    @property
    def members(self) -> list[TritonNode]:
        return [s.node for s in self._states]

    def _state(self, name: str) -> _NodeState:
        for state in self._states:
            if state.node.name == name:
                return state
        raise UnknownNodeError(f"no node {name!r}; nodes: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [s.node.name for s in self._states]

    def _start(self, state: _NodeState, now: float) -> None:
        state.node.start()
        state.started_at, state.next_start_at = now, 0.0
        state.starts += 1

    def start(self) -> None:
        with self._lock:
            for state in self._states:
                self._start(state, self.clock())

    def wait_ready(self, timeout: float = 300.0) -> None:
        for state in self._states:
            state.node.wait_ready(timeout)

    def supervise_once(self) -> list[str]:
        """Restart every node whose process has exited; returns the names restarted."""
        restarted: list[str] = []
        with self._lock:
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
                        "%s exited with code %s; restarting in %.0fs",
                        node.name,
                        code,
                        state.backoff_s,
                    )
                if now >= state.next_start_at:
                    self._start(state, now)
                    state.restarts += 1
                    restarted.append(node.name)
                    log.warning("%s restarted (restart #%d)", node.name, state.restarts)
        return restarted

    def restart(self, name: str, reason: str = "") -> None:
        """Kill node ``name`` (SIGKILL) and start it again now, skipping any back-off.

        Idempotent while a restart is under way: a call that waited for another restart of
        the same node to finish finds the process already new and alive, and leaves it be.
        Raises :class:`UnknownNodeError` for a name not in the fleet.
        """
        state = self._state(name)
        seen = state.starts
        with self._lock:
            if state.starts != seen and state.node.alive():
                log.info("%s was restarted meanwhile; not again (%s)", name, reason or "no reason")
                return
            code = _kill(state.node)
            self._start(state, self.clock())
            state.restarts += 1
            log.warning(
                "%s restarted on request (restart #%d, exit code %s): %s",
                name,
                state.restarts,
                code,
                reason or "no reason given",
            )

    def status(self) -> list[NodeStatus]:
        with self._lock:
            return [
                NodeStatus(
                    name=s.node.name,
                    pid=s.node.process.pid if s.node.process is not None else None,
                    alive=s.node.alive(),
                    restarts=s.restarts,
                )
                for s in self._states
            ]

    def restarts(self) -> dict[str, int]:
        with self._lock:
            return {s.node.name: s.restarts for s in self._states}

    def stop(self) -> None:
        with self._lock:
            for state in self._states:
                state.node.stop()
