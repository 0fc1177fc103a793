"""One request through the router: price → admit → prioritise → route → forward → account.

Every front door (OpenAI, KServe v2 HTTP and gRPC) turns its request into a :class:`Job`
holding the KServe ``ModelInferRequest`` the node will get, and reads the node's responses
back from :meth:`Pipeline.run`. The pure parts (cost model, admission, priorities,
policy, node table) are plain objects; this module is where they meet the network.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from tritonclient.grpc import service_pb2

from router.admission import (
    Admission,
    PriorityMapper,
    SessionError,
    SessionTable,
    TenantConfig,
    Ticket,
)
from router.cost_model import CostModel, RequestShape
from router.errors import (
    BadRequest,
    NoCapacity,
    NotFound,
    RateLimited,
    RouterError,
)
from router.fleet import NodeTable
from router.forward import AttemptSink, Forwarder
from router.health.config import FailoverConfig
from router.metrics import RouterMetrics
from router.models import ServedModel
from router.output_length import OutputLengthEstimator
from router.policies import Policy, RequestView
from router.upstream import NodeChannel
from router.wire import read_output, set_parameter

PRIORITY_PARAMETER = "priority_level"
"""The level again, as a request parameter for engines that schedule internally."""


@dataclass
class Job:
    """A priced-to-be request with the tensors its node will receive."""

    tenant: TenantConfig
    model: ServedModel
    request: service_pb2.ModelInferRequest
    prompt_ids: list[int]
    max_tokens: int
    session_id: str | None = None
    requested_priority: int | None = None
    timeout_s: float | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class Outcome:
    """What the router learnt from one finished job (for usage, metrics and tests)."""

    node: str | None = None
    priority: int = 0
    estimated_mu: float = 0.0
    actual_mu: float = 0.0
    output_tokens: int = 0
    ttft_s: float | None = None
    attempts: int = 0
    admission: str = ""
    route_reason: str = ""


@dataclass
class PipelineSettings:
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    request_timeout_s: float = 300.0
    headroom_window_s: float = 1.0
    """In-flight MU counts as work due within this window when judging fleet headroom."""


class Pipeline:
    """The request path shared by every front door."""

    def __init__(
        self,
        *,
        table: NodeTable,
        channels: Mapping[str, NodeChannel],
        node_pairs: Mapping[str, str],
        costs: Mapping[str, CostModel],
        policy: Policy,
        policy_name: str,
        admission: Admission,
        sessions: SessionTable,
        priorities: PriorityMapper,
        estimator: OutputLengthEstimator,
        metrics: RouterMetrics,
        settings: PipelineSettings | None = None,
        sink: AttemptSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.channels = channels
        self.node_pairs = node_pairs
        self.costs = costs
        self.policy = policy
        self.policy_name = policy_name
        self.admission = admission
        self.sessions = sessions
        self.priorities = priorities
        self.estimator = estimator
        self.metrics = metrics
        self.settings = settings or PipelineSettings()
        self.clock = clock
        self._model_pairs: dict[str, set[str]] = {}
        """The pairs of the nodes that serve each model (node configurations are fixed)."""
        for node in table.names:
            for model in table.config(node).models:
                self._model_pairs.setdefault(model, set()).add(node_pairs[node])
        self.forwarder = Forwarder(
            table=table,
            channels=channels,
            policy=policy,
            policy_name=policy_name,
            metrics=metrics,
            hooks=self,
            settings=self.settings.failover,
            sink=sink,
            clock=clock,
        )

    # -- pricing --------------------------------------------------------------------------
    def price(self, job: Job) -> dict[str, float]:
        """MU of ``job`` on each pair that serves its model (expected output learnt)."""
        expected = self.estimator.expected(job.tenant.name, job.model.name, job.max_tokens)
        pairs = self._model_pairs.get(job.model.name, ())
        return {
            pair: self.costs[pair].estimate(len(job.prompt_ids), job.max_tokens, 0, expected)
            for pair in pairs
        }

    def _fleet(self, model: str, now: float) -> tuple[float, float]:
        """Capacity (MU/s) of the routable nodes serving ``model`` and their headroom."""
        capacity = inflight = 0.0
        for snap in self.table.snapshot(now):
            if snap.state.routable and model in snap.models:
                capacity += snap.capacity_mu_s
                inflight += snap.inflight_mu + snap.reserved_mu
        headroom = capacity - inflight / self.settings.headroom_window_s
        return capacity, max(headroom, 0.0)

    # -- the request path --------------------------------------------------------------------
    async def run(
        self, job: Job, outcome: Outcome | None = None
    ) -> AsyncIterator[service_pb2.ModelInferResponse]:
        """Admit, route and forward ``job``; yields the node's responses in order.

        Raises a :class:`RouterError` for anything the caller must answer with an error.
        """
        outcome = outcome if outcome is not None else Outcome()
        now = self.clock()
        mu_by_pair = self.price(job)
        if not mu_by_pair:
            raise NoCapacity(f"no node serves model {job.model.name}")
        estimate = sum(mu_by_pair.values()) / len(mu_by_pair)
        outcome.estimated_mu = estimate
        capacity, headroom = self._fleet(job.model.name, now)
        ticket = self.admission.admit(job.tenant, estimate, now, headroom, capacity)
        outcome.admission = ticket.kind
        if ticket.kind == "rejected":
            self.metrics.rejected_requests.labels(job.tenant.name).inc()
            self.metrics.rejected_mu.labels(job.tenant.name).inc(estimate)
            raise RateLimited(
                f"tenant {job.tenant.name} is over its MU reservation and the fleet has no "
                "headroom for best-effort work",
                ticket.retry_after_s,
            )
        self.metrics.admitted_requests.labels(job.tenant.name, ticket.kind).inc()
        self.metrics.admitted_mu.labels(job.tenant.name, ticket.kind).inc(ticket.charged_mu)
        if job.session_id is not None:
            try:
                self.sessions.draw(job.session_id, estimate, now, tenant=job.tenant.name)
            except SessionError as exc:
                self.admission.refund(ticket, now)
                raise _session_error(job.session_id, exc) from exc
        outcome.priority = self._priority(job, estimate)
        started = time.perf_counter()
        streamed = False
        counted = TokenCount()

        def count(response: service_pb2.ModelInferResponse) -> None:
            counted.add(response)
            outcome.output_tokens = counted.total

        forward = self._forward(job, mu_by_pair, outcome, count)
        try:
            async for response in forward:
                if not streamed:
                    outcome.ttft_s = time.perf_counter() - started
                    streamed = True
                yield response
        except BaseException:
            # A caller that left (or any failure) closes the node call first, so that the
            # node's ledger is freed and the actual MU known before the charge settles.
            await forward.aclose()
            if not streamed:
                self.admission.refund(ticket, self.clock())
                if job.session_id is not None:
                    self.sessions.refund(job.session_id, estimate, self.clock())
                raise
            self._settle(job, ticket, outcome)
            raise
        self._settle(job, ticket, outcome)
        self._observe(job, outcome, started)

    def _priority(self, job: Job, estimate: float) -> int:
        """The Triton level: the tenant's tier and price, or what it asked for, clamped to
        the tenant's ``max_priority`` (never the canaries' level 1)."""
        requested = int(job.requested_priority) if job.requested_priority else None
        return self.priorities.level(
            job.tenant.tier, estimate, 0.0, job.tenant.max_priority, requested=requested
        )

    def _forward(
        self,
        job: Job,
        mu_by_pair: dict[str, float],
        outcome: Outcome,
        count: Callable[[service_pb2.ModelInferResponse], None],
    ) -> AsyncGenerator[service_pb2.ModelInferResponse, None]:
        """Route and stream through the :class:`~router.forward.Forwarder`."""
        view = RequestView(
            request_id=job.request_id,
            tenant=job.tenant.name,
            model=job.model.name,
            prompt_tokens=len(job.prompt_ids),
            max_tokens=job.max_tokens,
            mu_by_pair=mu_by_pair,
            session_id=job.session_id,
            block_hashes=job.model.blocks(job.prompt_ids),
            block_size=job.model.config.block_size,
            priority=outcome.priority,
        )
        request = job.request
        request.parameters["priority"].uint64_param = outcome.priority
        set_parameter(request, PRIORITY_PARAMETER, outcome.priority)
        timeout_s = job.timeout_s or self.settings.request_timeout_s
        request.parameters["timeout"].int64_param = int(timeout_s * 1e6)
        return self.forwarder.forward(job, view, outcome, timeout_s, count)

    # -- the forwarder's hooks ---------------------------------------------------------------
    def attempt_started(self, job: Job, view: RequestView, node: str, now: float) -> None:
        self.table.set_reserved(self.sessions.reserved_by_node())
        self.policy.on_routed(view, node, now)
        self._session_landed(job, node)
        self.table.start(node, job.request_id, view.mu_by_pair.get(self.node_pairs[node], 0.0), now)
        self._gauges(node)

    def first_token(self, job: Job, view: RequestView, node: str) -> None:
        """The prompt is prefilled: the node's ledger keeps only the decode share."""
        pair = self.node_pairs[node]
        held = view.mu_by_pair.get(pair, 0.0)
        self.table.first_token(
            node, job.request_id, held - self.costs[pair].prefill_mu(view.prompt_tokens)
        )

    def attempt_ended(self, job: Job, view: RequestView, node: str, outcome: Outcome) -> None:
        outcome.actual_mu = self._actual(job, outcome, node)
        now = self.clock()
        self.table.finish(node, job.request_id, now)
        self.policy.on_finished(view, node, now)
        self._gauges(node)

    def _session_landed(self, job: Job, node: str) -> None:
        if job.session_id is None:
            return
        session = self.sessions.get(job.session_id, self.clock(), tenant=job.tenant.name)
        if session is None:
            return
        if session.node == node:
            self.metrics.affinity_hits.labels(job.tenant.name).inc()
        self.sessions.set_node(job.session_id, node, self.clock())

    # -- accounting ---------------------------------------------------------------------------
    def _actual(self, job: Job, outcome: Outcome, node: str) -> float:
        cost = self.costs[self.node_pairs[node]]
        shape = RequestShape(prompt_tokens=len(job.prompt_ids), output_tokens=outcome.output_tokens)
        return cost.actual(shape)

    def _settle(self, job: Job, ticket: Ticket, outcome: Outcome) -> None:
        now = self.clock()
        self.admission.settle(ticket, outcome.actual_mu, now)
        if job.session_id is not None:
            self.sessions.settle(job.session_id, outcome.estimated_mu, outcome.actual_mu, now)
        self.metrics.settled_mu.labels(job.tenant.name).inc(outcome.actual_mu)
        if outcome.estimated_mu > 0:
            self.metrics.estimate_ratio.labels(job.tenant.name).observe(
                outcome.actual_mu / outcome.estimated_mu
            )

    def _observe(self, job: Job, outcome: Outcome, started: float) -> None:
        node = outcome.node or ""
        self.estimator.observe(
            job.tenant.name, job.model.name, job.max_tokens, outcome.output_tokens
        )
        self.metrics.requests.labels(job.tenant.name, node, "ok").inc()
        if outcome.ttft_s is not None:
            self.metrics.ttft.labels(job.tenant.name, node).observe(outcome.ttft_s)
            if outcome.output_tokens > 1:
                decode = time.perf_counter() - started - outcome.ttft_s
                self.metrics.tpot.labels(job.tenant.name, node).observe(
                    decode / (outcome.output_tokens - 1)
                )

    def _gauges(self, node: str) -> None:
        snap = self.table.snapshot_of(node, self.clock())
        self.metrics.inflight_mu.labels(node).set(snap.inflight_mu)
        self.metrics.utilisation.labels(node).set(snap.load_ratio)


class TokenCount:
    """Generated tokens of one request, from its responses.

    ``num_output_tokens`` (which the router asks every node for) is each sequence's running
    count, so the last value per (batch index, sequence index) is exact whether the prompt
    is echoed (``exclude_input_in_output`` false) or texts accumulate (BLS
    ``accumulate_tokens``). Without it, ``sequence_length`` (else ``output_ids``) of each
    response is summed.
    """

    def __init__(self) -> None:
        self._by_sequence: dict[tuple[int, int], int] = {}
        self._summed = 0

    def add(self, response: service_pb2.ModelInferResponse) -> None:
        counts = read_output(response, "num_output_tokens")
        if counts is not None and counts.size:
            batch = read_output(response, "batch_index")
            seq = read_output(response, "sequence_index")
            for row, count in enumerate(np.asarray(counts).reshape(-1)):
                key = (
                    row if batch is None or batch.size <= row else int(batch.reshape(-1)[row]),
                    0 if seq is None or seq.size <= row else int(seq.reshape(-1)[row]),
                )
                self._by_sequence[key] = max(self._by_sequence.get(key, 0), int(count))
            return
        lengths = read_output(response, "sequence_length")
        if lengths is not None:
            self._summed += int(np.asarray(lengths).sum())
            return
        ids = read_output(response, "output_ids")
        if ids is not None:
            self._summed += int(np.asarray(ids).size)

    @property
    def total(self) -> int:
        return sum(self._by_sequence.values()) + self._summed


def _session_error(session_id: str, exc: SessionError) -> RouterError:
    status = getattr(exc, "status_code", 400)
    message = f"session {session_id}: {exc}"
    if status == 404:
        return NotFound(message)
    if status == 429:
        return RateLimited(message, 1.0)
    return BadRequest(message)
