"""The forwarder's handling of failing nodes: eviction, token deadlines, garbage, the wait
for a routable node, the retry budget and what the passive judge is told (fake channels)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from test_router_pipeline import (
    NOW,
    Item,
    fault,
    final_response,
    harness,
    ok_script,
    token_response,
)
from tritonclient.grpc import service_pb2

from router.errors import BadRequest, NoCapacity, NodeFailed
from router.pipeline import Outcome
from router.policies.base import NodeState
from router.retry_budget import RetryBudget


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def record(self, node: str, kind: str, ttft_s: float | None, now: float) -> None:
        self.records.append((node, kind))


def with_sink(h: Any) -> Sink:
    sink = Sink()
    h.pipeline.forwarder.sink = sink
    return sink


def garbage_response() -> service_pb2.ModelInferResponse:
    response = token_response("??", 1)
    response.outputs.add(name="output_ids", datatype="INT32", shape=[1, 1, 1])
    response.raw_output_contents.append(np.array([[[10**6]]], dtype=np.int32).tobytes())
    return response


def test_an_evicted_request_that_has_not_streamed_is_re_sent() -> None:
    h = harness()
    slow: list[Item] = ["wait", *ok_script()]
    h.channels["node0"].scripts = [slow]
    outcome = Outcome()

    async def run() -> list[service_pb2.ModelInferResponse]:
        async def evict_soon() -> None:
            while not h.pipeline.forwarder._attempts["node0"]:
                await asyncio.sleep(0)
            assert h.pipeline.forwarder.evict("node0", "cordoned: hung", streams=True) == 1

        task = asyncio.create_task(evict_soon())
        out = [r async for r in h.pipeline.run(h.job(), outcome)]
        await task
        return out

    out = asyncio.run(run())
    assert outcome.node == "node1" and outcome.attempts == 2
    assert len(out) == 3
    assert h.inflight() == {"node0": {}, "node1": {}}


def test_no_first_token_in_time_fails_over_and_counts_against_the_node() -> None:
    h = harness(first_token_timeout_s=0.05)
    sink = with_sink(h)
    h.channels["node0"].scripts = [["sleep", *ok_script()]]
    outcome = Outcome()
    h.run(h.job(), outcome)
    assert outcome.node == "node1"
    assert ("node0", "node_fault") in sink.records
    assert ("node1", "ok") in sink.records
    assert h.sample("mufleet_router_node_errors_total", node="node0", fault="stalled") == 1


def test_garbage_tokens_are_a_node_fault_the_client_never_sees() -> None:
    h = harness()
    sink = with_sink(h)
    h.channels["node0"].scripts = [[garbage_response(), final_response()]]
    outcome = Outcome()
    out = h.run(h.job(), outcome)
    assert outcome.node == "node1"
    assert len(out) == 3
    assert ("node0", "garbage") in sink.records


def test_a_client_fault_says_nothing_about_the_node() -> None:
    h = harness()
    sink = with_sink(h)
    h.channels["node0"].scripts = [[fault("max_tokens must be at least 1")]]
    with pytest.raises(BadRequest):
        h.run(h.job(), Outcome())
    assert sink.records == []


def test_with_no_routable_node_a_request_waits_for_one() -> None:
    h = harness(queue_timeout_s=5.0)
    for node in ("node0", "node1"):
        h.table.transition(node, NodeState.CORDONED, "test", NOW)
    outcome = Outcome()

    async def run() -> list[service_pb2.ModelInferResponse]:
        async def heal() -> None:
            while h.pipeline.forwarder.queued == 0:
                await asyncio.sleep(0.01)
            h.table.transition("node1", NodeState.HEALTHY, "back", NOW)
            h.pipeline.forwarder.fleet_changed()

        task = asyncio.create_task(heal())
        out = [r async for r in h.pipeline.run(h.job(), outcome)]
        await task
        return out

    assert len(asyncio.run(run())) == 3
    assert outcome.node == "node1"
    assert h.pipeline.forwarder.queued == 0


def test_the_wait_for_a_node_is_bounded() -> None:
    h = harness(queue_timeout_s=0.05)
    for node in ("node0", "node1"):
        h.table.transition(node, NodeState.CORDONED, "test", NOW)
    with pytest.raises(NoCapacity):
        h.run(h.job(), Outcome())
    h = harness(queue_timeout_s=0.0)
    for node in ("node0", "node1"):
        h.table.transition(node, NodeState.CORDONED, "test", NOW)
    with pytest.raises(NoCapacity):
        h.run(h.job(), Outcome())


def test_a_spent_retry_budget_stops_failover() -> None:
    h = harness(retry_budget_ratio=0.0, retry_budget_min_per_s=0.0)
    h.channels["node0"].scripts = [[fault("injected fault: engine error")]]
    with pytest.raises(NodeFailed):
        h.run(h.job(), Outcome())
    assert h.channels["node1"].calls == []
    assert h.sample("mufleet_router_retry_budget_refused_total") == 1


def test_retry_budget_earns_a_share_of_traffic_plus_a_floor() -> None:
    budget = RetryBudget(ratio=0.1, min_per_s=0.5, window_s=10.0)
    for i in range(100):
        budget.request(float(i) / 100)
    allowed = 0
    while budget.try_retry(1.0):
        allowed += 1
    assert allowed == 15  # 10 % of 100 requests, plus 0.5/s over the 10 s window
    assert budget.refused == 1
    assert budget.allowed(30.0) == pytest.approx(5.0)  # the window moved on
