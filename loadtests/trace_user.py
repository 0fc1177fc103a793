"""Trace replay: requests sent at a trace's timestamps, with its token counts and prefixes.

The trace window ``[--llm-trace-start, + duration × rate scale)`` is replayed
``--llm-rate-scale`` times as fast as recorded. Each process takes every
``--llm-workers``-th request (its worker index), so workers split one trace. A pool of
:class:`TraceReplayUser` (the shape's user count) takes the requests in arrival order; each
user holds the next request until its time comes, so the pool size bounds concurrency, not
the arrival rate. A request that finds every user busy goes late and its ``lag_s`` is
recorded: a replay with lag needs more users.

Prompts come from :class:`mufleet.trace_prompts.PromptBuilder`: Mooncake ``hash_ids``
become blocks of ``--llm-block-tokens`` tokens, equal ids equal text, so prefix sharing in
the trace is prefix sharing on the nodes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import gevent
from llm_options import duration_s, read_router_config
from llm_users import LlmUser
from locust import constant, task
from locust.exception import StopUser
from trace_feed import TraceFeed, trace_share

from mufleet.load.shapes import TraceReplay, build_schedule
from mufleet.trace_prompts import PromptBuilder, load_tokenizer
from mufleet.traces import load_trace

log = logging.getLogger("loadtests")


_feeds: dict[int, TraceFeed] = {}


def feed_for(environment: Any) -> TraceFeed | None:
    """The process's feed, built on first use (``None`` without ``--llm-trace``)."""
    options = environment.parsed_options
    if not options.llm_trace:
        return None
    key = id(options)
    if key not in _feeds:
        tokenizer_dir = options.llm_tokenizer or _router_tokenizer(options)
        tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir else None
        builder = PromptBuilder(
            tokenizer,
            options.llm_block_tokens,
            seed=options.llm_seed,
            max_output_tokens=options.llm_max_output,
            max_input_tokens=options.llm_max_input,
        )
        schedule = build_schedule("trace", 1, 1.0, duration_s(options), drain_s=options.llm_drain)
        assert isinstance(schedule, TraceReplay)
        replay_s = schedule.replay_s
        share = trace_share(
            load_trace(options.llm_trace, seed=options.llm_seed),
            options.llm_trace_start,
            replay_s,
            options.llm_rate_scale,
            getattr(environment.runner, "worker_index", 0) % max(options.llm_workers, 1),
            options.llm_workers,
        )
        requests = [(i, builder.scale(r, index=i)) for i, r in share]
        _feeds[key] = TraceFeed(requests, builder)
        log.warning(
            "trace %s: %d requests to replay here in %.0f s (rate x%g, %d-token blocks, "
            "tokenizer %s)",
            Path(options.llm_trace).name,
            len(requests),
            replay_s,
            options.llm_rate_scale,
            options.llm_block_tokens,
            tokenizer_dir or "none",
        )
    return _feeds[key]


def _router_tokenizer(options: Any) -> str:
    return read_router_config(options.llm_router_config).tokenizer_dir


class TraceReplayUser(LlmUser):
    """Replays trace requests at their timestamps (see the module docstring)."""

    weight = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        super().on_start()
        feed = feed_for(self.environment)
        if feed is None:
            log.error("TraceReplayUser needs --llm-trace; this user stops")
            raise StopUser()
        self.feed = feed

    @task
    def replay(self) -> None:
        item = self.feed.take()
        if item is None:
            gevent.sleep(1.0)  # the window is used up; idle until the shape ends the test
            return
        delay = item.due_s - time.time()
        if delay > 0:
            gevent.sleep(delay)
        lag = max(0.0, time.time() - item.due_s)
        prompt = self.feed.builder.prompt(item.request)
        self.llm(item.request.output_tokens, prompt=prompt, lag_s=lag)
