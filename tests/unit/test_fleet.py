"""Unit tests for LocalFleet supervision (fake nodes, injected clock) and NodePorts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mufleet.fleet import LocalFleet, RestartPolicy
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

    def alive(self) -> bool:
        return self.running

    def start(self) -> None:
        self.running = True
        self.starts += 1
        self.events.append("start")

    def stop(self) -> int | None:
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
