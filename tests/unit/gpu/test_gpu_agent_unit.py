"""Unit tests for mufleet.gpu.agent in-process: /health, /metrics, failures, staleness, stop."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mufleet.gpu.agent import GpuAgent
from mufleet.gpu.simulated import GpuFault, SimulatedTelemetry, edit_state
from mufleet.gpu.telemetry import GpuSample, XidEvent


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class BrokenTelemetry:
    """Fails every read, as a wedged driver or an unreadable state file would."""

    def __init__(self) -> None:
        self.closed = 0

    def sample(self) -> list[GpuSample]:
        raise RuntimeError("driver went away")

    def xid_events(self) -> list[XidEvent]:
        return []

    def close(self) -> None:
        self.closed += 1


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "gpu" / "n1.json"


@pytest.fixture
def served(state: Path) -> Iterator[GpuAgent]:
    agent = GpuAgent(SimulatedTelemetry(state, default_gpus=2), "n1", port=0, interval_s=60.0)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def test_health_over_http(served: GpuAgent) -> None:
    status, body = get(f"{served.url}/health")
    health = json.loads(body)

    assert status == 200
    assert set(health) == {"node", "status", "capacity_factor", "reasons", "at", "source", "gpus"}
    assert (health["node"], health["status"], health["capacity_factor"]) == ("n1", "healthy", 1.0)
    assert [g["index"] for g in health["gpus"]] == [0, 1]
    gpu = health["gpus"][0]
    assert gpu["status"] == "healthy" and gpu["latched_xids"] == []
    assert gpu["clock_event_reasons"] == [] and gpu["temperature_c"] > 0


def test_metrics_over_http(served: GpuAgent) -> None:
    status, body = get(f"{served.url}/metrics")
    values = metric_values(body.decode())

    assert status == 200
    assert values[("mufleet_gpu_temperature_celsius", (("gpu", "1"),))] > 0
    assert values[("mufleet_gpu_power_limit_watts", (("gpu", "0"),))] == 700.0
    assert values[("mufleet_gpu_health_status", (("status", "healthy"),))] == 1.0
    assert values[("mufleet_gpu_health_status", (("status", "drain"),))] == 0.0
    assert values[("mufleet_gpu_capacity_factor", ())] == 1.0
    reason = ("mufleet_gpu_clock_event_active", (("gpu", "0"), ("reason", "hw_slowdown")))
    assert values[reason] == 0.0
    ecc = ("mufleet_gpu_ecc_errors", (("gpu", "0"), ("type", "uncorrected")))
    assert values[ecc] == 0.0


def test_unknown_path_is_404(served: GpuAgent) -> None:
    assert get(f"{served.url}/v2/health/ready")[0] == 404


def test_faults_show_in_health_and_metrics(state: Path) -> None:
    agent = GpuAgent(SimulatedTelemetry(state), "n1", interval_s=60.0)
    edit_state(state, GpuFault(throttle="hw_slowdown", pcie_replays=20))
    agent.poll_once()
    edit_state(state, GpuFault(xid=79))
    agent.poll_once()

    health = agent.health()
    values = metric_values(agent.metrics_text().decode())

    assert health["status"] == "drain" and health["capacity_factor"] == 0.0
    assert health["gpus"][0]["latched_xids"] == [79]
    assert values[("mufleet_gpu_xid_events_total", (("gpu", "0"), ("xid", "79")))] == 1.0
    assert values[("mufleet_gpu_xid_latched", (("gpu", "0"), ("xid", "79")))] == 1.0
    reason = ("mufleet_gpu_clock_event_active", (("gpu", "0"), ("reason", "hw_slowdown")))
    assert values[reason] == 1.0
    assert values[("mufleet_gpu_pcie_replays_total", (("gpu", "0"),))] == 20.0
    assert values[("mufleet_gpu_health_status", (("status", "drain"),))] == 1.0


def test_telemetry_failure_is_a_warning_not_a_crash() -> None:
    telemetry = BrokenTelemetry()
    agent = GpuAgent(telemetry, "n1", port=0, interval_s=60.0).start()
    try:
        status, body = get(f"{agent.url}/health")
        values = metric_values(get(f"{agent.url}/metrics")[1].decode())
    finally:
        agent.stop()
    health = json.loads(body)

    assert status == 200
    assert health["status"] == "warn"
    assert any("driver went away" in r for r in health["reasons"])
    assert values[("mufleet_gpu_telemetry_errors_total", ())] == 1.0
    assert values[("mufleet_gpu_health_status", (("status", "warn"),))] == 1.0
    assert telemetry.closed == 1


def test_a_stale_poll_turns_the_verdict_to_warn(state: Path) -> None:
    clock = FakeClock()
    agent = GpuAgent(SimulatedTelemetry(state), "n1", interval_s=1.0, clock=clock)
    agent.poll_once()

    clock.now += 10.0
    fresh = agent.health()
    clock.now += 5.0
    stale = agent.health()

    assert fresh["status"] == "healthy"
    assert stale["status"] == "warn"
    assert stale["reasons"][0].startswith("telemetry stale: last poll 15 s ago")


def test_stop_closes_the_port_and_is_idempotent(state: Path) -> None:
    agent = GpuAgent(SimulatedTelemetry(state), "n1", port=0, interval_s=60.0).start()
    url = agent.url

    agent.stop()
    agent.stop()

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/health", timeout=2)


def test_agent_refuses_a_non_positive_interval(state: Path) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        GpuAgent(SimulatedTelemetry(state), "n1", interval_s=0.0)


def test_health_before_any_poll_is_an_error(state: Path) -> None:
    with pytest.raises(RuntimeError, match="not polled"):
        GpuAgent(SimulatedTelemetry(state), "n1").health()
