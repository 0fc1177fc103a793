"""How many requests per second one router process can route, with upstreams that cost nothing.

    python bench/router_capacity.py                       # 2 null upstreams, c = 1, 8, 32, 64
    python bench/router_capacity.py --concurrency 32 --duration 5 --no-profile

The upstreams are ``bench/null_upstream.py`` processes (KServe v2 gRPC servers that answer
every request at once), so what limits throughput is the router and the client. The script
starts ``--upstreams`` of them, writes a router configuration for them (one tenant with a
reservation no run can exhaust, the seeded tiny Llama's tokenizer from
``mufleet.tiny_model.default_model_dir()``, pair ``llama-3.1-8b_h100-sxm_tp1``), starts
``mufleet route`` and drives it for ``--duration`` seconds per concurrency level with
closed-loop asyncio clients (uvloop) in this process:

* ``grpc-stream``: one ``ModelStreamInfer`` call per request to ``ensemble`` (raw grpc.aio
  stubs, a prebuilt ``ModelInferRequest`` with ``text_input`` and ``max_tokens``), as
  ``mufleet.streaming_client`` and the router itself call Triton;
* ``grpc-unary``: ``ModelInfer`` with the same request;
* ``grpc-mux``: one long-lived ``ModelStreamInfer`` call per endpoint with every request
  multiplexed on it by id (as ``tritonclient``'s ``start_stream`` does);
* ``openai``: ``POST /v1/completions`` (non-streamed) with ``httpx.AsyncClient``.

The gRPC targets are also sent straight to the null upstreams (round-robin, the same
client code and metadata), so router / direct is the router's own cost. For every level it
records requests/s, latency percentiles, the CPU time per request of each process (client,
router, upstreams, from ``/proc`` via psutil) and the load average before and after, because
the host is shared.

Where the router's time goes, two ways:

* ``stages``: an in-process ``RouterService`` built from the same configuration, its node
  channels replaced by one that "answers" by parsing a serialized response (no network),
  fed the same request bytes; each stage (parse, auth, tokenize, price, admit, choose,
  metrics, …) timed with exclusive wall-clock timers. Tokenization is also timed for
  longer prompts.
* ``cprofile``: the router process re-run under ``cProfile`` (enabled only while one level
  runs), grouped by package, with its top functions.

Writes ``bench/results/router_capacity.json``; prints progress to stderr and Markdown
tables to stdout. Targets (the issue's): at least 2,000 routed requests/s and a
router / direct throughput ratio of at least 0.95.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import math
import os
import pstats
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import null_upstream
import numpy as np
from router_bench_common import (
    MODEL,
    RESULTS,
    TENANT_KEY,
    RouterProcess,
    cpu_seconds,
    host_facts,
    loadavg,
    log,
    pct_ms,
    router_config,
    start_router,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mufleet.node import NodePorts
from mufleet.tiny_model import CORPUS_PATH, default_model_dir
from router.wire import build_request, is_final

HERE = Path(__file__).resolve()
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


# -- where the time goes: stages in-process ------------------------------------------------
class StageTimer:
    """Exclusive wall-clock time per named stage; nested stages subtract from their parent."""

    def __init__(self) -> None:
        self.exclusive_ns: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[int] = []
        self.enabled = True

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._stack.append(0)
        t0 = time.perf_counter_ns()
        try:
            yield
        finally:
            elapsed = time.perf_counter_ns() - t0
            children = self._stack.pop()
            self.exclusive_ns[name] += elapsed - children
            self.calls[name] += 1
            if self._stack:
                self._stack[-1] += elapsed

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.section(name):
                return fn(*args, **kwargs)

        return timed

    def reset(self) -> None:
        self.exclusive_ns.clear()
        self.calls.clear()


class _TimedChild:
    """A prometheus_client child whose updates count as the ``metrics`` stage."""

    def __init__(self, child: Any, timer: StageTimer) -> None:
        self._child = child
        self._timer = timer

    def inc(self, *args: Any) -> None:
        with self._timer.section("metrics (prometheus_client)"):
            self._child.inc(*args)

    def set(self, *args: Any) -> None:
        with self._timer.section("metrics (prometheus_client)"):
            self._child.set(*args)

    def observe(self, *args: Any) -> None:
        with self._timer.section("metrics (prometheus_client)"):
            self._child.observe(*args)


class _WireOnlyChannel:
    """Stands in for a node: serializes the request and parses a canned serialized response,
    as a gRPC channel would, with no network."""

    def __init__(self, timer: StageTimer) -> None:
        self.timer = timer
        template = null_upstream.TEMPLATE
        self.raw = service_pb2.ModelStreamInferResponse(infer_response=template).SerializeToString()

    async def stream(self, request: service_pb2.ModelInferRequest, deadline_s: float | None) -> Any:
        with self.timer.section("upstream wire: request out, response in (protobuf)"):
            request.parameters["triton_enable_empty_final_response"].bool_param = True
            request.SerializeToString()
            message = service_pb2.ModelStreamInferResponse.FromString(self.raw)
        yield message.infer_response


STAGE_WRAPS: tuple[tuple[str, str, str], ...] = (
    # (object, attribute, stage name)
    ("service", "job_from_proto", "job_from_proto (read inputs, checks; excl. tokenize)"),
    ("model", "encode", "tokenize (HF fast tokenizer)"),
    ("model", "blocks", "prefix block hashes"),
    ("pipeline", "price", "price (MU per pair; excl. snapshot)"),
    ("pipeline", "_fleet", "fleet headroom (excl. snapshot)"),
    ("admission", "admit", "admission.admit"),
    ("admission", "settle", "admission.settle"),
    ("pipeline", "_priority", "priority level"),
    ("policy", "choose", "policy.choose"),
    ("policy", "on_routed", "policy.on_routed / on_finished"),
    ("policy", "on_finished", "policy.on_routed / on_finished"),
    ("table", "snapshot", "node table snapshot"),
    ("table", "start", "node table start / finish / set_reserved"),
    ("table", "finish", "node table start / finish / set_reserved"),
    ("table", "set_reserved", "node table start / finish / set_reserved"),
    ("sessions", "reserved_by_node", "sessions.reserved_by_node"),
    ("pipeline", "_gauges", "gauges (excl. snapshot, metrics)"),
    ("pipeline", "_actual", "actual MU"),
    ("pipeline", "_settle", "settle (excl. admission, metrics)"),
    ("pipeline", "_observe", "observe (estimator; excl. metrics)"),
)


def stage_breakdown(
    config_dict: dict[str, Any], prompt: str, max_tokens: int, requests: int
) -> dict[str, Any]:
    """Per-request time of each router stage, in-process, gRPC front's path, no network."""
    from router.api.kserve_grpc import _tagged
    from router.config import RouterConfig
    from router.fleet import parse_node_metrics
    from router.pipeline import Outcome
    from router.service import RouterService

    config = RouterConfig.model_validate(config_dict)
    service = RouterService(config)
    pipeline = service.pipeline
    page = (
        'nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 0\n'
        'nv_inference_pending_request_count{model="ensemble",version="1"} 0\n'
    )
    timer = StageTimer()
    pipeline.channels = cast(Any, {n.name: _WireOnlyChannel(timer) for n in config.nodes})
    model = next(iter(service.models.values()))
    raw = infer_request(prompt, max_tokens).SerializeToString()
    authorization = f"Bearer {TENANT_KEY}"
    totals: list[int] = []

    async def one() -> None:
        t0 = time.perf_counter_ns()
        with timer.section("client request parse (protobuf)"):
            request = service_pb2.ModelInferRequest.FromString(raw)
        with timer.section("auth (key ring)"):
            headers = {"authorization": authorization}
            tenant = service.keys.tenant(headers["authorization"])
        job = service.job_from_proto(tenant, request, headers)
        outcome = Outcome()
        async for response in pipeline.run(job, outcome):
            with timer.section("client response tag + serialize (protobuf)"):
                tagged = _tagged(response, outcome)
                service_pb2.ModelStreamInferResponse(infer_response=tagged).SerializeToString()
        totals.append(time.perf_counter_ns() - t0)

    async def drive(count: int) -> None:
        for i in range(count + 200):
            if i == 200:  # warm-up done
                timer.reset()
                totals.clear()
            if i % 50 == 0:  # a scrape now and then, as the scraper does
                for name in pipeline.table.names:
                    pipeline.table.update_metrics(name, parse_node_metrics(page, time.monotonic()))
            await one()

    # Untimed first: the true per-request total, without the timers' own cost.
    timer.enabled = False
    asyncio.run(drive(requests))
    untimed = list(totals)
    timer.enabled = True
    objects: dict[str, Any] = {
        "service": service,
        "model": model,
        "pipeline": pipeline,
        "admission": pipeline.admission,
        "policy": pipeline.policy,
        "table": pipeline.table,
        "sessions": pipeline.sessions,
    }
    for obj, attr, stage in STAGE_WRAPS:
        target = objects[obj]
        setattr(target, attr, timer.wrap(stage, getattr(target, attr)))
    for metric in vars(service.metrics).values():
        if hasattr(metric, "labels"):
            labels = metric.labels

            def timed_labels(*a: Any, _labels: Any = labels, **k: Any) -> _TimedChild:
                with timer.section("metrics (prometheus_client)"):
                    return _TimedChild(_labels(*a, **k), timer)

            metric.labels = timed_labels
    asyncio.run(drive(requests))
    n = len(totals)
    total_us = sum(totals) / n / 1000
    stages = {k: v / n / 1000 for k, v in timer.exclusive_ns.items()}
    stages["pipeline glue (async generators, Job/RequestView, dicts)"] = total_us - sum(
        stages.values()
    )
    tokenize_by_length: dict[str, dict[str, float]] = {}
    rust: Any = model.tokenizer._tokenizer  # the tokenizers.Tokenizer under transformers' wrapper
    for words in (8, 32, 256, 1024):
        text = prompt_text(words, offset=3)
        tokens = len(model.tokenizer.encode(text))
        reps = 300 if words < 256 else 60
        row: dict[str, float] = {}
        for name, fn in (
            ("transformers_encode_us", lambda t=text: model.tokenizer.encode(t)),
            ("tokenizers_encode_us", lambda t=text: rust.encode(t).ids),
        ):
            fn()
            t0 = time.perf_counter_ns()
            for _ in range(reps):
                fn()
            row[name] = (time.perf_counter_ns() - t0) / reps / 1000
        tokenize_by_length[str(tokens)] = row
    return {
        "requests": n,
        "prompt_tokens": len(model.encode(prompt)),
        "untimed_us_per_request": sum(untimed) / len(untimed) / 1000,
        "untimed_p50_us": float(np.percentile(untimed, 50)) / 1000,
        "total_us_per_request": total_us,
        "total_p50_us": float(np.percentile(totals, 50)) / 1000,
        "stages_us_per_request": dict(sorted(stages.items(), key=lambda kv: -kv[1])),
        "calls_per_request": {k: v / n for k, v in timer.calls.items()},
        "tokenize_us_by_prompt_tokens": tokenize_by_length,
    }


# -- where the time goes: the live router under cProfile ------------------------------------
def serve_profiled(config_path: Path, out: Path) -> int:
    """Run the router; SIGUSR1 starts profiling, SIGUSR2 stops it and writes ``out``."""
    from router.config import load_config
    from router.server import run

    profiler = cProfile.Profile()

    def on_start(signum: int, frame: Any) -> None:
        profiler.enable()

    def on_stop(signum: int, frame: Any) -> None:
        profiler.disable()
        profiler.dump_stats(str(out))
        with open(f"{out}.cpu", "w") as f:
            f.write("done")

    signal.signal(signal.SIGUSR1, on_start)
    signal.signal(signal.SIGUSR2, on_stop)
    return run(load_config(config_path))


_GROUPS = (
    ("tokenizer (transformers/tokenizers)", ("transformers", "tokenizers")),
    ("prometheus_client", ("prometheus_client",)),
    ("grpc python layer", ("grpc", "cygrpc")),
    ("router: api (fronts)", ("router/api",)),
    ("router: pipeline", ("router/pipeline",)),
    ("router: service", ("router/service",)),
    ("router: upstream", ("router/upstream",)),
    ("router: wire", ("router/wire",)),
    (
        "router: policies / fleet / admission",
        ("router/policies", "router/fleet", "router/admission"),
    ),
    ("router: other", ("router/",)),
    ("starlette / uvicorn / httptools", ("starlette", "uvicorn", "httptools", "h11")),
    ("pydantic", ("pydantic",)),
    ("protobuf", ("protobuf", "_pb2", "message")),
    ("asyncio", ("asyncio",)),
    ("numpy", ("numpy",)),
)


def _group_of(key: tuple[str, int, str]) -> str:
    filename, _, name = key
    where = f"{filename} {name}" if filename == "~" else filename
    for group, needles in _GROUPS:
        if any(n in where for n in needles):
            return group
    return "other Python / builtins"


def summarize_profile(path: Path, cpu_s: float, top: int = 25) -> dict[str, Any]:
    """Shares of profiled (wall-clock, main-thread) time by package and by function."""
    stats = pstats.Stats(str(path))
    raw = cast(dict[tuple[str, int, str], tuple[int, int, float, float, Any]], stats.stats)  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    groups: dict[str, float] = defaultdict(float)
    for key, value in raw.items():
        groups[_group_of(key)] += value[2]
    rows = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    jobs = sum(v[1] for k, v in raw.items() if "router/api" in k[0] and k[2] == "_job")

    def label(key: tuple[str, int, str]) -> str:
        filename, line, name = key
        if filename == "~":
            return name
        short = filename.split("site-packages/")[-1].replace(str(HERE.parents[1]) + "/", "")
        return f"{short}:{line}({name})"

    return {
        "requests_profiled": jobs,
        "profiled_wall_s": total,
        "router_cpu_s": cpu_s,
        "profiled_wall_us_per_request": total / jobs * 1e6 if jobs else float("nan"),
        "router_cpu_us_per_request": cpu_s / jobs * 1e6 if jobs else float("nan"),
        "by_group_share": {k: v / total for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_tottime": [
            {"function": label(k), "tottime_share": v[2] / total, "calls": v[1]} for k, v in rows
        ],
    }


async def profile_level(
    router: RouterProcess,
    target: str,
    concurrency: int,
    args: argparse.Namespace,
    out: Path,
    upstream_pids: list[int],
) -> tuple[LevelResult, float]:
    request = infer_request(prompt_text(args.prompt_words), args.max_tokens)
    client = GrpcClient([router.grpc], request)
    openai = OpenAIClient(
        f"http://{router.http}", concurrency, prompt_text(args.prompt_words), args.max_tokens
    )
    await client.open()
    await openai.open()
    sends = {"grpc-stream": client.stream, "grpc-unary": client.unary, "openai": openai.completions}
    send = sends[target]
    try:
        for _ in range(50):  # warm the path before profiling
            await send()
        cpu0 = cpu_seconds(router.pid)
        os.kill(router.pid, signal.SIGUSR1)
        result = await measure(
            target,
            "router+cProfile",
            send,
            concurrency,
            args,
            {"router": [router.pid], "upstreams": upstream_pids},
        )
        os.kill(router.pid, signal.SIGUSR2)
        cpu = cpu_seconds(router.pid) - cpu0
        deadline = time.monotonic() + 30
        while not Path(f"{out}.cpu").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await client.close()
        await openai.close()
    return result, cpu


# -- reporting -------------------------------------------------------------------------------
def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def markdown(
    results: list[LevelResult], breakdown: dict[str, Any] | None, profiles: dict[str, Any]
) -> str:
    lines = [
        "| target | path | conc. | req/s | p50 ms | p90 ms | p99 ms | errors "
        "| CPU µs/req client / router / upstreams | load 1m (after) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        cpu = r.cpu_us_per_request
        lines.append(
            f"| {r.target} | {r.path} | {r.concurrency} | {r.requests_per_s:.0f} | "
            f"{_fmt(r.p50_ms)} | {_fmt(r.p90_ms)} | {_fmt(r.p99_ms)} | {r.errors} | "
            f"{cpu.get('client', float('nan')):.0f} / {cpu.get('router', float('nan')):.0f} / "
            f"{cpu.get('upstreams', float('nan')):.0f} | {r.loadavg_after[0]} |"
        )
    lines += [
        "",
        "| target | conc. | router req/s | router / direct req/s | added p50 ms | added p99 ms "
        "| router CPU µs/req | 1 core ceiling req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.path != "router":
            continue
        d = next(
            (
                x
                for x in results
                if x.path == "direct" and x.target == r.target and x.concurrency == r.concurrency
            ),
            None,
        )
        router_cpu = r.cpu_us_per_request.get("router", float("nan"))
        ceiling = 1e6 / router_cpu if router_cpu and not math.isnan(router_cpu) else float("nan")
        ratio = r.requests_per_s / d.requests_per_s if d and d.requests_per_s else float("nan")
        lines.append(
            f"| {r.target} | {r.concurrency} | {r.requests_per_s:.0f} | {_fmt(ratio)} | "
            f"{_fmt(r.p50_ms - d.p50_ms) if d else 'n/a'} | "
            f"{_fmt(r.p99_ms - d.p99_ms) if d else 'n/a'} | {router_cpu:.0f} | {ceiling:.0f} |"
        )
    if breakdown:
        lines += [
            "",
            f"In-process stages, gRPC path, {breakdown['prompt_tokens']}-token prompt, "
            f"{breakdown['requests']} requests, no network: "
            f"{breakdown['untimed_us_per_request']:.1f} µs per request untimed (p50 "
            f"{breakdown['untimed_p50_us']:.1f}); {breakdown['total_us_per_request']:.1f} µs "
            "with the stage timers on (the table):",
            "",
            "| stage | µs / request | share |",
            "|---|---:|---:|",
        ]
        total = breakdown["total_us_per_request"]
        for stage, us in breakdown["stages_us_per_request"].items():
            lines.append(f"| {stage} | {us:.1f} | {us / total:.0%} |")
        lines += [
            "",
            "| prompt tokens | tokenize µs (transformers) | tokenizers.Tokenizer.encode µs |",
            "|---:|---:|---:|",
        ]
        for tokens, row in breakdown["tokenize_us_by_prompt_tokens"].items():
            lines.append(
                f"| {tokens} | {row['transformers_encode_us']:.0f} | "
                f"{row['tokenizers_encode_us']:.0f} |"
            )
    for target, prof in profiles.items():
        lines += [
            "",
            f"cProfile of the router process, {target} c={prof['concurrency']} "
            f"({prof['requests_per_s']:.0f} req/s while profiled; router CPU "
            f"{prof['summary']['router_cpu_us_per_request']:.0f} µs/request with the "
            "profiler on; shares of profiled main-thread wall time):",
            "",
            "| group | share of profiled time |",
            "|---|---:|",
        ]
        for group, share in prof["summary"]["by_group_share"].items():
            if share >= 0.005:
                lines.append(f"| {group} | {share:.1%} |")
        lines += ["", "| top functions (tottime) | share | calls |", "|---|---:|---:|"]
        for row in prof["summary"]["top_tottime"][:12]:
            lines.append(f"| `{row['function']}` | {row['tottime_share']:.1%} | {row['calls']} |")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstreams", type=int, default=2)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    parser.add_argument("--prompt-words", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--no-direct", action="store_true", help="skip the direct runs")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile runs")
    parser.add_argument("--no-stages", action="store_true", help="skip the in-process stages")
    parser.add_argument("--profile-targets", default="grpc-stream,openai")
    parser.add_argument("--profile-concurrency", type=int, default=32)
    parser.add_argument("--stage-requests", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve-profiled-router", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_profiled_router:
        return serve_profiled(args.config, args.serve_profiled_router)
    levels = [int(c) for c in args.concurrency.split(",")]
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")

    import uvloop

    facts = host_facts()
    log(f"load average at start {facts['loadavg_at_start']} on {facts['cpus']} CPUs")
    tokenizer_dir = default_model_dir()
    upstreams: list[null_upstream.NullUpstream] = []
    routers: list[RouterProcess] = []
    results: list[LevelResult] = []
    breakdown: dict[str, Any] | None = None
    profiles: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="router-capacity-") as tmp:
        work = Path(tmp)
        try:
            for i in range(args.upstreams):
                upstreams.append(null_upstream.start(log_path=work / f"null{i}.log"))
            nodes = [
                (f"null{i}", u.grpc_url, f"http://{u.host}:{u.metrics_port}", u.metrics_url)
                for i, u in enumerate(upstreams)
            ]
            log(f"{len(upstreams)} null upstreams: {', '.join(u.grpc_url for u in upstreams)}")
            config = router_config(nodes, tokenizer_dir, NodePorts.ephemeral())
            router = start_router(config, work)
            routers.append(router)
            log(f"router pid {router.pid}: grpc {router.grpc}, http {router.http}")
            results = uvloop.run(run_all(args, router, upstreams, levels, targets))
            router.stop()
            routers.remove(router)

            if not args.no_stages:
                log("in-process stage breakdown …")
                breakdown = stage_breakdown(
                    router_config(nodes, tokenizer_dir, NodePorts.ephemeral()),
                    prompt_text(args.prompt_words),
                    args.max_tokens,
                    args.stage_requests,
                )
                log(f"  {breakdown['total_us_per_request']:.1f} µs per request in-process")

            best = max((r.requests_per_s for r in results if r.path == "router"), default=0.0)
            if not args.no_profile:
                if best >= TARGET_RPS:
                    log(f"best routed {best:.0f} req/s ≥ {TARGET_RPS:.0f}; profiling anyway")
                for target in [t for t in args.profile_targets.split(",") if t]:
                    prof_out = work / f"router-{target}.prof"
                    profiled = start_router(
                        router_config(nodes, tokenizer_dir, NodePorts.ephemeral()),
                        work,
                        name=f"router-prof-{target}",
                        command=[
                            sys.executable,
                            str(HERE),
                            "--serve-profiled-router",
                            str(prof_out),
                        ],
                    )
                    routers.append(profiled)
                    result, cpu = uvloop.run(
                        profile_level(
                            profiled,
                            target,
                            args.profile_concurrency,
                            args,
                            prof_out,
                            [u.pid for u in upstreams],
                        )
                    )
                    profiled.stop()
                    routers.remove(profiled)
                    profiles[target] = {
                        "concurrency": args.profile_concurrency,
                        "requests_per_s": result.requests_per_s,
                        "summary": summarize_profile(prof_out, cpu),
                    }
        finally:
            for r in routers:
                r.stop()
            for u in upstreams:
                u.stop()
    facts["loadavg_at_end"] = loadavg()
    log(f"load average at end {facts['loadavg_at_end']}")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "router_capacity",
        "host": facts,
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("serve_profiled_router", "config")
        },
        "targets": {"routed_requests_per_s": TARGET_RPS, "throughput_ratio": TARGET_RATIO},
        "results": [asdict(r) for r in results],
        "stages": breakdown,
        "cprofile": profiles,
    }
    (args.out / "router_capacity.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown(results, breakdown, profiles))
    best = max((r.requests_per_s for r in results if r.path == "router"), default=0.0)
    print(
        f"\nbest routed throughput {best:.0f} req/s (target {TARGET_RPS:.0f}); "
        f"load average {facts['loadavg_at_start']} → {facts['loadavg_at_end']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
