"""The pure judges (passive traffic, scraped metrics) and the canary's deadline and checks."""

from __future__ import annotations

import numpy as np
from tritonclient.grpc import service_pb2

from router.fleet import NodeConfig, NodeTable
from router.fleet.metrics import NodeMetrics
from router.health.config import CanaryConfig, MetricsProbeConfig, PassiveConfig
from router.health.probes import CanaryProbe, MetricsJudge, PassiveJudge
from router.health.signals import Verdict
from router.policies.base import NodeState
from router.wire import read_input

NODES = ["node0", "node1", "node2"]


def table() -> NodeTable:
    return NodeTable([NodeConfig.local(i, "p") for i in range(3)], lambda pair: 100.0)


def verdicts(signals: list) -> dict[str, tuple[Verdict, str]]:
    return {s.node: (s.verdict, s.reason) for s in signals}


def test_a_node_silent_with_requests_in_flight_is_suspect() -> None:
    t = table()
    judge = PassiveJudge(PassiveConfig(stall_s=1.0), NODES)
    t.start("node0", "r1", 1.0, 10.0)
    t.start("node1", "r2", 1.0, 10.0)
    t.note_progress("node1", 10.9)
    found = verdicts(judge.evaluate(t, 11.2))
    assert found["node0"][0] is Verdict.SUSPECT and "nothing received" in found["node0"][1]
    assert "node1" not in found  # it answered 0.3 s ago
    t.finish("node0", "r1", 11.3)
    assert verdicts(judge.evaluate(t, 11.4))["node0"][0] is Verdict.PASS  # told once


def test_faults_and_garbage_count_but_passes_reset_the_streak() -> None:
    t = table()
    judge = PassiveJudge(PassiveConfig(consecutive_faults_suspect=3, min_samples=100), NODES)
    for i in range(2):
        judge.record("node0", "node_fault", None, float(i))
    judge.record("node0", "ok", 0.1, 2.0)
    judge.record("node0", "node_fault", None, 3.0)
    assert "node0" not in verdicts(judge.evaluate(t, 3.0))
    for i in range(3):
        judge.record("node1", "node_fault", None, 4.0 + i)
    assert verdicts(judge.evaluate(t, 7.0))["node1"][0] is Verdict.SUSPECT
    judge.record("node2", "garbage", None, 7.0)
    judge.record("node2", "garbage", None, 7.1)
    assert verdicts(judge.evaluate(t, 7.2))["node2"][0] is Verdict.FAIL


def test_a_high_fault_rate_fails_the_node() -> None:
    t = table()
    judge = PassiveJudge(PassiveConfig(min_samples=8, error_rate_fail=0.5), NODES)
    for i in range(8):
        judge.record("node0", "node_fault" if i % 2 else "ok", 0.1, float(i))
    assert verdicts(judge.evaluate(t, 8.0))["node0"][0] is Verdict.FAIL


def _ttft_run(judge: PassiveJudge, node: str, base: float, slow: float, t0: float) -> None:
    for i in range(40):
        judge.record(node, "ok", base, t0 + i * 0.01)
    for i in range(10):
        judge.record(node, "ok", slow, t0 + 1 + i * 0.01)


def test_first_token_decay_is_judged_against_the_node_and_the_fleet() -> None:
    t = table()
    judge = PassiveJudge(PassiveConfig(min_samples=8), NODES)
    _ttft_run(judge, "node0", 0.1, 0.6, 0.0)  # 6x slower than its own baseline
    _ttft_run(judge, "node1", 0.1, 0.1, 0.0)
    _ttft_run(judge, "node2", 0.1, 0.1, 0.0)
    found = verdicts(judge.evaluate(t, 2.0))
    assert found["node0"][0] is Verdict.SUSPECT and "slower" in found["node0"][1]
    everyone = PassiveJudge(PassiveConfig(min_samples=8), NODES)
    for node in NODES:  # the whole fleet slows down alike: nobody is an outlier
        _ttft_run(everyone, node, 0.1, 0.6, 0.0)
    assert everyone.evaluate(t, 2.0) == []


def _metrics(at: float, pending: int, success: float, failure: float = 0.0) -> NodeMetrics:
    return NodeMetrics(scraped_at=at, pending=pending, success=success, failure=failure, waiting=0)


def test_waiting_work_with_nothing_finishing_is_suspect_after_a_while() -> None:
    t = table()
    judge = MetricsJudge(MetricsProbeConfig(no_progress_s=2.0), NODES)
    for i, at in enumerate((1.0, 2.0, 3.0)):
        t.update_metrics("node0", _metrics(at, pending=4, success=10.0))
        t.update_metrics("node1", _metrics(at, pending=4, success=10.0 + i))
        found = verdicts(judge.evaluate(t, at))
    assert found["node0"][0] is Verdict.SUSPECT and "none finished" in found["node0"][1]
    assert "node1" not in found
    t.update_metrics("node0", _metrics(4.0, pending=4, success=11.0))
    assert verdicts(judge.evaluate(t, 4.0))["node0"][0] is Verdict.PASS


def test_failing_scrapes_and_a_failure_share_are_suspect() -> None:
    t = table()
    judge = MetricsJudge(MetricsProbeConfig(scrape_failures_suspect=2), NODES)
    t.record_scrape_error("node2", "timeout", 1.0)
    t.record_scrape_error("node2", "timeout", 2.0)
    t.update_metrics("node1", _metrics(1.0, 0, 10.0, 0.0))
    t.update_metrics("node1", _metrics(2.0, 0, 11.0, 5.0))
    found = verdicts(judge.evaluate(t, 2.0))
    assert found["node2"][0] is Verdict.SUSPECT and "scrapes failed" in found["node2"][1]
    assert found["node1"][0] is Verdict.SUSPECT and "5 of 6" in found["node1"][1]


def canary(**config: object) -> CanaryProbe:
    return CanaryProbe(CanaryConfig.model_validate(config), {}, 100, lambda node: NodeState.HEALTHY)


def test_the_canary_deadline_follows_the_fleet_but_never_drops_below_its_floor() -> None:
    probe = canary(first_token_deadline_s=0.75, adaptive_factor=4.0)
    assert probe.deadline_s() == 0.75
    probe.recent_ttft.extend([0.05] * 10)
    assert probe.deadline_s() == 0.75
    probe.recent_ttft.extend([0.5] * 20)  # the whole fleet got slower
    assert probe.deadline_s() == 2.0


def test_the_canary_request_is_top_priority_greedy_and_streamed() -> None:
    request = canary(max_tokens=3).request()
    assert request.model_name == "ensemble"
    assert request.parameters["priority"].uint64_param == 1
    assert request.parameters["priority_level"].int64_param == 1
    assert bool(np.asarray(read_input(request, "stream")).reshape(-1)[0])
    assert int(np.asarray(read_input(request, "top_k")).reshape(-1)[0]) == 1
    assert int(np.asarray(read_input(request, "min_tokens")).reshape(-1)[0]) == 3
    assert {o.name for o in request.outputs} == {"text_output", "output_ids"}


def test_the_canary_refuses_token_ids_outside_the_vocabulary() -> None:
    probe = canary()
    response = service_pb2.ModelInferResponse()
    response.outputs.add(name="output_ids", datatype="INT32", shape=[1, 1, 2])
    response.raw_output_contents.append(np.array([5, 1000], dtype=np.int32).tobytes())
    assert "garbage" in (probe._check(response) or "")
    ok = service_pb2.ModelInferResponse()
    ok.outputs.add(name="output_ids", datatype="INT32", shape=[1, 1, 1])
    ok.raw_output_contents.append(np.array([5], dtype=np.int32).tobytes())
    assert probe._check(ok) is None


def test_a_restarted_node_is_judged_afresh() -> None:
    t = table()
    judge = PassiveJudge(PassiveConfig(consecutive_faults_suspect=3), NODES)
    for i in range(3):
        judge.record("node0", "node_fault", None, float(i))
    assert verdicts(judge.evaluate(t, 3.0))["node0"][0] is Verdict.SUSPECT
    judge.forget("node0")  # its restart: no traffic will come to clear the streak
    assert "node0" not in verdicts(judge.evaluate(t, 4.0))
