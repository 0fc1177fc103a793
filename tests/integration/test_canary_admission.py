"""A top-priority request (the router's canary) is admitted ahead of a full batch.

A sim node's every engine slot runs a long stream and more long streams wait in the
engine's queue; a short stream sent through the ``ensemble`` at Triton level 1, with the
``priority_level`` request parameter the router adds, gets its first token while every long
stream still runs and before any queued one starts. The control, the same short stream at
an ordinary level, waits its turn behind the queue. Orderings of the responses on one gRPC
stream, never their timing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from clients import StreamRecorder, ensemble_inputs, grpc_client, metric_value
from nodes import serving, sim_params

from mufleet.node import TritonNode
from python_backends.engine_loop import TOP_PRIORITY_LEVEL
from python_backends.generation import PRIORITY_PARAMETER

pytestmark = pytest.mark.triton

SLOTS = 4
"""Engine slots of the node (``max_batch_size``)."""
QUEUED = 2
"""Long streams waiting in the engine's queue behind the running ones."""
LONG_TOKENS = 400
ORDINARY_LEVEL = 3


@pytest.fixture(scope="module")
def sim_node(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[TritonNode]:
    # Slowed down four times, so the long streams outlast the test's requests by far; one
    # postprocessing instance, so responses leave the ensemble in the order they are made.
    params = sim_params(
        tiny_model_dir, max_batch_size=SLOTS, time_scale=4.0, postprocessing_instance_count=1
    )
    with serving("canary", params, mufleet_home) as node:
        yield node


def _engine_gauge(node: TritonNode, request_type: str) -> float:
    return metric_value(
        node.metrics_url,
        "nv_trt_llm_request_metrics",
        model="tensorrt_llm",
        request_type=request_type,
    )


def _send(
    client: grpcclient.InferenceServerClient, request_id: str, tokens: int, level: int
) -> None:
    """A streaming ensemble request at Triton ``level``, the level also as the request
    parameter (as the router sends it: a Python engine cannot read Triton's priority)."""
    client.async_stream_infer(
        "ensemble",
        ensemble_inputs(grpcclient, f"{request_id} writes", tokens, min_tokens=tokens, stream=True),
        request_id=request_id,
        priority=level,
        parameters={PRIORITY_PARAMETER: level},
    )


def _arrivals(node: TritonNode, probe_level: int) -> list[tuple[str, bool]]:
    """Fill every slot with a long stream, queue more, then send a short probe at
    ``probe_level``; ``(request id, is final)`` of every response, in arrival order."""
    client = grpc_client(node.grpc_url)
    recorder = StreamRecorder()
    client.start_stream(callback=recorder.callback)
    try:
        for i in range(SLOTS + QUEUED):
            _send(client, f"long{i}", LONG_TOKENS, ORDINARY_LEVEL)
        deadline = time.monotonic() + 60  # until the engine runs a full batch and queues
        while time.monotonic() < deadline:
            if _engine_gauge(node, "active") >= SLOTS and _engine_gauge(node, "waiting") >= QUEUED:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the engine never held a full batch and a queue")
        _send(client, "probe", 4, probe_level)
        events = _drain(recorder, finals_expected=SLOTS + QUEUED + 1)
    finally:
        client.stop_stream()
    return events


def _drain(recorder: StreamRecorder, finals_expected: int) -> list[tuple[str, bool]]:
    """``(request id, is final)`` per response until that many final responses came."""
    events: list[tuple[str, bool]] = []
    while sum(final for _, final in events) < finals_expected:
        result, error = recorder.events.get(timeout=180)
        assert error is None, f"stream error: {error}"
        response = result.get_response(as_json=True)
        final = response.get("parameters", {}).get("triton_final_response", {})
        events.append((response["id"], bool(final.get("bool_param"))))
    return events


def _first(events: list[tuple[str, bool]], request_id: str) -> int:
    return next(i for i, (rid, _) in enumerate(events) if rid == request_id)


def _final(events: list[tuple[str, bool]], request_id: str) -> int:
    return next(i for i, (rid, final) in enumerate(events) if rid == request_id and final)


def test_a_top_priority_stream_starts_ahead_of_a_full_batch(sim_node: TritonNode) -> None:
    events = _arrivals(sim_node, TOP_PRIORITY_LEVEL)

    probe = _first(events, "probe")
    # Which long streams won the slots depends on the order they reached the engine, so
    # the claim is about counts: no more than SLOTS of them started before the probe (none
    # of the queued ones), and none of those had finished.
    started = {rid for rid, _ in events[:probe] if rid.startswith("long")}
    assert len(started) <= SLOTS, events[: probe + 1]
    assert all(probe < _final(events, rid) for rid in started), events[: probe + 1]
    longs = [f"long{i}" for i in range(SLOTS + QUEUED)]
    assert _final(events, "probe") < min(_final(events, rid) for rid in longs)


def test_an_ordinary_stream_waits_behind_the_queue(sim_node: TritonNode) -> None:
    """The control: at the long streams' level the same probe is served in its turn."""
    events = _arrivals(sim_node, ORDINARY_LEVEL)

    probe = _first(events, "probe")
    # Which long streams won the slots depends on the order they reached the engine, so
    # the batches are told apart by when each stream started.
    started: list[str] = []
    for rid, _ in events:
        if rid.startswith("long") and rid not in started:
            started.append(rid)
    assert len(started) == SLOTS + QUEUED, events
    assert all(_first(events, rid) < probe for rid in started), events  # queued ones too
    assert all(_final(events, rid) < probe for rid in started[:SLOTS]), events
