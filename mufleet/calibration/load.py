"""Closed-loop load on the engine model, timed by the engine itself.

Requests go to the engine model (``tensorrt_llm``) as token ids, the way TensorRT-LLM's own
benchmarks drive an engine, and ask for ``return_perf_metrics``: the engine reports when
each request arrived, produced its first token and its last. TTFT and TPOT are taken from
those timestamps, so neither the client nor the tokenizer and detokenizer steps of the
ensemble (host work, not GPU work) enter the figures, and no request needs to stream: one
response per request keeps the host's share of the work small at any rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

from mufleet.streaming_client import token_inputs

NS = 1e-9


@dataclass(frozen=True)
class EngineTiming:
    """One request: client wall times (``perf_counter``) and the engine's own timestamps."""

    sent_at: float
    """When its slot of the closed loop began it (built its inputs, then sent them)."""
    finished_at: float
    arrival_ns: int = 0
    first_token_ns: int = 0
    last_token_ns: int = 0
    tokens: int = 0
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        """Arrival at the engine to its first token (wall seconds)."""
        if self.error or not (self.first_token_ns and self.arrival_ns):
            return None
        return (self.first_token_ns - self.arrival_ns) * NS

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (wall seconds)."""
        if self.error or self.tokens < 2 or not self.first_token_ns:
            return None
        return (self.last_token_ns - self.first_token_ns) * NS / (self.tokens - 1)

    @property
    def engine_s(self) -> float | None:
        """Arrival to last token: how long the request was the engine's."""
        if self.error or not (self.last_token_ns and self.arrival_ns):
            return None
        return (self.last_token_ns - self.arrival_ns) * NS


@dataclass(frozen=True)
class LoadRun:
    """The measured requests of one closed-loop run: sent after the loop filled up and
    finished before it started to drain (see :func:`closed_loop`)."""

    concurrency: int
    timings: list[EngineTiming]

    @property
    def errors(self) -> list[str]:
        return [t.error for t in self.timings if t.error is not None]

    @property
    def wall_s(self) -> float:
        return max(t.finished_at for t in self.timings) - min(t.sent_at for t in self.timings)

    def steady_rps(self) -> float:
        """Successful completions per second while the loop was full, by Little's law.

        Each of the ``concurrency`` slots begins its next request the moment its last one
        ends, so the loop completes ``concurrency`` requests per mean cycle (a measured
        request's ``sent_at`` to ``finished_at``), whatever the order or spacing of the
        completions. Counting completions between two instants instead depends on where the
        instants fall: identical requests drift into lockstep waves, and a window that opens
        on one wave's completions and closes on another's counts a wave too many.
        """
        cycles = [t.finished_at - t.sent_at for t in self.timings]
        mean_cycle = sum(cycles) / len(cycles) if cycles else 0.0
        if mean_cycle <= 0:
            return float("nan")
        succeeded = sum(1 for t in self.timings if t.error is None) / len(self.timings)
        return self.concurrency * succeeded / mean_cycle

    def values(self, metric: str) -> list[float]:
        """``ttft_s``, ``tpot_s`` or ``engine_s`` of every request that has it."""
        return [v for t in self.timings if (v := getattr(t, metric)) is not None]

    def percentile(self, metric: str, q: float) -> float:
        values = self.values(metric)
        return float(np.percentile(values, q)) if values else float("nan")

    def occupancy(self) -> float:
        """The share of each request's round trip that it spent in the engine.

        In a closed loop that is the engine's mean concurrency over the client's (Little's
        law on both). Well below 1, requests spent their time in the host (Triton, the
        Python stub, the client) rather than in the engine: the host set the pace.
        """
        engine, total = [], []
        for t in self.timings:
            if t.engine_s is not None:
                engine.append(t.engine_s)
                total.append(t.finished_at - t.sent_at)
        if not engine or sum(total) <= 0:
            return float("nan")
        return min(sum(engine) / sum(total), 1.0)


def _perf(result: grpcclient.InferResult, name: str) -> int:
    array = result.as_numpy(name)
    return 0 if array is None or array.size == 0 else int(array.reshape(-1)[0])


async def _one(
    client: grpcaio.InferenceServerClient,
    model: str,
    inputs: list[grpcclient.InferInput],
    timeout_s: float,
    sent: float,
) -> EngineTiming:
    async def requests() -> AsyncIterator[dict[str, object]]:
        yield {"model_name": model, "inputs": inputs}

    final: grpcclient.InferResult | None = None
    tokens = 0
    try:
        async for result, err in client.stream_infer(requests(), stream_timeout=timeout_s):
            if err is not None:
                return EngineTiming(sent, time.perf_counter(), error=str(err))
            ids = result.as_numpy("output_ids")
            tokens += 0 if ids is None else int(ids.size)
            flag = result.get_response().parameters.get("triton_final_response")
            if flag is None or flag.bool_param:
                final = result
                break
    except Exception as exc:  # one failed request must not end the run
        return EngineTiming(sent, time.perf_counter(), error=f"{type(exc).__name__}: {exc}")
    if final is None:
        return EngineTiming(sent, time.perf_counter(), error="no final response")
    return EngineTiming(
        sent,
        time.perf_counter(),
        _perf(final, "arrival_time_ns"),
        _perf(final, "first_token_time_ns"),
        _perf(final, "last_token_time_ns"),
        tokens,
    )


def request_inputs(
    input_ids: Sequence[int], output_tokens: int, end_id: int
) -> list[grpcclient.InferInput]:
    """A non-streaming engine request of exactly ``output_tokens`` tokens, with perf metrics."""
    inputs = token_inputs(
        input_ids, output_tokens, end_id=end_id, min_tokens=output_tokens, stream=False
    )
    flag = grpcclient.InferInput("return_perf_metrics", [1, 1], "BOOL")
    flag.set_data_from_numpy(np.array([[True]], dtype=bool))
    return [*inputs, flag]


async def _closed_loop(
    url: str,
    model: str,
    make_inputs: Callable[[int], list[grpcclient.InferInput]],
    concurrency: int,
    count: int,
    ramp: int,
    stagger_s: float,
    timeout_s: float,
    on_window: Callable[[str], None],
) -> LoadRun:
    client = grpcaio.InferenceServerClient(url)
    loop = asyncio.get_running_loop()
    marks: list[asyncio.Future[None]] = []
    next_index = 0
    timings: list[EngineTiming | None] = [None] * (ramp + count)
    measured_left = count
    all_measured = asyncio.Event()

    async def worker(k: int) -> None:
        nonlocal next_index, measured_left
        await asyncio.sleep(k * stagger_s)
        while not all_measured.is_set():
            i = next_index
            next_index += 1
            if i == ramp:  # the loop is full: the measured window opens
                marks.append(loop.run_in_executor(None, on_window, "start"))
            began = time.perf_counter()
            timing = await _one(client, model, make_inputs(i), timeout_s, began)
            if ramp <= i < ramp + count:
                timings[i] = timing
                measured_left -= 1
                if measured_left == 0:
                    all_measured.set()

    workers = [asyncio.create_task(worker(k)) for k in range(concurrency)]
    try:
        await all_measured.wait()
        marks.append(loop.run_in_executor(None, on_window, "end"))
        await asyncio.gather(*marks)
    finally:
        for task in workers:  # the tail: cancelled in flight, so the loop never drains
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await client.close()
    measured = [t for t in timings[ramp:] if t is not None]
    return LoadRun(concurrency, measured)


def closed_loop(
    url: str,
    model: str,
    make_inputs: Callable[[int], list[grpcclient.InferInput]],
    concurrency: int,
    count: int,
    stagger_s: float = 0.0,
    timeout_s: float = 600.0,
    ramp: int | None = None,
    on_window: Callable[[str], None] = lambda mark: None,
) -> LoadRun:
    """``concurrency`` requests kept in flight until ``count`` measured ones are done.

    The first ``ramp`` requests (default: ``concurrency``) fill the loop and are not
    measured; requests still in flight when the last measured one finishes are cancelled,
    so every measured request ran with the loop full. Worker ``k`` starts ``k * stagger_s``
    late: identical requests started together would finish together and run in lockstep
    waves; staggered starts keep the batch full and completions evenly spread.

    ``on_window("start")`` runs (in a worker thread) as the first measured request is sent
    and ``on_window("end")`` as the last one finishes, before the tail is cancelled: what
    the node's gauges say between the two describes the measured window only.
    """
    start = time.perf_counter()
    run = asyncio.run(
        _closed_loop(
            url,
            model,
            make_inputs,
            concurrency,
            count,
            concurrency if ramp is None else ramp,
            stagger_s,
            timeout_s,
            on_window,
        )
    )
    if not run.timings or len(run.errors) == len(run.timings):
        first = run.errors[0] if run.errors else "none sent"
        raise RuntimeError(
            f"no request completed in {time.perf_counter() - start:.1f}s; first error: {first}"
        )
    return run
