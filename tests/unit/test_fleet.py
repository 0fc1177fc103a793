"""Unit tests for LocalFleet supervision and restarts (fake nodes, injected clock; one real
child process for the SIGKILL path) and NodePorts."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mufleet.fleet import LocalFleet, NodeStatus, RestartPolicy, UnknownNodeError
from mufleet.node import NodePorts, TritonNode
from mufleet.triton_dist import TritonDistribution

POLICY = RestartPolicy(initial_s=1.0, max_s=8.0, stable_s=60.0)


@dataclass
class FakeNode:
    """Stands in for a TritonNode: a process that is alive until a test kills it."""

    name: str
    running: bool = False
    starts: int = 0
    stops: int = 0
    exit_code: int = 137
    events: list[str] = field(default_factory=list)
    process: None = None
    release: threading.Event | None = None
    """When set, ``stop`` waits for it (a kill that takes a while)."""
    stopping: threading.Event = field(default_factory=threading.Event)

    def alive(self) -> bool:
        return self.running

    def start(self) -> None:
        self.running = True
        self.starts += 1
        self.events.append("start")

    def stop(self) -> int | None:
        self.stopping.set()
        if self.release is not None:
            assert self.release.wait(timeout=10)
        self.running = False
        self.stops += 1
        self.events.append("stop")
        return self.exit_code

    def crash(self) -> None:
        self.running = False


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _distribution(root: Path) -> TritonDistribution:
    return TritonDistribution(
        binary=root / "bin" / "tritonserver",
        backend_dir=root / "backends",
        library_dirs=(root / "lib",),
        python_bin_dir=root / "python" / "bin",
    )


@dataclass
class Harness:
    fleet: LocalFleet
    clock: Clock
    nodes: list[FakeNode]


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    clock = Clock()
    fleet = LocalFleet(
        repository=tmp_path / "repo",
        triton=_distribution(tmp_path),
        nodes=2,
        policy=POLICY,
        clock=clock,
    )
    assert all(isinstance(m, TritonNode) for m in fleet.members)
    nodes = [FakeNode(name=m.name) for m in fleet.members]
    for state, fake in zip(fleet._states, nodes, strict=True):
        state.node = fake  # type: ignore[assignment]
    fleet.start()
    return Harness(fleet, clock, nodes)


def _restart_after_death(h: Harness, node: FakeNode) -> float:
    """Kill ``node`` and supervise every 0.25 s until it is back; returns the delay."""
    node.crash()
    died_at = h.clock.now
    for _ in range(1000):
        restarted = h.fleet.supervise_once()
        if restarted:
            assert restarted == [node.name]
            return h.clock.now - died_at
        h.clock.advance(0.25)
    raise AssertionError(f"{node.name} never restarted")


def test_fleet_builds_nodes_on_consecutive_ports(tmp_path: Path) -> None:
    fleet = LocalFleet(
        repository=tmp_path / "repo", triton=_distribution(tmp_path), nodes=3, base_port=9000
    )

    assert [m.name for m in fleet.members] == ["node0", "node1", "node2"]
    assert [m.ports for m in fleet.members] == [NodePorts.for_index(i, 9000) for i in range(3)]
    assert all(m.repository == tmp_path / "repo" for m in fleet.members)
    assert all(not m.alive() for m in fleet.members)


def test_start_starts_every_node(harness: Harness) -> None:
    assert [n.starts for n in harness.nodes] == [1, 1]
    assert harness.fleet.supervise_once() == []
    assert harness.fleet.restarts() == {"node0": 0, "node1": 0}


def test_dead_node_restarted_after_backoff(harness: Harness) -> None:
    dead, healthy = harness.nodes
    dead.crash()

    assert harness.fleet.supervise_once() == []
    assert dead.stops == 1
    assert not dead.alive()
    harness.clock.advance(POLICY.initial_s - 0.01)
    assert harness.fleet.supervise_once() == []
    assert dead.starts == 1
    harness.clock.advance(0.01)
    assert harness.fleet.supervise_once() == ["node0"]

    assert dead.alive()
    assert dead.events == ["start", "stop", "start"]
    assert healthy.starts == 1 and healthy.stops == 0
    assert harness.fleet.restarts() == {"node0": 1, "node1": 0}


def test_stop_is_called_once_per_death(harness: Harness) -> None:
    node = harness.nodes[1]
    node.crash()

    for _ in range(5):
        harness.fleet.supervise_once()
        harness.clock.advance(0.1)

    assert node.stops == 1
    assert not node.alive()


def test_backoff_doubles_up_to_max(harness: Harness) -> None:
    node = harness.nodes[0]

    delays = [_restart_after_death(harness, node) for _ in range(6)]

    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert harness.fleet.restarts()["node0"] == 6


def test_backoff_resets_after_stable_run(harness: Harness) -> None:
    node = harness.nodes[0]
    assert [_restart_after_death(harness, node) for _ in range(3)] == [1.0, 2.0, 4.0]

    harness.clock.advance(POLICY.stable_s + 1)
    assert harness.fleet.supervise_once() == []

    assert _restart_after_death(harness, node) == POLICY.initial_s


def test_backoff_kept_when_run_is_shorter_than_stable(harness: Harness) -> None:
    node = harness.nodes[0]
    assert [_restart_after_death(harness, node) for _ in range(2)] == [1.0, 2.0]

    harness.clock.advance(POLICY.stable_s - 1)
    assert harness.fleet.supervise_once() == []

    assert _restart_after_death(harness, node) == 4.0


def test_nodes_back_off_independently(harness: Harness) -> None:
    first, second = harness.nodes
    _restart_after_death(harness, first)
    _restart_after_death(harness, first)

    assert _restart_after_death(harness, second) == POLICY.initial_s


def test_stop_stops_every_node(harness: Harness) -> None:
    harness.fleet.stop()

    assert [n.alive() for n in harness.nodes] == [False, False]
    assert [n.stops for n in harness.nodes] == [1, 1]


@pytest.mark.parametrize(
    ("index", "base", "expected"),
    [
        (0, 8000, (8000, 8001, 8002)),
        (1, 8000, (8010, 8011, 8012)),
        (7, 8000, (8070, 8071, 8072)),
        (2, 9100, (9120, 9121, 9122)),
    ],
)
def test_node_ports_for_index(index: int, base: int, expected: tuple[int, int, int]) -> None:
    ports = NodePorts.for_index(index, base)

    assert (ports.http, ports.grpc, ports.metrics) == expected


def test_node_ports_for_index_default_base() -> None:
    assert NodePorts.for_index(3) == NodePorts(8030, 8031, 8032)
    assert NodePorts.for_index(0) == NodePorts()


def test_node_ports_ephemeral_are_distinct() -> None:
    ports = NodePorts.ephemeral()
    values = (ports.http, ports.grpc, ports.metrics)

    assert len(set(values)) == 3
    assert all(1024 <= p <= 65535 for p in values)


def test_node_command_uses_its_ports(tmp_path: Path) -> None:
    node = TritonNode(
        name="n0",
        repository=tmp_path / "repo",
        triton=_distribution(tmp_path),
        ports=NodePorts(9001, 9002, 9003),
    )

    command = node.command()

    assert command[0] == str(tmp_path / "bin" / "tritonserver")
    assert "--http-port=9001" in command
    assert "--grpc-port=9002" in command
    assert "--metrics-port=9003" in command
    assert f"--model-repository={tmp_path / 'repo'}" in command
    assert node.http_url == "127.0.0.1:9001"
    assert node.metrics_url == "http://127.0.0.1:9003/metrics"


# --- restarts on request (the control API's path) ------------------------------------------


def test_restart_kills_and_starts_the_node_now(harness: Harness) -> None:
    node, other = harness.nodes

    harness.fleet.restart("node0", "canary failed")

    assert node.events == ["start", "stop", "start"] and node.alive()
    assert other.events == ["start"]
    assert harness.fleet.restarts() == {"node0": 1, "node1": 0}
    assert harness.fleet.supervise_once() == []


def test_restart_of_a_dead_node_skips_its_backoff(harness: Harness) -> None:
    node = harness.nodes[0]
    node.crash()
    assert harness.fleet.supervise_once() == []  # dead: back-off starts

    harness.fleet.restart("node0")

    assert node.alive() and node.starts == 2
    harness.clock.advance(POLICY.initial_s)
    assert harness.fleet.supervise_once() == [], "the back-off restart is not made as well"
    assert node.starts == 2
    assert harness.fleet.restarts()["node0"] == 1


def test_sequential_restarts_each_restart(harness: Harness) -> None:
    harness.fleet.restart("node1")
    harness.fleet.restart("node1")

    assert harness.nodes[1].starts == 3
    assert harness.fleet.restarts()["node1"] == 2


def test_restart_of_an_unknown_node_raises(harness: Harness) -> None:
    with pytest.raises(UnknownNodeError, match="node7") as info:
        harness.fleet.restart("node7")

    assert isinstance(info.value, KeyError)
    assert all(n.starts == 1 for n in harness.nodes)


class CountingLock:
    """The fleet's lock, telling the test when a second caller has come to wait on it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.entries = 0
        self.second_caller = threading.Event()

    def __enter__(self) -> CountingLock:
        self.entries += 1
        if self.entries >= 2:
            self.second_caller.set()
        self._lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


def test_a_restart_requested_during_one_does_not_restart_again(harness: Harness) -> None:
    node = harness.nodes[0]
    lock = CountingLock()
    harness.fleet._lock = lock  # type: ignore[assignment]
    node.release = threading.Event()
    first = threading.Thread(target=harness.fleet.restart, args=("node0", "first"))
    second = threading.Thread(target=harness.fleet.restart, args=("node0", "second"))

    first.start()
    assert node.stopping.wait(timeout=10), "the first restart is killing the node"
    second.start()
    assert lock.second_caller.wait(timeout=10), "the second restart waits for the first"
    node.release.set()
    first.join(timeout=10)
    second.join(timeout=10)

    assert not first.is_alive() and not second.is_alive()
    assert node.events == ["start", "stop", "start"]
    assert harness.fleet.restarts()["node0"] == 1


def test_status_reports_every_node(harness: Harness) -> None:
    harness.nodes[1].crash()
    harness.fleet.restart("node0")

    assert harness.fleet.status() == [
        NodeStatus(name="node0", pid=None, alive=True, restarts=1),
        NodeStatus(name="node1", pid=None, alive=False, restarts=0),
    ]


def test_fleet_of_explicit_nodes_keeps_their_names_and_ports(tmp_path: Path) -> None:
    members = [
        TritonNode(
            name=name, repository=tmp_path, triton=_distribution(tmp_path), ports=NodePorts(*p)
        )
        for name, p in (("alpha", (9101, 9102, 9103)), ("beta", (9201, 9202, 9203)))
    ]

    fleet = LocalFleet(members=members)

    assert fleet.members == members
    assert fleet.names() == ["alpha", "beta"]
    assert [s.restarts for s in fleet.status()] == [0, 0]


def test_fleet_refuses_duplicate_names_or_no_nodes(tmp_path: Path) -> None:
    node = TritonNode(name="a", repository=tmp_path, triton=_distribution(tmp_path))
    with pytest.raises(ValueError, match="distinct"):
        LocalFleet(members=[node, node])
    with pytest.raises(ValueError, match="members"):
        LocalFleet()


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[LocalFleet]:
    """A fleet of one real child process: a stand-in ``tritonserver`` that just sleeps."""
    root = tmp_path / "dist"
    binary = root / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexec sleep 300\n")
    binary.chmod(0o755)
    node = TritonNode(name="real", repository=tmp_path, triton=_distribution(root))
    fleet = LocalFleet(members=[node])
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()


def test_restart_kills_a_stopped_process(sleeper: LocalFleet) -> None:
    (node,) = sleeper.members
    assert node.process is not None
    old = node.process
    os.kill(old.pid, signal.SIGSTOP)  # SIGTERM would never be handled now

    sleeper.restart("real", "frozen")

    assert old.returncode == -signal.SIGKILL
    assert node.process is not None and node.process is not old and node.alive()
    (status,) = sleeper.status()
    assert status == NodeStatus(name="real", pid=node.process.pid, alive=True, restarts=1)
