"""Splitting a trace window among workers and handing it out at its timestamps."""

from __future__ import annotations

from trace_feed import TraceFeed, trace_share

from mufleet.trace_prompts import PromptBuilder
from mufleet.traces import Trace, TraceRequest


def _trace(n: int) -> Trace:
    return Trace("t", tuple(TraceRequest(float(i), 600, 50, (0, i)) for i in range(n)), 512)


def test_workers_split_the_window_without_overlap() -> None:
    trace = _trace(40)
    shares = [trace_share(trace, 10.0, 5.0, 2.0, w, 3) for w in range(3)]
    indexes = [i for share in shares for i, _ in share]
    assert sorted(indexes) == list(range(10)), "[10, 20) trace s: 10 requests in 5 s"
    assert len(set(indexes)) == len(indexes)
    arrivals = [r.arrival_s for i, r in sorted(x for s in shares for x in s)]
    assert arrivals == [i / 2 for i in range(10)], "re-based and twice as fast"


def test_the_feed_hands_requests_out_in_order_then_runs_dry() -> None:
    builder = PromptBuilder(None, 8)
    share = trace_share(_trace(3), 0.0, 10.0, 1.0)
    feed = TraceFeed([(i, builder.scale(r, i)) for i, r in share], builder)
    feed.start(500.0)
    due = [item.due_s for item in iter(feed.take, None)]
    assert due == [500.0, 501.0, 502.0]
    assert feed.take() is None
