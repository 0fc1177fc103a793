"""Routing and streaming one job, with every way a node can let it down handled.

A request goes to the node its policy picks; what can go wrong on the way, and what the
router does:

* the node fails it, or sends no first token within ``first_token_timeout_s``, before any
  token reached the client → re-sent to another node (up to ``max_attempts`` nodes), the
  failed one excluded;
* the health monitor cordons the node while the request is there (:meth:`Forwarder.evict`)
  → the node call is cancelled and the request re-sent, or, once it has streamed, migrated;
* a stream fails mid-way (an error, ``stall_timeout_s`` of silence, an eviction) → with
  ``migrate_streams`` it continues on another node from the prompt plus the tokens already
  sent (:mod:`router.migration`), and the client sees one unbroken stream;
* a node answers tokens outside the vocabulary → treated as a node fault before the client
  sees them;
* no node is routable → the request waits (``queue_timeout_s``, at most ``max_queued`` of
  them) for one to come back, instead of failing at once.

Retries (re-sends and migrations) draw on a :class:`~router.retry_budget.RetryBudget`, so a
failing fleet cannot multiply its own load. The request's own deadline is never multiplied:
a request that ran out of time is not retried. Every attempt's outcome is reported to the
passive health judge (a client's fault never is).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from tritonclient.grpc import service_pb2

from router.errors import NoCapacity, RouterError, Timeout, classify
from router.fleet import NodeTable
from router.health.config import FailoverConfig
from router.health.probes.passive import AttemptKind
from router.metrics import RouterMetrics
from router.policies import Decision, NoCandidateError, Policy, RequestView
from router.retry_budget import RetryBudget
from router.upstream import CallHandle, NodeCallError, NodeChannel
from router.wire import read_output

if TYPE_CHECKING:
    from router.pipeline import Job, Outcome


Translate = Callable[[service_pb2.ModelInferResponse], list[service_pb2.ModelInferResponse]]


class AttemptSink(Protocol):
    """Where attempt outcomes go (the passive health judge)."""

    def record(self, node: str, kind: AttemptKind, ttft_s: float | None, now: float) -> None: ...


class AttemptHooks(Protocol):
    """What the pipeline does when an attempt starts and ends (ledger, sessions, gauges)."""

    def attempt_started(self, job: Job, view: RequestView, node: str, now: float) -> None: ...

    def first_token(self, job: Job, view: RequestView, node: str) -> None: ...

    def attempt_ended(self, job: Job, view: RequestView, node: str, outcome: Outcome) -> None: ...


@dataclass
class _Attempt:
    node: str
    handle: CallHandle
    streamed: bool = False


class _Garbage(Exception):
    """The node sent token ids outside the vocabulary."""


class Forwarder:
    """Routes and streams jobs for a :class:`~router.pipeline.Pipeline`."""

    def __init__(
        self,
        *,
        table: NodeTable,
        channels: Mapping[str, NodeChannel],
        policy: Policy,
        policy_name: str,
        metrics: RouterMetrics,
        hooks: AttemptHooks,
        settings: FailoverConfig,
        sink: AttemptSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.channels = channels
        self.policy = policy
        self.policy_name = policy_name
        self.metrics = metrics
        self.hooks = hooks
        self.settings = settings
        self.sink = sink
        self.clock = clock
        self.budget = RetryBudget(
            settings.retry_budget_ratio,
            settings.retry_budget_min_per_s,
            settings.retry_budget_window_s,
        )
        self._attempts: dict[str, dict[str, _Attempt]] = {name: {} for name in table.names}
        self._changed = asyncio.Event()
        self.queued = 0

    # -- what the health monitor calls ----------------------------------------------------
    def evict(self, node: str, reason: str, streams: bool) -> int:
        """Cancel the node's attempts (those that streamed only with ``streams``) so they
        are re-sent or migrated; returns how many."""
        moved = 0
        for attempt in list(self._attempts.get(node, {}).values()):
            if streams or not attempt.streamed:
                attempt.handle.cancel(reason)
                moved += 1
        return moved

    def fleet_changed(self) -> None:
        """Node states changed: requests waiting for a node look again."""
        self._changed.set()
        self._changed = asyncio.Event()  # waiters hold the old one

    # -- the request path --------------------------------------------------------------------
    async def forward(
        self,
        job: Job,
        view: RequestView,
        outcome: Outcome,
        timeout_s: float,
        on_response: Callable[[service_pb2.ModelInferResponse], None],
    ) -> AsyncGenerator[service_pb2.ModelInferResponse, None]:
        """The node's responses for ``job``, failing over and migrating as needed, as the
        client asked for them; ``on_response`` sees each one whole first (token counts)."""
        from router.migration import StreamLedger, prepare_request

        deadline = self.clock() + timeout_s
        self.budget.request(self.clock())
        prepare_request(job)
        ledger = StreamLedger(job)
        request = job.request
        translate: Translate | None = None
        excluded: set[str] = set()
        migrations = 0
        last_error: RouterError | None = None
        while outcome.attempts < self.settings.max_attempts:
            decision = await self._choose(view, excluded, deadline, last_error)
            node = decision.node
            outcome.attempts += 1
            outcome.node = node
            outcome.route_reason = decision.reason
            self.metrics.decisions.labels(self.policy_name, decision.kind).inc()
            attempt = _Attempt(node, CallHandle())
            self._attempts[node][job.request_id] = attempt
            self.hooks.attempt_started(job, view, node, self.clock())
            started = time.perf_counter()
            ttft: float | None = None
            try:
                stream = self.channels[node].stream(
                    request, max(deadline - self.clock(), 0.001) + 5.0, attempt.handle
                )
                async for response in self._guarded(stream, attempt, deadline, job):
                    if ttft is None:
                        ttft = time.perf_counter() - started
                        self.hooks.first_token(job, view, node)
                    outs = [response] if translate is None else translate(response)
                    for out in outs:
                        ledger.observe(out)
                        on_response(out)
                        yield ledger.for_client(out)
                if self.sink is not None:
                    self.sink.record(node, "ok", ttft, self.clock())
                return
            except (NodeCallError, _Garbage, TimeoutError) as exc:
                error, retry = self._judge(exc, node, attempt, deadline)
                if not retry:
                    raise error from exc
                last_error = error
                excluded.add(node)
                streamed = ledger.streamed
                if streamed and not (
                    self.settings.migrate_streams
                    and migrations < self.settings.max_migrations
                    and ledger.migratable
                ):
                    raise error from exc
                if not self.budget.try_retry(self.clock()):
                    self.metrics.retry_budget_refused.inc()
                    raise error from exc
                if streamed:
                    continuation = ledger.continuation()
                    request, translate = continuation.request, continuation.translate
                    migrations += 1
                    self.metrics.migrations.labels(node).inc()
                else:
                    self.metrics.failovers.labels(node).inc()
            finally:
                self._attempts[node].pop(job.request_id, None)
                self.hooks.attempt_ended(job, view, node, outcome)
        raise last_error or NoCapacity("no node could serve the request")

    async def _guarded(
        self,
        stream: AsyncGenerator[service_pb2.ModelInferResponse, None],
        attempt: _Attempt,
        deadline: float,
        job: Job,
    ) -> AsyncGenerator[service_pb2.ModelInferResponse, None]:
        """``stream`` with the first-token and stall deadlines, progress notes and the
        vocabulary check."""
        vocab = getattr(job.model, "vocab_size", None)
        try:
            while True:
                limit = (
                    self.settings.stall_timeout_s
                    if attempt.streamed
                    else self.settings.first_token_timeout_s
                )
                limit = min(limit, max(deadline - self.clock(), 0.0))
                try:
                    async with asyncio.timeout(limit):
                        response = await anext(stream)
                except StopAsyncIteration:
                    return
                now = self.clock()
                self.table.note_progress(attempt.node, now)
                if vocab is not None:
                    ids = read_output(response, "output_ids")
                    if ids is not None and ids.size:
                        flat = np.asarray(ids).reshape(-1)
                        if int(flat.max()) >= vocab:
                            raise _Garbage(f"token id {int(flat.max())} outside the vocabulary")
                attempt.streamed = True
                yield response
        finally:
            await stream.aclose()

    def _judge(
        self, exc: Exception, node: str, attempt: _Attempt, deadline: float
    ) -> tuple[RouterError, bool]:
        """The error to answer with, and whether another node may try."""
        now = self.clock()
        if isinstance(exc, _Garbage):
            self.metrics.node_errors.labels(node, "garbage").inc()
            if self.sink is not None:
                self.sink.record(node, "garbage", None, now)
            return classify("garbage").as_error(node, f"node sent garbage: {exc}"), True
        if isinstance(exc, TimeoutError):
            if now >= deadline:
                return Timeout(f"the request ran out of time on node {node}"), False
            phase = "a first token" if not attempt.streamed else "the next token"
            message = f"node {node} sent no {phase} in time"
            self.metrics.node_errors.labels(node, "stalled").inc()
            if self.sink is not None:
                self.sink.record(node, "node_fault", None, now)
            return classify(message).as_error(node, message), True
        assert isinstance(exc, NodeCallError)
        if attempt.handle.reason is not None:  # evicted: the node is already cordoned
            return classify(exc.message).as_error(node, exc.message), True
        fault = classify(exc.message)
        error = fault.as_error(node, exc.message)
        if fault.fault == "client":
            return error, False
        self.metrics.node_errors.labels(node, fault.fault).inc()
        if self.sink is not None:
            self.sink.record(node, "node_fault", None, now)
        # The node's timeout is the request's own deadline (the router sets it): never
        # multiplied by a retry.
        return error, fault.fault != "timeout"

    async def _choose(
        self,
        view: RequestView,
        excluded: set[str],
        deadline: float,
        last_error: RouterError | None,
    ) -> Decision:
        """The policy's pick among nodes not yet tried; waits (bounded) while none is
        routable at all."""
        loop = asyncio.get_running_loop()
        wait_until: float | None = None  # on the loop's clock: the wait is real time
        while True:
            now = self.clock()
            snapshots = self.table.snapshot(now)
            candidates = [s for s in snapshots if s.name not in excluded]
            try:
                return self.policy.choose(view, candidates, now)
            except NoCandidateError as exc:
                failure = last_error or NoCapacity(str(exc))
                if any(s.state.routable and view.model in s.models for s in snapshots):
                    raise failure from exc  # only nodes already tried are left
                if wait_until is None:
                    budget = min(deadline - now, self.settings.queue_timeout_s)
                    if budget <= 0 or self.queued >= self.settings.max_queued:
                        raise failure from exc
                    wait_until = loop.time() + budget
                left = wait_until - loop.time()
                if left <= 0:
                    raise failure from exc
                await self._wait_for_change(left)

    async def _wait_for_change(self, timeout_s: float) -> None:
        event = self._changed
        self.queued += 1
        self.metrics.queued_requests.set(self.queued)
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            self.queued -= 1
            self.metrics.queued_requests.set(self.queued)
