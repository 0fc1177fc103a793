"""Unit tests for router.pipeline.Pipeline: the real admission, sessions, priorities, policy,
node table and cost model around fake node channels (no network)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeAlias, cast

import numpy as np
import pytest
from pydantic import SecretStr
from starlette.requests import Request
from tritonclient.grpc import service_pb2

from router.admission import (
    Admission,
    PriorityMapper,
    SessionTable,
    TenantConfig,
)
from router.api.openai import CompletionRequest, OpenAIFront
from router.config import REPOSITORY_ROOT
from router.cost_model import CostModel, PairProfile, RequestShape
from router.errors import BadRequest, NodeFailed, NotFound, RateLimited, Timeout
from router.fleet import NodeConfig, NodeTable
from router.health.config import FailoverConfig
from router.metrics import RouterMetrics
from router.models import ModelConfig, ServedModel
from router.output_length import OutputLengthEstimator
from router.pipeline import PRIORITY_PARAMETER, Job, Outcome, Pipeline, PipelineSettings
from router.policies import block_hashes, build_policy
from router.upstream import CallHandle, NodeCallError, NodeChannel
from router.wire import build_request, read_output, serialize_bytes

PAIR = "llama-3.1-8b_h100-sxm_tp1"
PROFILE = REPOSITORY_ROOT / "profiles" / f"{PAIR}.json"
MODEL = "tiny"
NODES = ("node0", "node1")
PROMPT_TOKENS = 40
MAX_TOKENS = 8
NOW = 1000.0


# -- node responses --------------------------------------------------------------------------
def token_response(text: str, tokens: int) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="ensemble")
    response.outputs.add(name="text_output", datatype="BYTES", shape=[1, 1])
    response.raw_output_contents.append(serialize_bytes(np.array([text.encode()], dtype=object)))
    response.outputs.add(name="sequence_length", datatype="INT32", shape=[1, 1])
    response.raw_output_contents.append(np.array([[tokens]], dtype=np.int32).tobytes())
    return response


def final_response() -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="ensemble")
    response.parameters["triton_final_response"].bool_param = True
    return response


Item: TypeAlias = "service_pb2.ModelInferResponse | NodeCallError"


def ok_script() -> list[Item]:
    return [token_response("Hel", 2), token_response("lo!", 3), final_response()]


def fault(message: str, transport: bool = False) -> NodeCallError:
    return NodeCallError(message, transport=transport)


class _TaskCall:
    """Stands for a gRPC call: cancelling it cancels the task reading the stream."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


class FakeChannel(NodeChannel):
    """A node: each ``stream`` call plays the next script (responses, or an error raised)."""

    def __init__(self, name: str, scripts: Sequence[list[Item]] = ()) -> None:
        super().__init__(name, "127.0.0.1:1")  # the real stub is never created
        self.scripts = list(scripts)
        self.calls: list[tuple[service_pb2.ModelInferRequest, float | None]] = []

    async def stream(
        self,
        request: service_pb2.ModelInferRequest,
        deadline_s: float | None,
        handle: CallHandle | None = None,
    ) -> AsyncGenerator[service_pb2.ModelInferResponse, None]:
        copy = service_pb2.ModelInferRequest()
        copy.CopyFrom(request)
        self.calls.append((copy, deadline_s))
        if handle is not None:
            handle.call = _TaskCall(asyncio.current_task())
        script = self.scripts.pop(0) if self.scripts else ok_script()
        try:
            for item in script:
                await asyncio.sleep(0)
                if isinstance(item, NodeCallError):
                    raise item
                if item == "sleep":  # a node that says nothing for a while
                    await asyncio.sleep(1.0)
                    continue
                if item == "wait":  # a node that says nothing until cancelled
                    await asyncio.sleep(30.0)
                    continue
                yield item
        except asyncio.CancelledError:
            if handle is not None and handle.reason is not None:
                raise NodeCallError(f"evicted: {handle.reason}", transport=True) from None
            raise


# -- the harness ---------------------------------------------------------------------------
class FakeModel:
    """What the pipeline reads of a ServedModel (no tokenizer needed)."""

    def __init__(self) -> None:
        self.name = MODEL
        self.vocab_size = 32000
        self.config = ModelConfig(name=MODEL, tokenizer_dir=Path("/nonexistent"))

    def blocks(self, token_ids: Sequence[int]) -> tuple[int, ...]:
        return block_hashes(token_ids, self.config.block_size)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tenant(name: str = "acme", **kw: Any) -> TenantConfig:
    values: dict[str, Any] = {"api_key": SecretStr(f"key-{name}"), "reserved_mu_s": 1000.0}
    values.update(kw)
    return TenantConfig(name=name, **values)


@dataclass
class Harness:
    pipeline: Pipeline
    table: NodeTable
    admission: Admission
    sessions: SessionTable
    metrics: RouterMetrics
    channels: dict[str, FakeChannel]
    cost: CostModel
    clock: Clock
    model: FakeModel = field(default_factory=FakeModel)

    def job(self, who: TenantConfig | None = None, **kw: Any) -> Job:
        request = build_request(
            "ensemble",
            {
                "text_input": np.array([[b"hello"]], dtype=object),
                "max_tokens": np.array([[MAX_TOKENS]], dtype=np.int32),
            },
            outputs=("text_output", "sequence_length"),
        )
        values: dict[str, Any] = {
            "tenant": who or tenant(),
            "model": cast(ServedModel, self.model),
            "request": request,
            "prompt_ids": list(range(PROMPT_TOKENS)),
            "max_tokens": MAX_TOKENS,
        }
        values.update(kw)
        return Job(**values)

    def run(self, job: Job, outcome: Outcome | None = None) -> list[service_pb2.ModelInferResponse]:
        async def collect() -> list[service_pb2.ModelInferResponse]:
            return [r async for r in self.pipeline.run(job, outcome)]

        return asyncio.run(collect())

    def run_error(
        self, job: Job, outcome: Outcome, seen: list[service_pb2.ModelInferResponse]
    ) -> BaseException:
        async def collect() -> None:
            async for response in self.pipeline.run(job, outcome):
                seen.append(response)

        with pytest.raises(Exception) as info:
            asyncio.run(collect())
        return info.value

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def ledger(self, name: str = "acme") -> dict[str, Any]:
        return self.admission.ledger(name, self.clock())

    def inflight(self) -> dict[str, dict[str, float]]:
        return {n: dict(self.table.inflight(n)) for n in NODES}


def harness(scripts: dict[str, list[list[Item]]] | None = None, **settings: Any) -> Harness:
    scripts = scripts or {}
    cost = CostModel(PairProfile.load(PROFILE))
    nodes = [NodeConfig.local(i, PAIR, models=[MODEL]) for i in range(len(NODES))]
    table = NodeTable(nodes, lambda pair: cost.capacity_mu_s)
    channels = {n: FakeChannel(n, scripts.get(n, [])) for n in NODES}
    admission = Admission()
    sessions = SessionTable()
    metrics = RouterMetrics()
    clock = Clock()
    pipeline = Pipeline(
        table=table,
        channels=cast(dict[str, NodeChannel], channels),
        node_pairs={n.name: n.pair for n in nodes},
        costs={PAIR: cost},
        policy=build_policy("least_request"),
        policy_name="least_request",
        admission=admission,
        sessions=sessions,
        priorities=PriorityMapper(),
        estimator=OutputLengthEstimator(),
        metrics=metrics,
        settings=PipelineSettings(
            failover=FailoverConfig(
                **{k: settings.pop(k) for k in list(settings) if k in FailoverConfig.model_fields}
            ),
            **settings,
        ),
        clock=clock,
    )
    return Harness(pipeline, table, admission, sessions, metrics, channels, cost, clock)


def _generator(
    stream: AsyncIterator[service_pb2.ModelInferResponse],
) -> AsyncGenerator[service_pb2.ModelInferResponse, None]:
    """Pipeline.run is an async generator (annotated as an iterator): it can be closed."""
    return cast(AsyncGenerator[service_pb2.ModelInferResponse, None], stream)


def _text(response: service_pb2.ModelInferResponse) -> str | None:
    value = read_output(response, "text_output")
    return None if value is None else value.reshape(-1)[0].decode()


# -- success -------------------------------------------------------------------------------
def test_success_streams_in_order_and_settles() -> None:
    h = harness()
    outcome = Outcome()
    responses = h.run(h.job(), outcome)
    assert [_text(r) for r in responses] == ["Hel", "lo!", None]
    assert outcome.output_tokens == 5
    assert outcome.attempts == 1
    assert outcome.node == "node0"  # least request: a tie goes to the first name
    assert outcome.admission == "reserved"
    assert outcome.ttft_s is not None and outcome.ttft_s >= 0
    assert outcome.route_reason
    # Priced before, reconciled after.
    assert outcome.estimated_mu == pytest.approx(h.cost.estimate(PROMPT_TOKENS, MAX_TOKENS))
    expected_actual = h.cost.actual(RequestShape(prompt_tokens=PROMPT_TOKENS, output_tokens=5))
    assert outcome.actual_mu == pytest.approx(expected_actual)
    # Admission ledger settled with the actual MU.
    ledger = h.ledger()
    assert ledger["reserved"]["admitted"] == 1
    assert ledger["reserved"]["settled"] == 1
    assert ledger["reserved"]["refunded"] == 0
    assert ledger["reserved"]["settled_actual_mu"] == pytest.approx(expected_actual)
    assert ledger["totals"]["open"] == 0
    assert h.admission.open_tickets == 0
    # The node's ledger is back to nothing in flight.
    assert h.inflight() == {"node0": {}, "node1": {}}
    snaps = {s.name: s for s in h.table.snapshot(h.clock())}
    assert snaps["node0"].inflight_mu == 0.0
    assert snaps["node0"].inflight_requests == 0
    assert h.table.entry("node0").requests_finished == 1
    # Metrics.
    assert h.sample("mufleet_router_requests_total", tenant="acme", node="node0", outcome="ok") == 1
    assert h.sample("mufleet_router_admitted_requests_total", tenant="acme", kind="reserved") == 1
    assert h.sample("mufleet_router_failovers_total", node="node0") == 0
    assert len(h.channels["node0"].calls) == 1
    assert h.channels["node1"].calls == []


def test_output_tokens_fall_back_to_output_ids() -> None:
    response = service_pb2.ModelInferResponse(model_name="tensorrt_llm")
    response.outputs.add(name="output_ids", datatype="INT32", shape=[1, 1, 4])
    response.raw_output_contents.append(np.arange(4, dtype=np.int32).tobytes())
    h = harness({"node0": [[response, final_response()]]})
    outcome = Outcome()
    h.run(h.job(), outcome)
    assert outcome.output_tokens == 4


def test_the_estimator_learns_from_finished_requests() -> None:
    h = harness()
    for _ in range(10):
        h.run(h.job())
    # 5 of 8 tokens each time: the expected output drops from max_tokens to about 5.
    assert h.pipeline.estimator.expected("acme", MODEL, MAX_TOKENS) == pytest.approx(5.0)
    outcome = Outcome()
    h.run(h.job(), outcome)
    assert outcome.estimated_mu == pytest.approx(h.cost.estimate(PROMPT_TOKENS, MAX_TOKENS, 0, 5))


# -- failover ------------------------------------------------------------------------------
def test_node_fault_before_the_first_token_fails_over() -> None:
    h = harness({"node0": [[fault("injected fault: engine error")]]})
    outcome = Outcome()
    responses = h.run(h.job(), outcome)
    assert [_text(r) for r in responses] == ["Hel", "lo!", None]
    assert outcome.attempts == 2
    assert outcome.node == "node1"
    assert outcome.output_tokens == 5
    assert len(h.channels["node0"].calls) == 1  # the failed node is not tried again
    assert len(h.channels["node1"].calls) == 1
    assert h.sample("mufleet_router_failovers_total", node="node0") == 1
    assert h.sample("mufleet_router_node_errors_total", node="node0", fault="node") == 1
    assert h.sample("mufleet_router_requests_total", tenant="acme", node="node1", outcome="ok") == 1
    assert h.inflight() == {"node0": {}, "node1": {}}
    ledger = h.ledger()
    assert (ledger["reserved"]["settled"], ledger["reserved"]["refunded"]) == (1, 0)


def test_failed_node_is_excluded_even_when_it_would_win_again() -> None:
    # node1 is busier, so least_request would pick node0 again were it not excluded.
    h = harness({"node0": [[fault("Stub process 'tensorrt_llm_0_0' is not healthy.")]]})
    h.table.start("node1", "someone-else", 1.0, NOW)
    outcome = Outcome()
    h.run(h.job(), outcome)
    assert outcome.node == "node1"
    assert len(h.channels["node0"].calls) == 1


def test_a_timeout_is_not_retried_so_the_deadline_is_never_multiplied() -> None:
    h = harness({"node0": [[fault("DEADLINE_EXCEEDED: Deadline Exceeded", transport=True)]]})
    outcome = Outcome()
    error = h.run_error(h.job(), outcome, [])
    assert error.status == 504
    assert outcome.attempts == 1
    assert h.channels["node1"].calls == []
    assert h.sample("mufleet_router_node_errors_total", node="node0", fault="timeout") == 1


def test_node_fault_after_a_response_is_not_retried_without_migration() -> None:
    script: list[Item] = [token_response("Hel", 2), fault("engine is dead: 3 iterations in a row")]
    h = harness({"node0": [script]}, migrate_streams=False)
    outcome = Outcome()
    seen: list[service_pb2.ModelInferResponse] = []
    error = h.run_error(h.job(), outcome, seen)
    assert isinstance(error, NodeFailed)
    assert error.status == 502
    assert "node0" in error.message
    assert [_text(r) for r in seen] == ["Hel"]
    assert outcome.attempts == 1
    assert outcome.output_tokens == 2
    assert h.channels["node1"].calls == []
    assert h.sample("mufleet_router_failovers_total", node="node0") == 0
    assert h.sample("mufleet_router_node_errors_total", node="node0", fault="node") == 1
    # What streamed is charged: settled with the actual MU of the tokens seen, not refunded.
    ledger = h.ledger()
    assert (ledger["reserved"]["settled"], ledger["reserved"]["refunded"]) == (1, 0)
    shape = RequestShape(prompt_tokens=PROMPT_TOKENS, output_tokens=2)
    assert ledger["reserved"]["settled_actual_mu"] == pytest.approx(h.cost.actual(shape))
    assert h.inflight() == {"node0": {}, "node1": {}}


def test_timeout_after_a_response_is_a_504_without_retry() -> None:
    script: list[Item] = [token_response("a", 1), fault("Request timeout expired")]
    h = harness({"node0": [script]})
    error = h.run_error(h.job(), Outcome(), [])
    assert isinstance(error, Timeout)
    assert error.status == 504
    assert h.channels["node1"].calls == []


def test_client_fault_is_a_bad_request_without_retry() -> None:
    h = harness({"node0": [[fault("max_tokens must be at least 1, got 0")]]})
    outcome = Outcome()
    error = h.run_error(h.job(), outcome, [])
    assert isinstance(error, BadRequest)
    assert error.status == 400
    assert error.message == "max_tokens must be at least 1, got 0"
    assert outcome.attempts == 1
    assert h.channels["node1"].calls == []
    assert h.sample("mufleet_router_node_errors_total", node="node0", fault="client") == 0
    assert h.sample("mufleet_router_node_errors_total", node="node0", fault="node") == 0
    assert h.sample("mufleet_router_failovers_total", node="node0") == 0
    ledger = h.ledger()
    assert (ledger["reserved"]["settled"], ledger["reserved"]["refunded"]) == (0, 1)
    assert h.inflight() == {"node0": {}, "node1": {}}


def test_all_nodes_failing_raise_the_last_error_and_refund() -> None:
    h = harness(
        {
            "node0": [[fault("Stub process 'tensorrt_llm_0_0' is not healthy.")]],
            "node1": [[fault("UNAVAILABLE: failed to connect to all addresses", transport=True)]],
        }
    )
    who = tenant()
    full = who.depth_mu
    outcome = Outcome()
    error = h.run_error(h.job(who), outcome, [])
    assert isinstance(error, NodeFailed)
    assert error.status == 502
    assert "node1" in error.message  # the last node tried
    assert "failed to connect" in error.message
    assert outcome.attempts == 2
    ledger = h.ledger()
    assert (ledger["reserved"]["settled"], ledger["reserved"]["refunded"]) == (0, 1)
    assert ledger["reserved"]["refunded_mu"] == pytest.approx(outcome.estimated_mu)
    assert h.admission.bucket_level("acme", NOW) == pytest.approx(full)
    assert h.admission.open_tickets == 0
    assert h.inflight() == {"node0": {}, "node1": {}}
    assert h.sample("mufleet_router_failovers_total", node="node0") == 1
    assert h.sample("mufleet_router_failovers_total", node="node1") == 1
    assert h.sample("mufleet_router_requests_total", tenant="acme", node="node1", outcome="ok") == 0


def test_max_attempts_bounds_the_nodes_tried() -> None:
    h = harness({"node0": [[fault("injected fault: engine error")]]}, max_attempts=1)
    outcome = Outcome()
    error = h.run_error(h.job(), outcome, [])
    assert isinstance(error, NodeFailed)
    assert "node0" in error.message
    assert outcome.attempts == 1
    assert h.channels["node1"].calls == []


def test_no_routable_node_is_no_capacity_and_refunds() -> None:
    h = harness()
    for name in NODES:
        h.table.cordon(name, "maintenance", NOW)
    error = h.run_error(h.job(), Outcome(), [])
    assert getattr(error, "status", None) == 503
    assert h.ledger()["reserved"]["refunded"] == 1


# -- admission -----------------------------------------------------------------------------
def test_rejected_tenant_is_rate_limited() -> None:
    h = harness()
    broke = tenant("broke", reserved_mu_s=0.0, best_effort=False)
    outcome = Outcome()
    error = h.run_error(h.job(broke), outcome, [])
    assert isinstance(error, RateLimited)
    assert error.status == 429
    assert error.retry_after_s > 0
    assert int(error.headers["Retry-After"]) >= 1
    assert outcome.admission == "rejected"
    assert h.channels["node0"].calls == [] and h.channels["node1"].calls == []
    assert h.sample("mufleet_router_rejected_requests_total", tenant="broke") == 1
    assert h.admission.open_tickets == 0


def test_best_effort_tenant_without_reservation_runs_on_spare_capacity() -> None:
    h = harness()
    spare = tenant("spare", reserved_mu_s=0.0, best_effort=True)
    outcome = Outcome()
    h.run(h.job(spare), outcome)
    assert outcome.admission == "best_effort"
    assert h.ledger("spare")["best_effort"]["settled"] == 1


# -- priority, parameters, timeout ---------------------------------------------------------
def test_interactive_tenant_gets_a_smaller_level_than_batch() -> None:
    h = harness()
    fast, slow = Outcome(), Outcome()
    h.run(h.job(tenant("fast", tier="interactive")), fast)
    h.run(h.job(tenant("slow", tier="batch")), slow)
    assert fast.priority < slow.priority
    mapper = PriorityMapper()
    assert mapper.band("interactive")[0] <= fast.priority <= mapper.band("interactive")[1]
    assert mapper.band("batch")[0] <= slow.priority <= mapper.band("batch")[1]


def test_requested_priority_one_is_clamped_to_max_priority() -> None:
    h = harness()
    outcome = Outcome()
    h.run(h.job(tenant(max_priority=4), requested_priority=1), outcome)
    assert outcome.priority == 4
    sent, _ = h.channels["node0"].calls[0]
    assert sent.parameters["priority"].uint64_param == 4
    assert sent.parameters[PRIORITY_PARAMETER].int64_param == 4


def test_requested_priority_below_the_tier_is_honoured() -> None:
    h = harness()
    outcome = Outcome()
    h.run(h.job(tenant(tier="interactive"), requested_priority=7), outcome)
    assert outcome.priority == 7


def test_priority_and_timeout_are_set_on_the_forwarded_request() -> None:
    h = harness()
    outcome = Outcome()
    h.run(h.job(timeout_s=2.5), outcome)
    sent, deadline = h.channels["node0"].calls[0]
    assert sent.parameters["priority"].WhichOneof("parameter_choice") == "uint64_param"
    assert sent.parameters["priority"].uint64_param == outcome.priority
    assert sent.parameters[PRIORITY_PARAMETER].int64_param == outcome.priority
    assert sent.parameters["timeout"].int64_param == 2_500_000  # microseconds
    assert deadline is not None and deadline > 2.5  # the node's own timeout fires first
    # The tensors travel unchanged.
    assert [t.name for t in sent.inputs] == ["text_input", "max_tokens"]


def test_default_timeout_comes_from_the_settings() -> None:
    h = harness(request_timeout_s=30.0)
    h.run(h.job())
    sent, deadline = h.channels["node0"].calls[0]
    assert sent.parameters["timeout"].int64_param == 30_000_000
    assert deadline is not None and deadline >= 30.0


def test_failover_sends_the_same_parameters_to_the_next_node() -> None:
    h = harness({"node0": [[fault("injected fault: engine error")]]})
    h.run(h.job(timeout_s=4.0))
    first, _ = h.channels["node0"].calls[0]
    second, _ = h.channels["node1"].calls[0]
    for name in ("priority", PRIORITY_PARAMETER, "timeout"):
        assert first.parameters[name] == second.parameters[name]


# -- sessions ------------------------------------------------------------------------------
def test_session_draw_and_settle() -> None:
    h = harness()
    who = tenant()
    session = h.sessions.open(who, 1000.0, 600.0, NOW)
    outcome = Outcome()
    h.run(h.job(who, session_id=session.session_id), outcome)
    after = h.sessions.get(session.session_id, NOW, tenant="acme")
    assert after is not None
    assert after.spent_mu == pytest.approx(outcome.actual_mu)
    assert after.node == outcome.node == "node0"
    assert after.turns == 1
    assert after.active_turns == 0
    assert after.turn_mu_ewma == pytest.approx(outcome.actual_mu)
    # The session now holds headroom on its node for its next turn.
    assert h.sessions.reserved_by_node() == {"node0": pytest.approx(outcome.actual_mu)}


def test_second_turn_on_the_same_node_is_an_affinity_hit() -> None:
    h = harness()
    who = tenant()
    session = h.sessions.open(who, 1000.0, 600.0, NOW)
    h.run(h.job(who, session_id=session.session_id))
    h.run(h.job(who, session_id=session.session_id))
    assert h.sample("mufleet_router_affinity_hits_total", tenant="acme") == 1
    after = h.sessions.get(session.session_id, NOW)
    assert after is not None and after.turns == 2


def test_session_follows_a_failover() -> None:
    h = harness({"node0": [[fault("injected fault: engine error")]]})
    who = tenant()
    session = h.sessions.open(who, 1000.0, 600.0, NOW)
    h.run(h.job(who, session_id=session.session_id))
    after = h.sessions.get(session.session_id, NOW)
    assert after is not None and after.node == "node1"


def test_session_refunded_when_every_node_fails() -> None:
    h = harness(
        {
            "node0": [[fault("injected fault: engine error")]],
            "node1": [[fault("injected fault: engine error")]],
        }
    )
    who = tenant()
    session = h.sessions.open(who, 1000.0, 600.0, NOW)
    h.run_error(h.job(who, session_id=session.session_id), Outcome(), [])
    after = h.sessions.get(session.session_id, NOW)
    assert after is not None
    assert after.spent_mu == 0.0
    assert after.active_turns == 0
    assert after.turns == 0


def test_session_over_budget_is_rate_limited_and_refunds_admission() -> None:
    h = harness()
    who = tenant()
    session = h.sessions.open(who, 0.01, 600.0, NOW)  # far below one request's MU
    error = h.run_error(h.job(who, session_id=session.session_id), Outcome(), [])
    assert isinstance(error, RateLimited)
    assert h.ledger()["reserved"]["refunded"] == 1
    assert h.channels["node0"].calls == []


def test_unknown_session_is_not_found() -> None:
    h = harness()
    error = h.run_error(h.job(session_id="no-such-session"), Outcome(), [])
    assert isinstance(error, NotFound)
    assert h.ledger()["reserved"]["refunded"] == 1


def test_another_tenants_session_is_not_found() -> None:
    h = harness()
    other = h.sessions.open(tenant("other"), 1000.0, 600.0, NOW)
    error = h.run_error(h.job(session_id=other.session_id), Outcome(), [])
    assert isinstance(error, NotFound)


# -- a client that leaves ------------------------------------------------------------------
def test_client_closing_the_stream_settles_and_frees_the_node() -> None:
    h = harness()
    outcome = Outcome()

    async def first_only() -> None:
        stream = _generator(h.pipeline.run(h.job(), outcome))
        await anext(stream)
        await stream.aclose()

    asyncio.run(first_only())
    ledger = h.ledger()
    assert (ledger["reserved"]["settled"], ledger["reserved"]["refunded"]) == (1, 0)
    assert h.inflight() == {"node0": {}, "node1": {}}


def test_client_closing_the_stream_is_charged_for_what_streamed() -> None:
    h = harness()
    who = tenant()
    session = h.sessions.open(who, 1000.0, 600.0, NOW)

    async def first_only() -> None:
        stream = _generator(h.pipeline.run(h.job(who, session_id=session.session_id), Outcome()))
        await anext(stream)  # 2 tokens reached the client
        await stream.aclose()

    asyncio.run(first_only())
    expected = h.cost.actual(RequestShape(prompt_tokens=PROMPT_TOKENS, output_tokens=2))
    assert h.ledger()["reserved"]["settled_actual_mu"] == pytest.approx(expected)
    after = h.sessions.get(session.session_id, NOW)
    assert after is not None and after.spent_mu == pytest.approx(expected)


# -- OpenAI n > 1 pricing ------------------------------------------------------------------
def test_openai_request_with_n_is_priced_for_every_choice(tiny_model_dir: Path) -> None:
    h = harness()
    model = ServedModel(ModelConfig(name=MODEL, tokenizer_dir=tiny_model_dir))
    front = OpenAIFront(SimpleNamespace(sessions=h.sessions))
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    request = Request(scope)
    who = tenant()

    def price(n: int) -> float:
        req = CompletionRequest.model_validate({"model": MODEL, "prompt": "hello", "n": n})
        job = front._job(request, who, model, req, "hello there", MAX_TOKENS)
        return h.pipeline.price(job)[PAIR]

    assert price(4) > price(1)
