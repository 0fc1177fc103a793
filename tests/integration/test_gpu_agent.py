"""The GPU agent as a process: real HTTP, real Prometheus text, faults through gpu-fault.

Starts ``python -m mufleet.gpu.agent gpu-agent`` on an ephemeral port over a simulated
state file, raises XID 79 with the ``gpu-fault`` command, sees the node drain (and stay
drained: the XID is latched), clears it and sees it recover, then stops it with SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mufleet.gpu.cli import add_commands

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 15.0


class Agent:
    def __init__(self, process: subprocess.Popen[str], url: str, ready_line: str) -> None:
        self.process = process
        self.url = url
        self.ready_line = ready_line

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
            assert response.status == 200
            body: dict[str, Any] = json.loads(response.read())
            return body

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def _first_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The first stdout line, or a failure after ``timeout_s`` (the read runs in a thread)."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        pytest.fail(f"the agent printed nothing within {timeout_s} s")


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "gpu" / "itest.json"


@pytest.fixture
def agent(state_file: Path, tmp_path: Path) -> Iterator[Agent]:
    stderr = open(tmp_path / "agent.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mufleet.gpu.agent",
            "gpu-agent",
            "--node",
            "itest",
            "--port",
            "0",
            "--interval",
            "0.1",
            "--simulated",
            str(state_file),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    try:
        line = _first_line(process, WAIT_S).strip()
        assert line.startswith("gpu-agent ready: http://127.0.0.1:"), line
        url = line.split()[2]
        yield Agent(process, url, line)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=WAIT_S)
        stderr.close()


def gpu_fault(*argv: str) -> None:
    """Run the ``gpu-fault`` command as the main command line would."""
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["gpu-fault", *argv])
    assert args.func(args) == 0


def wait_for(agent: Agent, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    health = agent.health()
    while not predicate(health):
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {WAIT_S} s; last /health: {health}")
        time.sleep(0.05)
        health = agent.health()
    return health


def test_xid_79_drains_until_cleared(agent: Agent, state_file: Path) -> None:
    assert f"(simulated {state_file})" in agent.ready_line
    before = agent.health()
    metrics = agent.metrics()
    assert (before["node"], before["status"], before["capacity_factor"]) == (
        "itest",
        "healthy",
        1.0,
    )
    assert metrics[("mufleet_gpu_health_status", (("status", "healthy"),))] == 1.0
    assert metrics[("mufleet_gpu_temperature_celsius", (("gpu", "0"),))] > 0

    gpu_fault("itest", "--file", str(state_file), "--xid", "79")
    drained = wait_for(agent, lambda h: h["status"] == "drain")
    # Several polls later the XID, seen once, is still latched.
    latched = wait_for(agent, lambda h: h["at"] >= drained["at"] + 0.3)
    metrics = agent.metrics()

    assert drained["capacity_factor"] == 0.0
    assert any("XID 79" in r for r in drained["reasons"])
    assert latched["status"] == "drain"
    assert latched["gpus"][0]["latched_xids"] == [79]
    assert metrics[("mufleet_gpu_health_status", (("status", "drain"),))] == 1.0
    assert metrics[("mufleet_gpu_health_status", (("status", "healthy"),))] == 0.0
    assert metrics[("mufleet_gpu_xid_events_total", (("gpu", "0"), ("xid", "79")))] == 1.0
    assert metrics[("mufleet_gpu_xid_latched", (("gpu", "0"), ("xid", "79")))] == 1.0
    assert metrics[("mufleet_gpu_capacity_factor", ())] == 0.0

    gpu_fault("itest", "--file", str(state_file), "--clear")
    recovered = wait_for(agent, lambda h: h["status"] == "healthy")
    metrics = agent.metrics()

    assert recovered["capacity_factor"] == 1.0 and recovered["reasons"] == []
    assert metrics[("mufleet_gpu_health_status", (("status", "healthy"),))] == 1.0
    assert ("mufleet_gpu_xid_latched", (("gpu", "0"), ("xid", "79"))) not in metrics
    # The event stays counted: the counter is history, the verdict is the present.
    assert metrics[("mufleet_gpu_xid_events_total", (("gpu", "0"), ("xid", "79")))] == 1.0


def test_throttle_degrades_then_sigterm_stops_cleanly(agent: Agent, state_file: Path) -> None:
    gpu_fault("itest", "--file", str(state_file), "--throttle", "hw_slowdown")
    degraded = wait_for(agent, lambda h: h["status"] == "degraded")

    assert degraded["capacity_factor"] == pytest.approx(0.5)
    assert agent.metrics()[("mufleet_gpu_capacity_factor", ())] == pytest.approx(0.5)

    agent.process.send_signal(signal.SIGTERM)
    assert agent.process.wait(timeout=WAIT_S) == 0
