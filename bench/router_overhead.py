"""What the router adds to a request: router vs. direct Triton, same client, same concurrency.

    python bench/router_overhead.py                        # c = 1, 16, 64; stream and unary
    python bench/router_overhead.py --modes stream --concurrency 16 --duration 5

Two real ``tritonserver`` nodes serving the sim engine (``tests/data/sim_test_gpu.json``,
as ``tests/integration/nodes.py`` renders it, at ``--time-scale`` so runs are short) and a
``mufleet route`` in front of them. The same ``tritonclient.grpc.aio`` client code sends the
same requests (``ensemble``: ``text_input``, ``max_tokens`` = ``min_tokens``, so every
request makes exactly ``--max-tokens`` tokens) either to the router or straight to the
nodes (round-robin over both), from ``concurrency`` closed-loop workers:

* ``stream``: ``ModelStreamInfer`` (``stream_infer``) with ``stream=true`` on the decoupled
  repository; per request the time to the first token (TTFT) and to the last response;
* ``unary``: ``ModelInfer`` (``infer``) with ``stream=false``; Triton refuses unary calls on
  decoupled models, so this mode renders the repository with ``decoupled_mode=false`` and
  starts the nodes again.

Direct and router runs alternate (``--rounds`` rounds, order flipped each round) so that
load from other users of the host falls on both alike; the load average is recorded next
to every run. Reported per level: requests/s, output tokens/s, e2e and TTFT p50/p90/p99,
the added p50 and p99 (router − direct) with a bootstrap 95% interval for the added p50,
the throughput ratio router / direct and the router's CPU µs per request.

Writes ``bench/results/router_overhead.json`` and ``router_overhead.png`` (latency
percentiles, router vs direct, per concurrency); Markdown tables on stdout, progress on
stderr. Targets (the issue's): added p50 ≤ 0.3 ms, throughput ≥ 0.95× direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from router_bench_common import (
    RESULTS,
    TENANT_KEY,
    RouterProcess,
    cpu_seconds,
    host_facts,
    loadavg,
    log,
    median_diff_ci_ms,
    pct_ms,
    router_config,
    start_router,
)

from mufleet.node import NodePorts, TritonNode
from mufleet.repository import RenderParams, render_cached
from mufleet.streaming_client import text_inputs
from mufleet.tiny_model import CORPUS_PATH, default_model_dir
from mufleet.triton_dist import locate

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


# -- comparisons, tables, plot ---------------------------------------------------------------
def compare(
    results: list[RunResult], pooled: dict[tuple[str, int, str], list[Sample]]
) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r.target == "direct":
            continue
        d = next(
            x
            for x in results
            if x.target == "direct" and x.mode == r.mode and x.concurrency == r.concurrency
        )
        via = [s.e2e_s for s in pooled[(r.mode, r.concurrency, r.target)]]
        direct = [s.e2e_s for s in pooled[(r.mode, r.concurrency, "direct")]]
        low, high = median_diff_ci_ms(via, direct)
        added_p50 = r.e2e_ms["p50"] - d.e2e_ms["p50"]
        ratio = r.requests_per_s / d.requests_per_s if d.requests_per_s else math.nan
        row: dict[str, Any] = {
            "mode": r.mode,
            "concurrency": r.concurrency,
            "router": r.target,
            "policy": ROUTERS[r.target],
            "added_e2e_p50_ms": added_p50,
            "added_e2e_p50_ci95_ms": [low, high],
            "added_e2e_p99_ms": r.e2e_ms["p99"] - d.e2e_ms["p99"],
            "added_ttft_p50_ms": r.ttft_ms["p50"] - d.ttft_ms["p50"],
            "added_ttft_p99_ms": r.ttft_ms["p99"] - d.ttft_ms["p99"],
            "throughput_ratio": ratio,
            "router_cpu_us_per_request": r.router_cpu_us_per_request,
        }
        row["meets_added_p50"] = added_p50 <= TARGET_ADDED_P50_MS
        row["meets_ratio"] = ratio >= TARGET_RATIO
        rows.append(row)
    return rows


def _f(value: float, digits: int = 2) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def markdown(results: list[RunResult], rows: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | conc. | target | req/s | tokens/s | e2e p50 / p90 / p99 ms "
        "| TTFT p50 / p99 ms | stalls ≥0.4 s | node share | errors | load 1m |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        e, t = r.e2e_ms, r.ttft_ms
        loads = "/".join(f"{x[0]:.2f}" for x in r.loadavg)
        share = " ".join(f"{k}:{v:.0%}" for k, v in r.node_share.items()) or "round-robin"
        lines.append(
            f"| {r.mode} | {r.concurrency} | {r.target} | {r.requests_per_s:.1f} | "
            f"{r.tokens_per_s:.0f} | {_f(e['p50'])} / {_f(e['p90'])} / {_f(e['p99'])} | "
            f"{_f(t['p50'])} / {_f(t['p99'])} | {r.stalls} | {share} | {r.errors} | {loads} |"
        )
    lines += [
        "",
        "| mode | conc. | router policy | added e2e p50 ms (95% CI) | added e2e p99 ms "
        "| added TTFT p50 ms | router / direct req/s | router CPU µs/req |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        low, high = row["added_e2e_p50_ci95_ms"]
        lines.append(
            f"| {row['mode']} | {row['concurrency']} | {row['policy']} | "
            f"{_f(row['added_e2e_p50_ms'])} "
            f"({_f(low)} … {_f(high)}) | {_f(row['added_e2e_p99_ms'])} | "
            f"{_f(row['added_ttft_p50_ms'])} | {_f(row['throughput_ratio'])} | "
            f"{_f(row['router_cpu_us_per_request'], 0)} |"
        )
    return "\n".join(lines)


def plot(results: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, "e2e_ms", "end-to-end") for m in MODES if any(r.mode == m for r in results)]
    if any(r.mode == "stream" for r in results):
        panels.insert(1, ("stream", "ttft_ms", "time to first token"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (mode, metric, title) in zip(axes[0], panels, strict=True):
        for target, color in (
            ("direct", "tab:blue"),
            ("router_rr", "tab:orange"),
            ("router_mu", "tab:green"),
        ):
            rows = sorted(
                (r for r in results if r.mode == mode and r.target == target),
                key=lambda r: r.concurrency,
            )
            levels = [r.concurrency for r in rows]
            if not rows:
                continue
            for q, style in (("p50", "-"), ("p99", "--")):
                ax.plot(
                    levels,
                    [getattr(r, metric)[q] for r in rows],
                    style,
                    color=color,
                    marker="o",
                    label=f"{target} {q}",
                )
        levels = sorted({r.concurrency for r in results if r.mode == mode})
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="concurrency",
            ylabel="latency (ms, log)",
            title=f"{mode}: {title}",
        )
        ax.set_xticks(levels, labels=[str(c) for c in levels])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("mufleet router vs direct Triton (sim engine, 2 nodes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------
def start_nodes(params: RenderParams, work: Path, count: int) -> list[TritonNode]:
    repo = render_cached(params)
    nodes = [
        TritonNode(
            f"ovh{i}",
            repo,
            locate(),
            NodePorts.ephemeral(),
            log_path=work / f"ovh{i}.log",
            fault_file=work / f"faults-ovh{i}.json",
        )
        for i in range(count)
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(timeout=240)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--duration", type=float, default=2.0, help="measured s per run")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=2, help="direct/router alternations")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--prompt-words", type=int, default=24)
    parser.add_argument("--time-scale", type=float, default=0.25, help="sim wall s per GPU s")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODES):
        parser.error(f"modes are {', '.join(MODES)}")

    import uvloop

    facts = host_facts()
    log(f"load average at start {facts['loadavg_at_start']} on {facts['cpus']} CPUs")
    tokenizer_dir = default_model_dir()
    results: list[RunResult] = []
    pooled: dict[tuple[str, int, str], list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="router-overhead-") as tmp:
        work = Path(tmp)
        for mode in modes:
            params = sim_params(
                tokenizer_dir,
                time_scale=args.time_scale,
                max_batch_size=max(64, max(levels)),
                decoupled_mode=mode == "stream",
            )
            t0 = time.monotonic()
            nodes = start_nodes(params, work, args.nodes)
            routers: dict[str, RouterProcess] = {}
            members = [(n.name, n.grpc_url, f"http://{n.http_url}", n.metrics_url) for n in nodes]
            try:
                log(f"{mode}: {len(nodes)} sim nodes ready in {time.monotonic() - t0:.1f} s")
                for target, policy in ROUTERS.items():
                    config = router_config(
                        members,
                        tokenizer_dir,
                        NodePorts.ephemeral(),
                        policy=policy,
                    )
                    router = start_router(config, work, name=f"router-{mode}-{policy}")
                    routers[target] = router
                    log(f"{mode}: router ({policy}) pid {router.pid} on {router.grpc}")
                mode_results, mode_pooled = uvloop.run(run_mode(mode, args, routers, nodes, levels))
                results += mode_results
                pooled |= {(mode, c, t): s for (c, t), s in mode_pooled.items()}
            finally:
                for router in routers.values():
                    router.stop()
                for node in nodes:
                    node.stop(grace=10)
    facts["loadavg_at_end"] = loadavg()
    log(f"load average at end {facts['loadavg_at_end']}")
    rows = compare(results, pooled)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "router_overhead",
        "host": facts,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": {"added_p50_ms": TARGET_ADDED_P50_MS, "throughput_ratio": TARGET_RATIO},
        "results": [asdict(r) for r in results],
        "comparison": rows,
    }
    (args.out / "router_overhead.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, args.out / "router_overhead.png")
    print(markdown(results, rows))
    print(
        f"\nload average {facts['loadavg_at_start']} → {facts['loadavg_at_end']}; "
        f"plot: {args.out / 'router_overhead.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
