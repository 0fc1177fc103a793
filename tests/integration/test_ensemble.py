"""The ensemble on a real tritonserver: text in, text out, over every front door."""

from __future__ import annotations

import time

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from clients import (
    StreamRecorder,
    ensemble_inputs,
    grpc_client,
    http_client,
    http_json,
    metric_value,
    sse_events,
)

from mufleet.node import TritonNode

pytestmark = pytest.mark.triton


def test_health_endpoints(triton_node: TritonNode) -> None:
    base = f"http://{triton_node.http_url}/v2"
    for path in ("/health/live", "/health/ready", "/models/ensemble/ready"):
        status, _ = http_json(base + path)
        assert status == 200, path


def test_generate_returns_text(triton_node: TritonNode) -> None:
    status, body = http_json(
        f"http://{triton_node.http_url}/v2/models/ensemble/generate",
        {"text_input": "The fleet keeps agents alive", "max_tokens": 12, "min_tokens": 12},
    )
    assert status == 200, body
    assert isinstance(body["text_output"], str) and body["text_output"].strip()
    assert body["sequence_length"] == 12
    assert len(body["output_ids"]) == 12


def test_generate_stream_sends_the_tokens_as_they_come(triton_node: TritonNode) -> None:
    """One event per token, except where a character spans tokens (sent together)."""
    events = sse_events(
        f"http://{triton_node.http_url}/v2/models/ensemble/generate_stream",
        {"text_input": "Stream this", "max_tokens": 6, "min_tokens": 6, "stream": True},
    )
    assert sum(e["sequence_length"] for e in events) == 6
    assert len(events) >= 2 and all("text_output" in e and e["sequence_length"] for e in events)


def test_http_infer_and_grpc_stream_agree_for_a_seed(
    triton_node: TritonNode, unary_node: TritonNode
) -> None:
    """Unary infer on the non-decoupled rendering gives the tokens the stream gives."""
    text, n = "Agents call tools in loops", 16
    http = http_client(unary_node.http_url)
    unary = http.infer("tensorrt_llm_bls", ensemble_inputs(httpclient, text, n, seed=7, top_k=40))
    unary_tokens = [int(t) for t in unary.as_numpy("output_ids").reshape(-1)]

    client = grpc_client(triton_node.grpc_url)
    recorder = StreamRecorder()
    client.start_stream(callback=recorder.callback)
    try:
        for request_id, seed in (("same", 7), ("other", 8)):
            client.async_stream_infer(
                "ensemble",
                ensemble_inputs(grpcclient, text, n, seed=seed, top_k=40, stream=True),
                request_id=request_id,
            )
        arrivals = recorder.drain(finals_expected=2)
    finally:
        client.stop_stream()
    streamed = {
        rid: [t for r, toks in arrivals if r == rid for t in toks] for rid in ("same", "other")
    }
    assert unary_tokens, "unary call produced no tokens"
    assert streamed["same"] == unary_tokens
    assert streamed["other"] != unary_tokens, "a different seed should sample differently"


def test_concurrent_requests_are_batched(triton_node: TritonNode) -> None:
    """Four streams are decoded together: the engine holds them at once and they interleave."""
    client = grpc_client(triton_node.grpc_url)
    recorder = StreamRecorder()
    client.start_stream(callback=recorder.callback)
    peak_active = 0.0
    try:
        for i in range(4):
            client.async_stream_infer(
                "ensemble",
                ensemble_inputs(grpcclient, f"request {i}", 256, min_tokens=256, stream=True),
                request_id=f"r{i}",
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and peak_active < 4:
            active = metric_value(
                triton_node.metrics_url, "nv_trt_llm_request_metrics", request_type="active"
            )
            peak_active = max(peak_active, active)
            time.sleep(0.01)
        arrivals = recorder.drain(finals_expected=4)
    finally:
        client.stop_stream()
    assert peak_active >= 3, "the engine never held several requests at once"
    order = [rid for rid, tokens in arrivals if tokens]
    first_final = min(len(order) - order[::-1].index(f"r{i}") - 1 for i in range(4))
    assert len(set(order[: first_final + 1])) >= 3, "streams should interleave"
    assert sum(len(tokens) for _, tokens in arrivals) == 4 * 256


def test_success_metric_grows(triton_node: TritonNode) -> None:
    before = metric_value(triton_node.metrics_url, "nv_inference_request_success", model="ensemble")
    for _ in range(2):
        status, _ = http_json(
            f"http://{triton_node.http_url}/v2/models/ensemble/generate",
            {"text_input": "count me", "max_tokens": 3},
        )
        assert status == 200
    after = metric_value(triton_node.metrics_url, "nv_inference_request_success", model="ensemble")
    assert after >= before + 2


def test_engine_exports_trtllm_metric_names(triton_node: TritonNode) -> None:
    url = triton_node.metrics_url
    assert metric_value(url, "nv_trt_llm_request_metrics", request_type="max") >= 1
    assert (
        metric_value(url, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="tokens_per") > 0
    )
