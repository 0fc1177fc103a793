"""The synthetic canary: a real short streaming request through the ensemble, at the top
Triton priority, on a fixed cadence whatever the traffic.

Busy is when zombies hurt, so the canary runs on busy nodes too; the engines admit the top
level ahead of a full batch (a reserved slot and KV reserve), so a busy node answers it
promptly and a hung one does not. What comes back is checked, not just its status: the
first token must arrive within the deadline, every token id must lie in the vocabulary,
the text must be non-empty and the stream must end with Triton's final flag in time. So a
node that answers 200 with garbage fails it.

The first-token deadline is the larger of ``first_token_deadline_s`` and
``adaptive_factor`` × the median first-token time of recent passing canaries across the
fleet: a fleet-wide slowdown (a busy host, a shared throttle) stretches every node alike
and fails no canary, while one node that stops answering still misses a deadline that is
a few times what its peers need.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping

import numpy as np
from tritonclient.grpc import service_pb2

from router.fleet import NodeConfig
from router.health.config import CanaryConfig
from router.health.signals import Signal, Verdict
from router.policies.base import NodeState
from router.upstream import NodeCallError, NodeChannel
from router.wire import build_request, read_output, set_parameter

CANARY_PARAMETER = "mufleet_canary"
"""Marks a canary request, so node logs and traces can tell it from real traffic."""


class CanaryProbe:
    name = "canary"

    def __init__(
        self,
        config: CanaryConfig,
        channels: Mapping[str, NodeChannel],
        vocab_size: int,
        state_of: Callable[[str], NodeState],
        *,
        priority_parameter: str = "priority_level",
        seed: int = 0,
    ) -> None:
        self.config = config
        self.channels = channels
        self.vocab_size = vocab_size
        self.state_of = state_of
        self.priority_parameter = priority_parameter
        self.rng = random.Random(seed)
        self.failures: dict[str, int] = {}
        self.recent_ttft: deque[float] = deque(maxlen=64)
        self._ids = itertools.count()

    def interval_s(self, node: str) -> float:
        c = self.config
        state = self.state_of(node)
        base = (
            c.probation_interval_s
            if state in (NodeState.PROBATION, NodeState.RESTARTING, NodeState.CORDONED)
            else c.interval_s
        )
        return base * (1.0 + self.rng.uniform(-c.jitter, c.jitter))

    def deadline_s(self) -> float:
        """The first-token deadline now (see the module docstring)."""
        floor = self.config.first_token_deadline_s
        if len(self.recent_ttft) < 5:
            return floor
        return max(floor, self.config.adaptive_factor * statistics.median(self.recent_ttft))

    async def probe(self, node: NodeConfig, now: float) -> Signal | None:
        deadline = self.deadline_s()
        started = time.perf_counter()
        ttft: float | None = None
        try:
            ttft, problem = await self._run(node.name, deadline)
        except Exception as exc:  # the probe must never take the monitor down
            problem = f"canary could not run: {type(exc).__name__}: {exc}"
        if problem is None:
            self.failures[node.name] = 0
            if ttft is not None:
                self.recent_ttft.append(ttft)
            return Signal(
                node.name,
                self.name,
                Verdict.PASS,
                f"first token in {ttft or 0:.3f} s",
                now,
                latency_s=ttft,
            )
        count = self.failures.get(node.name, 0) + 1
        self.failures[node.name] = count
        verdict = Verdict.FAIL if count >= self.config.fail_after else Verdict.SUSPECT
        elapsed = time.perf_counter() - started
        return Signal(
            node.name,
            self.name,
            verdict,
            f"{problem} ({count}× in a row)",
            now,
            latency_s=ttft if ttft is not None else elapsed,
        )

    def request(self) -> service_pb2.ModelInferRequest:
        """The canary's ``ModelInferRequest`` (a fresh id each time)."""
        c = self.config
        inputs = {
            "text_input": np.array([[c.prompt.encode()]], dtype=object),
            "max_tokens": np.array([[c.max_tokens]], dtype=np.int32),
            "min_tokens": np.array([[c.max_tokens]], dtype=np.int32),
            "stream": np.array([[True]], dtype=bool),
            "top_k": np.array([[1]], dtype=np.int32),
            "exclude_input_in_output": np.array([[True]], dtype=bool),
        }
        request = build_request(
            c.model,
            inputs,
            request_id=f"canary-{next(self._ids)}",
            outputs=("text_output", "output_ids"),
        )
        request.parameters["priority"].uint64_param = c.priority
        set_parameter(request, self.priority_parameter, c.priority)
        set_parameter(request, CANARY_PARAMETER, True)
        request.parameters["timeout"].int64_param = int(c.total_deadline_s * 1e6)
        return request

    async def _run(self, node: str, first_token_s: float) -> tuple[float | None, str | None]:
        """(first-token seconds, what was wrong or ``None``)."""
        total = max(self.config.total_deadline_s, first_token_s)
        started = time.perf_counter()
        ttft: float | None = None
        text = b""
        stream = self.channels[node].stream(self.request(), total + 1.0, wait_for_ready=True)
        final = False
        try:
            while True:
                limit = first_token_s if ttft is None else total - (time.perf_counter() - started)
                if limit <= 0:
                    return ttft, f"no complete answer within {total:g} s"
                try:
                    async with asyncio.timeout(limit):
                        response = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if ttft is None:
                        return None, f"no first token within {first_token_s:.2f} s"
                    return ttft, f"no complete answer within {total:g} s"
                if ttft is None:
                    ttft = time.perf_counter() - started
                problem = self._check(response)
                if problem is not None:
                    return ttft, problem
                out = read_output(response, "text_output")
                if out is not None:
                    text += b"".join(bytes(v) for v in np.asarray(out).reshape(-1))
                param = response.parameters.get("triton_final_response")
                if param is not None and param.bool_param:
                    final = True
        except NodeCallError as exc:
            return ttft, f"error: {exc.message[:200]}"
        finally:
            await stream.aclose()
        if not final:
            return ttft, "the stream ended without a final response"
        if not text.strip():
            return ttft, "empty text"
        return ttft, None

    def _check(self, response: service_pb2.ModelInferResponse) -> str | None:
        ids = read_output(response, "output_ids")
        if ids is None:
            return None
        flat = np.asarray(ids).reshape(-1)
        bad = flat[(flat < 0) | (flat >= self.vocab_size)]
        if bad.size:
            return f"garbage: token id {int(bad[0])} outside the vocabulary ({self.vocab_size})"
        return None
