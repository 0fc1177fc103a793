"""Where the router spends a request: timed stages in-process, and cProfile of the live router."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import null_upstream
import numpy as np
from router_bench_common import (
    TENANT_KEY,
    RouterProcess,
    cpu_seconds,
)
from router_capacity_load import (
    HERE,
    GrpcClient,
    LevelResult,
    OpenAIClient,
    infer_request,
    measure,
    prompt_text,
)
from tritonclient.grpc import service_pb2


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
