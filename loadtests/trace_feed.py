"""This process's share of a trace window, handed to replay users in arrival order.

No Locust in here (it patches the process on import), so the logic is testable as is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mufleet.trace_prompts import PromptBuilder, ScaledRequest
from mufleet.traces import Trace, TraceRequest


def trace_share(
    trace: Trace,
    start_s: float,
    replay_s: float,
    rate_scale: float,
    worker_index: int = 0,
    workers: int = 1,
) -> list[tuple[int, TraceRequest]]:
    """This worker's requests of the replayed window, arrival times in replay seconds;
    the index is the request's position in the window (the same on every worker)."""
    if not 0 <= worker_index < max(workers, 1):
        raise ValueError(f"worker index {worker_index} outside 0..{workers - 1}")
    window = trace.window(start_s, replay_s * rate_scale).scaled(rate_scale)
    return [(i, r) for i, r in enumerate(window.requests) if i % max(workers, 1) == worker_index]


@dataclass(frozen=True)
class FeedItem:
    index: int
    request: ScaledRequest
    due_s: float
    """Wall-clock time the request is due."""


class TraceFeed:
    """The process's share of the window, handed to users one request at a time."""

    def __init__(self, requests: list[tuple[int, ScaledRequest]], builder: PromptBuilder) -> None:
        self.requests = requests
        self.builder = builder
        self.t0: float | None = None
        self._next = 0

    def start(self, t0: float) -> None:
        if self.t0 is None:
            self.t0 = t0

    def take(self) -> FeedItem | None:
        """The next request (``None`` once all are taken). Gevent switches only on I/O,
        so taking one is atomic among the users of a process."""
        if self._next >= len(self.requests):
            return None
        self.start(time.time())
        assert self.t0 is not None
        index, request = self.requests[self._next]
        self._next += 1
        return FeedItem(index, request, self.t0 + request.arrival_s)
