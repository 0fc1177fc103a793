"""Routed load on null upstreams: clients for each front door and the timed levels."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import null_upstream
import numpy as np
from router_bench_common import (
    MODEL,
    TENANT_KEY,
    RouterProcess,
    cpu_seconds,
    loadavg,
    log,
    pct_ms,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mufleet.tiny_model import CORPUS_PATH
from router.wire import build_request, is_final

HERE = Path(__file__).resolve()
"""A bench script (``HERE.parents[1]`` is the repository)."""
TARGETS = ("grpc-stream", "grpc-unary", "grpc-mux", "openai")
METADATA = (("authorization", f"Bearer {TENANT_KEY}"),)
TARGET_RPS = 2000.0
TARGET_RATIO = 0.95


# -- requests --------------------------------------------------------------------------------
def prompt_text(words: int, offset: int = 0) -> str:
    corpus = CORPUS_PATH.read_text().split()
    start = (offset * 37) % max(len(corpus) - words, 1)
    text = corpus[start : start + words]
    while len(text) < words:
        text += corpus[: words - len(text)]
    return " ".join(text)


def infer_request(prompt: str, max_tokens: int) -> service_pb2.ModelInferRequest:
    return build_request(
        "ensemble",
        {
            "text_input": np.array([[prompt.encode("utf-8")]], dtype=object),
            "max_tokens": np.array([[max_tokens]], dtype=np.int32),
        },
    )


class GrpcClient:
    """Raw grpc.aio stubs to one or more endpoints (round-robin), one prebuilt request."""

    def __init__(self, urls: Sequence[str], request: service_pb2.ModelInferRequest) -> None:
        self.urls = list(urls)
        self.request = request
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[service_pb2_grpc.GRPCInferenceServiceStub] = []
        self._next = 0

    async def open(self) -> None:
        self._channels = [grpc.aio.insecure_channel(u) for u in self.urls]
        self._stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in self._channels]
        for channel in self._channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=10)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    def _stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        self._next += 1
        return self._stubs[self._next % len(self._stubs)]

    async def stream(self) -> None:
        call = self._stub().ModelStreamInfer(iter([self.request]), metadata=METADATA)
        final = False
        async for message in call:
            if message.error_message:
                raise RuntimeError(message.error_message)
            final = final or is_final(message.infer_response)
        if not final:
            raise RuntimeError("the stream ended without a final response")

    async def unary(self) -> None:
        response = await self._stub().ModelInfer(self.request, metadata=METADATA)
        if not len(response.outputs):
            raise RuntimeError("a response without outputs")


class MuxClient:
    """One long-lived ``ModelStreamInfer`` call per endpoint, requests multiplexed on it by
    request id (what ``tritonclient``'s ``start_stream`` does): no per-request RPC setup."""

    def __init__(self, urls: Sequence[str], request: service_pb2.ModelInferRequest) -> None:
        self.urls = list(urls)
        self.request = request
        self._channels: list[grpc.aio.Channel] = []
        self._queues: list[asyncio.Queue[service_pb2.ModelInferRequest | None]] = []
        self._readers: list[asyncio.Task[None]] = []
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._next = 0

    async def open(self) -> None:
        for url in self.urls:
            channel = grpc.aio.insecure_channel(url)
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
            queue: asyncio.Queue[service_pb2.ModelInferRequest | None] = asyncio.Queue()

            async def requests(
                queue: asyncio.Queue[service_pb2.ModelInferRequest | None] = queue,
            ) -> AsyncIterator[service_pb2.ModelInferRequest]:
                while (item := await queue.get()) is not None:
                    yield item

            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            call = stub.ModelStreamInfer(requests(), metadata=METADATA)
            self._channels.append(channel)
            self._queues.append(queue)
            self._readers.append(asyncio.create_task(self._read(call)))

    async def _read(self, call: Any) -> None:
        try:
            async for message in call:
                if message.error_message:
                    # The router's per-request errors carry no id: fail every waiter.
                    self._fail(RuntimeError(message.error_message))
                    continue
                response = message.infer_response
                if is_final(response):
                    future = self._pending.pop(response.id, None)
                    if future is not None and not future.done():
                        future.set_result(None)
        except grpc.aio.AioRpcError as exc:
            self._fail(RuntimeError(f"{exc.code().name}: {exc.details()}"))

    def _fail(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        for queue in self._queues:
            queue.put_nowait(None)
        for reader in self._readers:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(reader, timeout=5)
        for channel in self._channels:
            await channel.close()

    async def send(self) -> None:
        self._next += 1
        request = service_pb2.ModelInferRequest()
        request.CopyFrom(self.request)
        request.id = str(self._next)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = future
        self._queues[self._next % len(self._queues)].put_nowait(request)
        await future


class OpenAIClient:
    """``POST /v1/completions`` over one ``httpx.AsyncClient`` (keep-alive pool)."""

    def __init__(self, base_url: str, concurrency: int, prompt: str, max_tokens: int) -> None:
        self.base_url = base_url
        self.concurrency = concurrency
        self.body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens})
        self.headers = {
            "Authorization": f"Bearer {TENANT_KEY}",
            "Content-Type": "application/json",
        }
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        self._client = httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=30)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def completions(self) -> None:
        assert self._client is not None
        response = await self._client.post(
            "/v1/completions", content=self.body, headers=self.headers
        )
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")


# -- one level -------------------------------------------------------------------------------
@dataclass
class LevelResult:
    target: str
    path: str
    """``router`` or ``direct`` (straight to the null upstreams)."""
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    cpu_us_per_request: dict[str, float]
    """CPU µs per completed request: ``client``, ``router``, ``upstreams``."""
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float]
    first_error: str | None = None


async def run_level(
    send: Callable[[], Awaitable[None]],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    pids: dict[str, list[int]],
) -> tuple[list[float], int, int, str | None, dict[str, float]]:
    """Closed-loop workers for ``warmup_s + duration_s``; returns the latencies of requests
    sent and finished inside the measured window, completions in it, errors, the first
    error and the CPU seconds each process group used in the window."""
    t_start = time.perf_counter()
    window_start = t_start + warmup_s
    window_end = window_start + duration_s
    latencies: list[float] = []
    completed = 0
    errors = 0
    first_error: str | None = None

    async def worker() -> None:
        nonlocal completed, errors, first_error
        while True:
            t0 = time.perf_counter()
            if t0 >= window_end:
                return
            try:
                await send()
            except Exception as exc:
                t1 = time.perf_counter()
                if window_start <= t1 <= window_end:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                await asyncio.sleep(0.001)
                continue
            t1 = time.perf_counter()
            if window_start <= t1 <= window_end:
                completed += 1
                if t0 >= window_start:
                    latencies.append(t1 - t0)

    def sample() -> dict[str, float]:
        out = {"client": time.process_time()}
        for group, group_pids in pids.items():
            out[group] = sum(cpu_seconds(p) for p in group_pids)
        return out

    cpu: dict[str, float] = {}

    async def sampler() -> None:
        await asyncio.sleep(max(window_start - time.perf_counter(), 0))
        before = sample()
        await asyncio.sleep(max(window_end - time.perf_counter(), 0))
        after = sample()
        cpu.update({k: after[k] - before[k] for k in before})

    await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
    return latencies, completed, errors, first_error, cpu


async def measure(
    target: str,
    path: str,
    send: Callable[[], Awaitable[None]],
    concurrency: int,
    args: argparse.Namespace,
    pids: dict[str, list[int]],
) -> LevelResult:
    before = loadavg()
    latencies, completed, errors, first_error, cpu = await run_level(
        send, concurrency, args.duration, args.warmup, pids
    )
    per_request = {k: (v / completed * 1e6 if completed else float("nan")) for k, v in cpu.items()}
    result = LevelResult(
        target=target,
        path=path,
        concurrency=concurrency,
        duration_s=args.duration,
        requests=completed,
        errors=errors,
        requests_per_s=completed / args.duration,
        p50_ms=pct_ms(latencies, 50),
        p90_ms=pct_ms(latencies, 90),
        p99_ms=pct_ms(latencies, 99),
        mean_ms=float(np.mean(latencies)) * 1000 if latencies else float("nan"),
        cpu_us_per_request=per_request,
        loadavg_before=before,
        loadavg_after=loadavg(),
        first_error=first_error,
    )
    log(
        f"{target:>11} {path:>6} c={concurrency:<3} {result.requests_per_s:7.0f} req/s  "
        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  errors {errors}  "
        f"cpu us/req "
        + " ".join(f"{k}={v:.0f}" for k, v in per_request.items())
        + f"  load {result.loadavg_after[0]}"
    )
    if first_error:
        log(f"  first error: {first_error}")
    return result


async def run_all(
    args: argparse.Namespace,
    router: RouterProcess,
    upstreams: Sequence[null_upstream.NullUpstream],
    levels: Sequence[int],
    targets: Sequence[str],
) -> list[LevelResult]:
    request = infer_request(prompt_text(args.prompt_words), args.max_tokens)
    via_router = GrpcClient([router.grpc], request)
    direct = GrpcClient([u.grpc_url for u in upstreams], request)
    await via_router.open()
    await direct.open()
    pids = {"router": [router.pid], "upstreams": [u.pid for u in upstreams]}
    results: list[LevelResult] = []
    try:
        for level in levels:
            for target in targets:
                sends: list[tuple[str, Callable[[], Awaitable[None]]]] = []
                openai: OpenAIClient | None = None
                muxes: list[MuxClient] = []
                if target == "grpc-stream":
                    sends = [("direct", direct.stream), ("router", via_router.stream)]
                elif target == "grpc-unary":
                    sends = [("direct", direct.unary), ("router", via_router.unary)]
                elif target == "grpc-mux":
                    muxes = [
                        MuxClient([u.grpc_url for u in upstreams], request),
                        MuxClient([router.grpc], request),
                    ]
                    for mux in muxes:
                        await mux.open()
                    sends = [("direct", muxes[0].send), ("router", muxes[1].send)]
                else:
                    openai = OpenAIClient(
                        f"http://{router.http}",
                        level,
                        prompt_text(args.prompt_words),
                        args.max_tokens,
                    )
                    await openai.open()
                    sends = [("router", openai.completions)]
                if args.no_direct:
                    sends = [s for s in sends if s[0] == "router"]
                try:
                    for path, send in sends:
                        results.append(await measure(target, path, send, level, args, pids))
                finally:
                    if openai is not None:
                        await openai.close()
                    for mux in muxes:
                        await mux.close()
    finally:
        await via_router.close()
        await direct.close()
    return results
