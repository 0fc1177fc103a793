"""Closed-loop load against one model, and the steady-state rate it sustained."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

from mufleet.streaming_client import RequestTiming, stream_request


@dataclass(frozen=True)
class LoadRun:
    """Timings of one closed-loop run."""

    concurrency: int
    timings: list[RequestTiming]
    streamed: list[bool]

    @property
    def errors(self) -> list[str]:
        return [t.error for t in self.timings if t.error is not None]

    def steady_rps(self) -> float:
        """Requests/s over the steady part of the run.

        Completions before the ``concurrency``-th (ramp-up) and after the last
        ``concurrency`` (the draining tail, when fewer requests are in flight) are left
        out; short runs fall back to the whole run.
        """
        done = sorted(t.finished_at for t in self.timings if t.error is None)
        first, last = self.concurrency - 1, len(done) - self.concurrency
        if last - first < max(self.concurrency, 2):
            first, last = 0, len(done) - 1
        if last <= first or done[last] <= done[first]:
            wall = done[-1] - min(t.sent_at for t in self.timings)
            return len(done) / wall if wall > 0 else float("nan")
        return (last - first) / (done[last] - done[first])

    def percentile(self, metric: str, q: float) -> float:
        """``q``-th percentile of ``ttft_s`` or ``tpot_s`` over the streamed requests."""
        values = [
            getattr(t, metric)
            for t, streamed in zip(self.timings, self.streamed, strict=True)
            if streamed and t.error is None and getattr(t, metric) is not None
        ]
        return float(np.percentile(values, q)) if values else float("nan")


async def _closed_loop(
    url: str,
    model: str,
    make_inputs: Callable[[int, bool], list[grpcclient.InferInput]],
    concurrency: int,
    count: int,
    streamed: Sequence[bool],
    stagger_s: float,
) -> LoadRun:
    client = grpcaio.InferenceServerClient(url)
    next_index = 0
    timings: list[RequestTiming | None] = [None] * count

    async def worker(k: int) -> None:
        nonlocal next_index
        await asyncio.sleep(k * stagger_s)
        while next_index < count:
            i = next_index
            next_index += 1
            timings[i] = await stream_request(client, model, make_inputs(i, streamed[i]))

    try:
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    finally:
        await client.close()
    done = [t for t in timings if t is not None]
    return LoadRun(concurrency, done, list(streamed[: len(done)]))


def closed_loop(
    url: str,
    model: str,
    make_inputs: Callable[[int, bool], list[grpcclient.InferInput]],
    concurrency: int,
    count: int,
    stream_every: int = 0,
    stagger_s: float = 0.0,
) -> LoadRun:
    """``count`` requests kept ``concurrency`` in flight; every ``stream_every``-th streams.

    Worker ``k`` starts ``k * stagger_s`` late: identical requests started together would
    finish together and run in lockstep waves, where one late request runs almost alone;
    staggered starts keep the batch full and completions evenly spread.

    Streaming is what measures TTFT and TPOT, but every streamed token costs the host a
    postprocessing call; a few streamed probes among unary requests see the same engine
    batches without flooding a small host. ``stream_every=0`` streams nothing.
    """
    streamed = [stream_every > 0 and i % stream_every == 0 for i in range(count)]
    start = time.perf_counter()
    run = asyncio.run(
        _closed_loop(url, model, make_inputs, concurrency, count, streamed, stagger_s)
    )
    if not run.timings:
        raise RuntimeError(f"no request completed in {time.perf_counter() - start:.1f}s")
    return run
