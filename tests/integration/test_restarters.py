"""The restarters against a real sim node supervised by a real LocalFleet: a model reload
brings back a crashed engine; a frozen process needs the supervisor's control API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import sim_params

from mufleet.fleet import LocalFleet
from mufleet.node import NodePorts, TritonNode
from mufleet.repository import render
from mufleet.supervisor_api import SupervisorServer, write_token
from mufleet.triton_dist import locate
from python_backends.sim_engine.faults import FaultSwitches, write_faults
from router.fleet.node_config import NodeConfig
from router.health.restarters.model_reload import ModelReloadConfig, ModelReloadRestarter
from router.health.restarters.supervisor import SupervisorConfig, SupervisorRestarter

pytestmark = pytest.mark.triton

NAME = "restarters-sim"


@pytest.fixture(scope="module")
def fleet(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[LocalFleet]:
    """One sim node on ephemeral ports, supervised by a LocalFleet."""
    node = TritonNode(
        name=NAME,
        repository=render(
            sim_params(tiny_model_dir, max_batch_size=4), mufleet_home / f"repo-{NAME}"
        ),
        triton=locate(),
        ports=NodePorts.ephemeral(),
        log_path=mufleet_home / "logs" / f"{NAME}.log",
    )
    fleet = LocalFleet(members=[node])
    fleet.start()
    try:
        node.wait_ready(timeout=240)
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def control(
    fleet: LocalFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SupervisorConfig]:
    """The fleet's control API on an ephemeral port, and the restarter config that reaches it."""
    token_file = tmp_path_factory.mktemp("supervisor") / "supervisor.token"
    server = SupervisorServer(fleet, write_token(token_file), port=0)
    server.start()
    try:
        yield SupervisorConfig(url=server.url, token_file=token_file, timeout_s=30)
    finally:
        server.stop()


@pytest.fixture
def node(fleet: LocalFleet) -> Iterator[TritonNode]:
    """The node, ready, with its faults cleared again afterwards."""
    (member,) = fleet.members
    member.wait_ready(timeout=240)
    yield member
    assert member.fault_file is not None
    write_faults(member.fault_file, FaultSwitches())


def _config(node: TritonNode) -> NodeConfig:
    return NodeConfig(
        name=node.name,
        grpc_url=node.grpc_url,
        http_url=f"http://{node.http_url}",
        metrics_url=node.metrics_url,
        pair="test",
    )


def _generate(node: TritonNode, timeout: float = 60) -> tuple[int, str]:
    """``(status, body)`` of one generate call; status 0 when no answer came in time."""
    request = urllib.request.Request(
        f"http://{node.http_url}/v2/models/ensemble/generate",
        data=json.dumps({"text_input": "restart me", "max_tokens": 4}).encode(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (TimeoutError, urllib.error.URLError) as exc:
        return 0, repr(exc)


def test_model_reload_brings_back_a_crashed_engine(node: TritonNode) -> None:
    assert node.fault_file is not None
    write_faults(node.fault_file, FaultSwitches(crash=True))
    time.sleep(0.2)  # the engine polls its control file every 50 ms
    # The request that meets the crash is never answered by Triton; the ones after it
    # fail at once, until the model is reloaded.
    status, body = _generate(node, timeout=5)
    assert status != 200, body
    write_faults(node.fault_file, FaultSwitches())
    time.sleep(0.2)
    deadline = time.monotonic() + 30
    status, body = _generate(node, timeout=5)
    while "not healthy" not in body and time.monotonic() < deadline:
        time.sleep(0.5)
        status, body = _generate(node, timeout=5)
    assert status >= 400 and "not healthy" in body, "the dead stub stays dead until reloaded"

    result = asyncio.run(
        ModelReloadRestarter(ModelReloadConfig(timeout_s=60)).restart(_config(node))
    )

    assert result.ok, result
    status, body = _generate(node)
    assert status == 200, body


def test_a_frozen_process_needs_the_supervisor(
    fleet: LocalFleet, node: TritonNode, control: SupervisorConfig
) -> None:
    assert _generate(node)[0] == 200
    frozen = node.process
    assert frozen is not None
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        reload = ModelReloadRestarter(ModelReloadConfig(timeout_s=10, call_timeout_s=2))
        reloaded = asyncio.run(reload.restart(_config(node)))
        assert not reloaded.ok
        assert "/v2/health/live" in reloaded.detail and "frozen" in reloaded.detail

        result = asyncio.run(SupervisorRestarter(control).restart(_config(node)))
    finally:
        if frozen.poll() is None:  # still ours and alive: let it run again
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen.pid, signal.SIGCONT)

    assert result.ok, result
    assert frozen.returncode == -signal.SIGKILL
    assert node.process is not None and node.process.pid != frozen.pid
    assert fleet.restarts() == {NAME: 1}
    node.wait_ready(timeout=240)
    status, body = _generate(node)
    assert status == 200, body
