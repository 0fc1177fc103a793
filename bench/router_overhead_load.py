"""Router vs direct Triton: the nodes, the client and the timed runs of the comparison."""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from router_bench_common import (
    TENANT_KEY,
    RouterProcess,
    cpu_seconds,
    loadavg,
    log,
    pct_ms,
)

from mufleet.node import TritonNode
from mufleet.repository import RenderParams
from mufleet.streaming_client import text_inputs
from mufleet.tiny_model import CORPUS_PATH

TEST_GPU = Path(__file__).resolve().parents[1] / "tests" / "data" / "sim_test_gpu.json"
"""The made-up GPU of the sim tests (``tests/integration/nodes.py``)."""
MODES = ("stream", "unary")
ROUTERS = {"router_rr": "round_robin", "router_mu": "mu_cost"}
"""Router targets and their policies: ``round_robin`` places requests exactly as the direct
client does (so the difference is the router's own cost); ``mu_cost`` is the default."""
TARGETS = ("direct", *ROUTERS)
STALL_S = 0.4
"""A request slower than this counts as a stall (the sim ensemble shows ~0.5 s ones)."""
HEADERS = {"authorization": f"Bearer {TENANT_KEY}"}
TARGET_ADDED_P50_MS = 0.3
TARGET_RATIO = 0.95


@dataclass
class Sample:
    sent: float
    first: float | None
    last: float
    tokens: int
    node: str | None = None
    """The node the router chose (its ``mufleet_node`` response parameter)."""

    @property
    def e2e_s(self) -> float:
        return self.last - self.sent

    @property
    def ttft_s(self) -> float | None:
        return None if self.first is None else self.first - self.sent


@dataclass
class RunResult:
    """One (mode, concurrency, target), pooled over rounds."""

    mode: str
    concurrency: int
    target: str
    measured_s: float
    requests: int
    errors: int
    tokens: int
    requests_per_s: float
    tokens_per_s: float
    tokens_per_request: float
    stalls: int
    """Requests slower than :data:`STALL_S`."""
    node_share: dict[str, float]
    """Share of requests per node, as the router reported it (router targets only)."""
    e2e_ms: dict[str, float]
    ttft_ms: dict[str, float]
    router_cpu_us_per_request: float
    nodes_cpu_us_per_request: float
    loadavg: list[tuple[float, float, float]] = field(default_factory=list)
    first_error: str | None = None


def sim_params(tokenizer_dir: Path, **overrides: object) -> RenderParams:
    """Sim-profile parameters for the test GPU (mirrors ``tests/integration/nodes.py``)."""
    values: dict[str, object] = {
        "profile": "sim",
        "tokenizer_dir": tokenizer_dir,
        "hardware_profile": TEST_GPU,
        "max_context": 4096,
        **overrides,
    }
    return RenderParams.model_validate(values)


def prompts(count: int, words: int) -> list[str]:
    text = CORPUS_PATH.read_text().split()
    return [" ".join(text[(i * 37) % (len(text) - words) :][:words]) for i in range(count)]


# -- the client --------------------------------------------------------------------------------
async def stream_one(
    client: grpcaio.InferenceServerClient, inputs: list[grpcclient.InferInput]
) -> Sample:
    """One request on its own stream; times every response with tokens until the stream ends."""

    async def one() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "ensemble", "inputs": inputs}

    sent = time.perf_counter()
    first: float | None = None
    last = sent
    tokens = 0
    node: str | None = None
    async for result, error in client.stream_infer(one(), headers=HEADERS, stream_timeout=60):
        if error is not None:
            raise RuntimeError(str(error))
        ids = result.as_numpy("output_ids")
        count = 0 if ids is None else int(ids.size)
        if count:
            last = time.perf_counter()
            first = first or last
            tokens += count
            node = node or _node(result)
    if not tokens:
        raise RuntimeError("the stream ended without tokens")
    return Sample(sent, first, last, tokens, node)


def _node(result: grpcclient.InferResult) -> str | None:
    param = result.get_response().parameters.get("mufleet_node")
    return None if param is None else str(param.string_param)


async def unary_one(
    client: grpcaio.InferenceServerClient, inputs: list[grpcclient.InferInput]
) -> Sample:
    sent = time.perf_counter()
    result = await client.infer("ensemble", inputs, headers=HEADERS, client_timeout=60)
    done = time.perf_counter()
    ids = result.as_numpy("output_ids")
    return Sample(sent, None, done, 0 if ids is None else int(ids.size), _node(result))


async def run_window(
    send: Callable[[int], Awaitable[Sample]],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    pids: dict[str, Callable[[], float]],
) -> tuple[list[Sample], int, int, str | None, dict[str, float]]:
    """Closed-loop workers; samples sent and finished inside the window, completions in it,
    errors, the first error, CPU seconds per process group in the window."""
    t0 = time.perf_counter()
    start, end = t0 + warmup_s, t0 + warmup_s + duration_s
    samples: list[Sample] = []
    completed = errors = 0
    first_error: str | None = None
    counter = 0

    async def worker() -> None:
        nonlocal completed, errors, first_error, counter
        while time.perf_counter() < end:
            counter += 1
            try:
                sample = await send(counter)
            except Exception as exc:
                if start <= time.perf_counter() <= end:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                await asyncio.sleep(0.005)
                continue
            done = time.perf_counter()
            if start <= done <= end:
                completed += 1
                if sample.sent >= start:
                    samples.append(sample)

    cpu: dict[str, float] = {}

    async def sampler() -> None:
        await asyncio.sleep(max(start - time.perf_counter(), 0))
        before = {k: f() for k, f in pids.items()}
        await asyncio.sleep(max(end - time.perf_counter(), 0))
        cpu.update({k: f() - before[k] for k, f in pids.items()})

    await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
    return samples, completed, errors, first_error, cpu


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    return {f"p{q}": pct_ms(values, q) for q in (50, 90, 99)} | {
        "mean": float(np.mean(values)) * 1000 if len(values) else float("nan")
    }


def group_cpu(pid: int) -> Callable[[], float]:
    """CPU seconds of ``pid`` and its descendants (tritonserver and its backend stubs)."""

    def read() -> float:
        try:
            proc = psutil.Process(pid)
            return cpu_seconds(pid) + sum(cpu_seconds(c.pid) for c in proc.children(recursive=True))
        except psutil.Error:
            return float("nan")

    return read


async def run_mode(
    mode: str,
    args: argparse.Namespace,
    routers: dict[str, RouterProcess],
    nodes: Sequence[TritonNode],
    levels: Sequence[int],
) -> tuple[list[RunResult], dict[tuple[int, str], list[Sample]]]:
    texts = prompts(64, args.prompt_words)
    n = args.max_tokens
    inputs = [text_inputs(t, n, min_tokens=n, stream=mode == "stream") for t in texts]
    clients: dict[str, list[grpcaio.InferenceServerClient]] = {
        "direct": [grpcaio.InferenceServerClient(node.grpc_url) for node in nodes]
    }
    for target, router in routers.items():
        clients[target] = [grpcaio.InferenceServerClient(router.grpc)]
    call = stream_one if mode == "stream" else unary_one

    def process_cpu(pid: int) -> Callable[[], float]:
        return lambda: cpu_seconds(pid)

    pids = {target: process_cpu(router.pid) for target, router in routers.items()}
    for node in nodes:
        if node.process is not None:
            pids[f"node:{node.name}"] = group_cpu(node.process.pid)
    targets = ["direct", *routers]

    def sender(target: str) -> Callable[[int], Awaitable[Sample]]:
        pool = clients[target]
        return lambda i: call(pool[i % len(pool)], inputs[i % len(inputs)])

    results: list[RunResult] = []
    pooled: dict[tuple[int, str], list[Sample]] = {}
    try:
        for target in targets:  # warm-up: compile paths, fill caches
            await run_window(sender(target), 4, 0.0, 1.0, {})
        for level in levels:
            acc: dict[str, dict[str, Any]] = {
                t: {"samples": [], "completed": 0, "errors": 0, "cpu": {}, "load": [], "err": None}
                for t in targets
            }
            for round_index in range(args.rounds):
                order = targets if round_index % 2 == 0 else targets[::-1]
                for target in order:
                    samples, completed, errors, first_error, cpu = await run_window(
                        sender(target), level, args.warmup, args.duration, pids
                    )
                    a = acc[target]
                    a["samples"] += samples
                    a["completed"] += completed
                    a["errors"] += errors
                    a["err"] = a["err"] or first_error
                    for k, v in cpu.items():
                        a["cpu"][k] = a["cpu"].get(k, 0.0) + v
                    a["load"].append(loadavg())
                    log(
                        f"{mode:>6} c={level:<3} {target:>9} round {round_index + 1}: "
                        f"{completed / args.duration:7.1f} req/s  e2e p50 "
                        f"{pct_ms([s.e2e_s for s in samples], 50):7.2f} ms  errors {errors}  "
                        f"load {loadavg()[0]}"
                    )
                    if first_error:
                        log(f"  first error: {first_error}")
            for target in targets:
                a = acc[target]
                measured = args.duration * args.rounds
                samples = a["samples"]
                done = max(a["completed"], 1)
                node_cpu = sum(v for k, v in a["cpu"].items() if k.startswith("node:"))
                nodes_seen = [s.node for s in samples if s.node]
                share = {
                    name: nodes_seen.count(name) / len(nodes_seen)
                    for name in sorted(set(nodes_seen))
                }
                results.append(
                    RunResult(
                        mode=mode,
                        concurrency=level,
                        target=target,
                        measured_s=measured,
                        requests=a["completed"],
                        errors=a["errors"],
                        tokens=sum(s.tokens for s in samples),
                        requests_per_s=a["completed"] / measured,
                        tokens_per_s=a["completed"] * args.max_tokens / measured,
                        tokens_per_request=float(np.mean([s.tokens for s in samples]))
                        if samples
                        else math.nan,
                        stalls=sum(1 for s in samples if s.e2e_s >= STALL_S),
                        node_share=share,
                        e2e_ms=_percentiles([s.e2e_s for s in samples]),
                        ttft_ms=_percentiles([s.ttft_s for s in samples if s.ttft_s is not None]),
                        router_cpu_us_per_request=a["cpu"].get(target, math.nan) / done * 1e6,
                        nodes_cpu_us_per_request=node_cpu / done * 1e6,
                        loadavg=a["load"],
                        first_error=a["err"],
                    )
                )
                pooled[(level, target)] = samples
    finally:
        for pool in clients.values():
            for client in pool:
                await client.close()
    return results, pooled
