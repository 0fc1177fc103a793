"""Each fault switch of the sim engine, driven on a real tritonserver, seen from a client."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from clients import ensemble_inputs, grpc_client, http_json
from nodes import serving, sim_params

from mufleet.node import TritonNode
from python_backends.sim_engine.faults import FaultSwitches, write_faults

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def sim_node(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[TritonNode]:
    with serving("sim-faults", sim_params(tiny_model_dir, max_batch_size=8), mufleet_home) as node:
        yield node


@pytest.fixture
def faults(sim_node: TritonNode) -> Iterator[Path]:
    """The node's control file, cleared again after each test."""
    assert sim_node.fault_file is not None
    yield sim_node.fault_file
    write_faults(sim_node.fault_file, FaultSwitches())
    time.sleep(0.2)


def _set(path: Path, **switches: object) -> None:
    write_faults(path, FaultSwitches.model_validate(switches))
    time.sleep(0.2)  # the engine polls the file every 50 ms


def _generate(node: TritonNode, max_tokens: int = 8) -> tuple[int, dict[str, object]]:
    status, body = http_json(
        f"http://{node.http_url}/v2/models/ensemble/generate",
        {"text_input": "canary says hello", "max_tokens": max_tokens},
    )
    assert isinstance(body, dict)
    return status, body


def _restart_engine(node: TritonNode) -> None:
    """Unload, then load ``tensorrt_llm``: a new stub. (A bare load of an unchanged model
    is a no-op in Triton, which would leave a dead stub in place.)"""
    base = f"http://{node.http_url}/v2/repository/models/tensorrt_llm"
    assert http_json(f"{base}/unload", b"{}")[0] == 200
    assert http_json(f"{base}/load", b"{}")[0] == 200


def _ready(node: TritonNode) -> bool:
    return all(
        http_json(f"http://{node.http_url}/v2{path}")[0] == 200
        for path in ("/health/live", "/health/ready", "/models/ensemble/ready")
    )


def test_healthy_sim_node_generates(sim_node: TritonNode, faults: Path) -> None:
    status, body = _generate(sim_node)
    assert status == 200, body
    assert body["sequence_length"] == 8 and body["text_output"]


def test_hang_stops_tokens_while_ready_stays_200(sim_node: TritonNode, faults: Path) -> None:
    _set(faults, hang=True)
    client = grpc_client(sim_node.grpc_url)
    arrivals: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: arrivals.put((result, error)))
    try:
        client.async_stream_infer(
            "ensemble", ensemble_inputs(grpcclient, "are you there", 4, stream=True)
        )
        with pytest.raises(queue.Empty):
            arrivals.get(timeout=2.0)  # no token while hung
        assert _ready(sim_node), "a hung engine must still look ready"
        _set(faults)  # un-hang: the same request now completes
        result, error = arrivals.get(timeout=30)
        assert error is None
        assert result is not None
    finally:
        client.stop_stream()


def test_a_hang_until_restart_is_cured_by_reloading_the_model(
    sim_node: TritonNode, faults: Path
) -> None:
    """A wedge that a restart clears: the file stays, the reloaded engine ignores it."""
    _set(faults, hang=True, until_restart=True)
    client = grpc_client(sim_node.grpc_url)
    arrivals: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: arrivals.put((result, error)))
    try:
        client.async_stream_infer(
            "ensemble", ensemble_inputs(grpcclient, "are you there", 4, stream=True)
        )
        with pytest.raises(queue.Empty):
            arrivals.get(timeout=2.0)  # no token while hung

        _restart_engine(sim_node)

        status, body = _generate(sim_node)
        assert status == 200, body
        assert body["sequence_length"] == 8
        still = FaultSwitches.model_validate_json(faults.read_text())
        assert still.hang and still.until_restart  # cured without touching the file
    finally:
        # The request the wedged engine holds never ends by itself: Triton keeps that
        # engine's stub until it does, while the reloaded model serves.
        client.stop_stream(cancel_requests=True)


def test_slowdown_stretches_latency(sim_node: TritonNode, faults: Path) -> None:
    def timed() -> float:
        start = time.perf_counter()
        status, body = _generate(sim_node, max_tokens=32)
        assert status == 200, body
        return time.perf_counter() - start

    baseline = min(timed() for _ in range(3))
    _set(faults, slowdown=20.0)
    slowed = timed()
    # 32 iterations at 20x the emulated ~5 ms: the slowdown dwarfs host overhead.
    assert slowed > 5 * baseline, (baseline, slowed)


def test_error_rate_fails_requests(sim_node: TritonNode, faults: Path) -> None:
    _set(faults, error_rate=1.0)
    status, body = _generate(sim_node)
    assert status >= 400 and "injected fault" in str(body["error"])
    _set(faults)
    assert _generate(sim_node)[0] == 200


def test_garbage_returns_invalid_tokens(sim_node: TritonNode, faults: Path) -> None:
    _set(faults, garbage=True)
    status, body = _generate(sim_node, max_tokens=4)
    assert status == 200, body
    ids = body["output_ids"]
    assert isinstance(ids, list) and all(t >= 2048 for t in ids)  # beyond the vocabulary
    assert body["sequence_length"] != len(ids)
    assert "\ufffd" in str(body["text_output"])


def test_crash_kills_the_engine_until_reloaded(sim_node: TritonNode, faults: Path) -> None:
    """The stub exits without a word: what it held goes silent (as with a hang, the
    router's deadlines catch it), later requests fail at once, and a reload serves again."""
    _set(faults, crash=True)
    client = grpc_client(sim_node.grpc_url)
    arrivals: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: arrivals.put((result, error)))
    try:
        client.async_stream_infer(
            "ensemble", ensemble_inputs(grpcclient, "are you there", 4, stream=True)
        )
        with pytest.raises(queue.Empty):
            arrivals.get(timeout=2.0)  # the engine took it, then its process died
        status, body = _generate(sim_node)
        assert status >= 400 and "not healthy" in str(body["error"]), body
        assert _ready(sim_node), "Triton keeps reporting ready after the stub died"
        _set(faults)
        _restart_engine(sim_node)
        assert _generate(sim_node)[0] == 200
    finally:
        client.stop_stream(cancel_requests=True)


def test_an_iteration_that_raises_fails_its_requests_only(
    sim_node: TritonNode, faults: Path
) -> None:
    """An engine bug in one iteration fails what it ran; the next request is served."""
    _set(faults, iteration_errors=1)
    status, body = _generate(sim_node)
    assert status >= 400 and "engine iteration failed" in str(body["error"]), body
    assert _generate(sim_node)[0] == 200
    assert _ready(sim_node)


def test_an_engine_that_keeps_failing_exits_its_stub(sim_node: TritonNode, faults: Path) -> None:
    """Iterations failing in a row kill the engine: a clear error, then the stub exits,
    so requests fail fast (never hang) until the model is reloaded."""
    _set(faults, iteration_errors=10)
    errors = [str(_generate(sim_node)[1].get("error")) for _ in range(4)]
    assert any("engine is dead" in e or "iteration failed" in e for e in errors), errors
    deadline = time.monotonic() + 30
    status, body = _generate(sim_node)
    while "not healthy" not in str(body.get("error")) and time.monotonic() < deadline:
        time.sleep(0.5)
        status, body = _generate(sim_node)
    assert status >= 400 and "not healthy" in str(body["error"]), body
    _set(faults)
    _restart_engine(sim_node)
    status, body = _generate(sim_node)
    assert status == 200, body
