"""Fault injection on a real supervised fleet (4 sim-engine tritonservers, the router in
front, steady client load): each fault is found, its node taken out, restarted or drained,
and brought back, with no request lost that had not streamed.

Detection times are read from the router's own transition history (``at`` is the
machine-wide monotonic clock, the same one the test stamps the fault with).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from healing import OUT_STATES, Fleet, SteadyLoad, failures, supervised_fleet
from routed import KEYS, MODEL

from mufleet.gpu.simulated import GpuFault, edit_state

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def fleet(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[Fleet]:
    with supervised_fleet(tiny_model_dir, mufleet_home, "heal", nodes=4, gpu_agents=1) as f:
        yield f


@pytest.fixture
def load(fleet: Fleet) -> Iterator[SteadyLoad]:
    fleet.wait_all_healthy()
    steady = SteadyLoad(fleet.router).start()
    time.sleep(1.0)
    yield steady
    steady.stop()
    fleet.clear_faults()
    fleet.wait_all_healthy()


def detected_after(fleet: Fleet, node: str, since: float, timeout: float = 30.0) -> float:
    """Seconds from ``since`` until ``node`` was first taken out (from its history)."""
    fleet.wait_state(node, OUT_STATES, timeout)
    for t in fleet.history(node):
        if t["at"] >= since and t["to"] in OUT_STATES:
            return float(t["at"] - since)
    raise AssertionError(fleet.history(node))


def test_a_model_hung_in_execute_is_cordoned_restarted_and_back(
    fleet: Fleet, load: SteadyLoad
) -> None:
    since = time.monotonic()
    fleet.fault("heal0", hang=True, until_restart=True)
    detection = detected_after(fleet, "heal0", since)
    assert detection <= 3.0, fleet.history("heal0")
    fleet.wait_state("heal0", ("healthy",), 180)
    reached = [t["to"] for t in fleet.history("heal0") if t["at"] >= since]
    assert "restarting" in reached and "probation" in reached, reached
    assert failures(load.stop()) == []


def test_a_frozen_process_is_cordoned_and_restarted(fleet: Fleet, load: SteadyLoad) -> None:
    node = fleet.node("heal1")
    assert node.process is not None
    since = time.monotonic()
    os.kill(node.process.pid, signal.SIGSTOP)
    detection = detected_after(fleet, "heal1", since)
    assert detection <= 3.0, fleet.history("heal1")
    fleet.wait_state("heal1", ("healthy",), 240)
    assert fleet.local.restarts()["heal1"] >= 1
    assert failures(load.stop()) == []


def test_a_killed_process_is_cordoned_and_restarted_by_the_supervisor(
    fleet: Fleet, load: SteadyLoad
) -> None:
    node = fleet.node("heal2")
    assert node.process is not None
    before = fleet.local.restarts()["heal2"]
    since = time.monotonic()
    os.kill(node.process.pid, signal.SIGKILL)
    detection = detected_after(fleet, "heal2", since)
    assert detection <= 1.0, fleet.history("heal2")
    fleet.wait_state("heal2", ("healthy",), 240)
    assert fleet.local.restarts()["heal2"] > before
    assert failures(load.stop()) == []


def test_a_node_returning_errors_is_taken_out_without_losing_requests(
    fleet: Fleet, load: SteadyLoad
) -> None:
    fleet.fault("heal3", error_rate=1.0, until_restart=True)
    fleet.wait_state("heal3", OUT_STATES, 30)
    fleet.wait_state("heal3", ("healthy",), 180)
    assert failures(load.stop()) == []


def test_a_node_returning_garbage_is_taken_out(fleet: Fleet, load: SteadyLoad) -> None:
    fleet.fault("heal1", garbage=True, until_restart=True)
    fleet.wait_state("heal1", OUT_STATES, 30)
    reasons = " ".join(t["reason"] for t in fleet.history("heal1"))
    assert "garbage" in reasons
    assert failures(load.stop()) == []
    # The router caught the garbage itself: token ids outside the vocabulary are a node
    # fault before the client sees them.
    page = httpx.get(fleet.router.url("/metrics"), timeout=5).text
    caught = [
        line
        for line in page.splitlines()
        if line.startswith("mufleet_router_node_errors_total")
        and 'node="heal1"' in line
        and 'fault="garbage"' in line
    ]
    assert caught and float(caught[0].split()[-1]) >= 1, caught


def _share(results: list[dict[str, Any]], node: str) -> float:
    done = [r for r in results if r.get("ok")]
    return sum(1 for r in done if r.get("node") == node) / max(len(done), 1)


def test_a_slowed_node_gets_less_traffic_and_a_fleet_wide_slowdown_ejects_nobody(
    fleet: Fleet,
) -> None:
    fleet.wait_all_healthy()
    steady = SteadyLoad(fleet.router, workers=4).start()
    time.sleep(8.0)
    before = _share(steady.stop(), "heal0")
    fleet.fault("heal0", slowdown=5.0)
    time.sleep(1.0)
    steady = SteadyLoad(fleet.router, workers=4).start()
    time.sleep(12.0)
    slowed = steady.stop()
    assert failures(slowed) == []
    assert _share(slowed, "heal0") < before, (before, _share(slowed, "heal0"))
    assert fleet.states()["heal0"] not in OUT_STATES  # slower, not ejected
    for node in fleet.nodes:
        fleet.fault(node.name, slowdown=5.0)
    steady = SteadyLoad(fleet.router, workers=4).start()
    deadline = time.monotonic() + 12.0
    while time.monotonic() < deadline:
        assert not any(s in OUT_STATES for s in fleet.states().values()), fleet.admin()
        time.sleep(0.25)
    assert failures(steady.stop()) == []
    fleet.clear_faults()


def _stream(fleet: Fleet, prompt: str, max_tokens: int, on_chunk: Any = None) -> tuple[str, str]:
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
    }
    headers = {"Authorization": f"Bearer {KEYS['demo']}"}
    text, chunks = "", 0
    with (
        httpx.Client(timeout=120) as client,
        client.stream(
            "POST", fleet.router.url("/v1/completions"), json=body, headers=headers
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        node = response.headers["x-mufleet-node"]
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            import json

            event = json.loads(line[6:])
            assert "error" not in event, event
            text += event["choices"][0].get("text", "")
            chunks += 1
            if on_chunk is not None:
                on_chunk(node, chunks)
    return node, text


def test_a_stream_whose_node_dies_mid_way_completes_with_the_same_text(fleet: Fleet) -> None:
    fleet.wait_all_healthy()
    prompt = "tell a long story about routers"
    _, unbroken = _stream(fleet, prompt, 160)
    killed: list[str] = []

    def kill_after_some(node: str, chunks: int) -> None:
        if chunks == 20 and not killed:
            process = fleet.node(node).process
            assert process is not None
            os.kill(process.pid, signal.SIGKILL)
            killed.append(node)

    _, migrated = _stream(fleet, prompt, 160, kill_after_some)
    assert killed
    assert migrated == unbroken
    fleet.wait_all_healthy()


def test_a_fatal_gpu_xid_drains_the_node_before_any_request_fails(
    fleet: Fleet, load: SteadyLoad
) -> None:
    state = fleet.gpu_files["heal0"]
    since = time.monotonic()
    edit_state(state, GpuFault(xid=79))
    detection = detected_after(fleet, "heal0", since)
    assert detection <= 3.0
    assert fleet.states()["heal0"] == "cordoned"
    assert "79" in fleet.history("heal0")[-1]["reason"]
    time.sleep(2.0)
    assert fleet.states()["heal0"] == "cordoned"  # no restart fixes a GPU off the bus
    assert failures(load.stop()) == []
    edit_state(state, GpuFault(clear=True))
    fleet.wait_state("heal0", ("healthy",), 120)


def test_two_of_four_failing_at_once_cause_no_cascade(fleet: Fleet, load: SteadyLoad) -> None:
    fleet.fault("heal1", hang=True, until_restart=True)
    fleet.fault("heal2", hang=True, until_restart=True)
    fleet.wait_state("heal1", OUT_STATES, 30)
    fleet.wait_state("heal2", OUT_STATES, 30)
    time.sleep(2.0)
    states = fleet.states()
    assert states["heal0"] not in OUT_STATES and states["heal3"] not in OUT_STATES, states
    assert sum(s in OUT_STATES for s in states.values()) <= 2
    fleet.wait_all_healthy()
    assert failures(load.stop()) == []
