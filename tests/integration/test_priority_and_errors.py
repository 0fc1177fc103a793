"""Triton priorities through the ensemble, prefix reuse, and refusals of bad input."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from clients import (
    ENGINE_SLOTS,
    StreamRecorder,
    ensemble_inputs,
    grpc_client,
    http_client,
    http_json,
    metric_value,
)
from tritonclient.utils import InferenceServerException

from mufleet.node import TritonNode
from python_backends.generation import PRIORITY_PARAMETER

pytestmark = pytest.mark.triton

LOW, HIGH = 3, 2
"""Ordinary levels, below the canaries' level 1 (which also gets slots beyond the batch)."""


def _send(client: grpcclient.InferenceServerClient, request_id: str, level: int) -> None:
    """A long request at Triton ``level``, the level also as the request parameter (the
    engine orders its own queue by it: a Python model cannot read Triton's priority)."""
    client.async_stream_infer(
        "ensemble",
        ensemble_inputs(grpcclient, request_id, 96, min_tokens=96),
        request_id=request_id,
        priority=level,
        parameters={PRIORITY_PARAMETER: level},
    )


def _finish_order(node: TritonNode, late_priority: int) -> list[str]:
    """Fill the engine with low-priority work, queue more, then send one late request."""
    client = grpc_client(node.grpc_url)
    recorder = StreamRecorder()
    client.start_stream(callback=recorder.callback)
    # Six waves of long low-priority requests: one running, the rest waiting in the
    # engine's queue when the late request arrives.
    lows = 6 * ENGINE_SLOTS
    try:
        for i in range(lows):
            _send(client, f"low{i}", LOW)
        # Wait (bounded) until requests are queued in the engine.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            waiting = metric_value(
                node.metrics_url,
                "nv_trt_llm_request_metrics",
                model="tensorrt_llm",
                request_type="waiting",
            )
            if waiting >= 2 * ENGINE_SLOTS:
                break
            time.sleep(0.02)
        _send(client, "late", late_priority)
        arrivals = recorder.drain(finals_expected=lows + 1)
    finally:
        client.stop_stream()
    return [rid for rid, _ in arrivals]


def test_high_priority_overtakes_queued_low_priority(triton_node: TritonNode) -> None:
    order = _finish_order(triton_node, late_priority=HIGH)
    overtaken = len(order) - 1 - order.index("late")
    # FIFO would finish it last (0 overtaken, as the control test shows); a batch-mate or
    # two may finish alongside it, so the bound leaves room for them.
    assert overtaken >= ENGINE_SLOTS, order


def test_same_priority_waits_its_turn(triton_node: TritonNode) -> None:
    """The control: at equal priority the late request is served after the queue."""
    order = _finish_order(triton_node, late_priority=LOW)
    overtaken = len(order) - 1 - order.index("late")
    assert overtaken < ENGINE_SLOTS, order


def test_follow_up_turn_reuses_cached_prefix(triton_node: TritonNode) -> None:
    url = f"http://{triton_node.http_url}/v2/models/ensemble/generate"
    first = "Session 42 says: " + "the agent plans, calls a tool, reads the result. " * 8
    status, body = http_json(url, {"text_input": first, "max_tokens": 8})
    assert status == 200, body
    before = metric_value(
        triton_node.metrics_url, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="reused"
    )
    status, body = http_json(url, {"text_input": first + " Next step?", "max_tokens": 8})
    assert status == 200, body
    after = metric_value(
        triton_node.metrics_url, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="reused"
    )
    assert after - before >= 4, "the shared prompt prefix should be served from the cache"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"max_tokens": 8}, 400, "text_input"),
        ({"text_input": "hi", "max_tokens": 0}, 400, "max_tokens must be at least 1"),
        ({"text_input": "hi", "max_tokens": -5}, 400, "max_tokens must be at least 1"),
        ({"text_input": "hi", "max_tokens": 100_000}, 400, "context window"),
        ({"text_input": "word " * 5000, "max_tokens": 8}, 400, "context window"),
        ({"text_input": "", "max_tokens": 8}, 400, "must not be empty"),
    ],
)
def test_bad_generate_requests_are_refused(
    triton_node: TritonNode, body: dict[str, object], status: int, message: str
) -> None:
    url = f"http://{triton_node.http_url}/v2/models/ensemble/generate"
    got_status, got = http_json(url, body)
    assert got_status == status, got
    assert message in got["error"]
    ok_status, ok = http_json(url, {"text_input": "still serving", "max_tokens": 2})
    assert ok_status == 200, ok


def test_unknown_model_is_404(triton_node: TritonNode) -> None:
    status, body = http_json(
        f"http://{triton_node.http_url}/v2/models/no_such_model/generate",
        {"text_input": "hi", "max_tokens": 2},
    )
    assert status == 404, body


def test_wrong_dtype_is_400(unary_node: TritonNode) -> None:
    client = http_client(unary_node.http_url)
    text = httpclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([["hi"]], dtype=object))
    max_tokens = httpclient.InferInput("max_tokens", [1, 1], "FP32")
    max_tokens.set_data_from_numpy(np.array([[4.0]], dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("tensorrt_llm_bls", [text, max_tokens])
    assert err.value.status() == "400"
    assert "INT32" in str(err.value)


def test_streaming_through_a_non_decoupled_model_is_400(unary_node: TritonNode) -> None:
    client = http_client(unary_node.http_url)
    with pytest.raises(InferenceServerException) as err:
        client.infer("tensorrt_llm_bls", ensemble_inputs(httpclient, "hi", 4, stream=True))
    assert err.value.status() == "400"
    assert "decoupled" in str(err.value)


def test_unary_http_infer_on_a_decoupled_model_is_refused(triton_node: TritonNode) -> None:
    """Decoupled (the default) streams; Triton refuses unary HTTP infer there."""
    client = http_client(triton_node.http_url)
    with pytest.raises(InferenceServerException, match="decoupled"):
        client.infer("tensorrt_llm_bls", ensemble_inputs(httpclient, "hi", 4))
