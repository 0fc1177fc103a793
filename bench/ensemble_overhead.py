"""Ensemble vs. calling ``tensorrt_llm`` directly, side by side on one server.

    python bench/ensemble_overhead.py            # starts its own node
    python bench/ensemble_overhead.py --url 127.0.0.1:8001

For each concurrency level the same prompts go through ``ensemble`` (text in, text out:
preprocessing -> tensorrt_llm -> postprocessing) and through ``tensorrt_llm`` with the
token ids the tokenizer would produce. The ratio of their latencies is the cost of the
Python pre/post steps; tokens/s across levels shows what batching buys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

from mufleet.node import NodePorts, TritonNode
from mufleet.repository import RenderParams, render_cached
from mufleet.streaming_client import RequestTiming, stream_request, text_inputs, token_inputs
from mufleet.tiny_model import CORPUS_PATH, default_model_dir
from mufleet.triton_dist import locate
from python_backends.text_codec import TextEncoder

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class LevelResult:
    target: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    tokens: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    tpot_p50_ms: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def summarize(
    target: str, concurrency: int, timings: list[RequestTiming], wall_s: float
) -> LevelResult:
    ok = [t for t in timings if t.error is None]
    ttft = [t.ttft_s for t in ok if t.ttft_s is not None]
    tpot = [t.tpot_s for t in ok if t.tpot_s is not None]
    e2e = [t.e2e_s for t in ok]
    return LevelResult(
        target=target,
        concurrency=concurrency,
        requests=len(timings),
        errors=len(timings) - len(ok),
        wall_s=wall_s,
        tokens=sum(t.tokens for t in ok),
        ttft_p50_ms=_pct(ttft, 50),
        ttft_p99_ms=_pct(ttft, 99),
        e2e_p50_ms=_pct(e2e, 50),
        e2e_p99_ms=_pct(e2e, 99),
        tpot_p50_ms=_pct(tpot, 50),
    )


async def run_level(
    url: str,
    model: str,
    make_inputs: Callable[[int], list[grpcclient.InferInput]],
    concurrency: int,
    requests: int,
) -> tuple[list[RequestTiming], float]:
    """``requests`` requests from ``concurrency`` closed-loop workers."""
    client = grpcaio.InferenceServerClient(url)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    timings: list[RequestTiming] = []

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            timings.append(await stream_request(client, model, make_inputs(i)))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    await client.close()
    return timings, wall


def prompts(count: int, words: int) -> list[str]:
    text = CORPUS_PATH.read_text().split()
    return [" ".join(text[(i * 37) % (len(text) - words) :][:words]) for i in range(count)]


def plot(results: list[LevelResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for target, marker in (("ensemble", "o"), ("tensorrt_llm", "s")):
        rows = [r for r in results if r.target == target]
        levels = [r.concurrency for r in rows]
        left.plot(levels, [r.tokens_per_s for r in rows], marker=marker, label=target)
        right.plot(levels, [r.e2e_p50_ms for r in rows], marker=marker, label=f"{target} p50")
        right.plot(
            levels, [r.e2e_p99_ms for r in rows], marker=marker, ls="--", label=f"{target} p99"
        )
    left.set(xscale="log", xlabel="concurrency", ylabel="output tokens/s", title="Throughput")
    right.set(
        xscale="log",
        xlabel="concurrency",
        ylabel="request latency (ms)",
        title="End-to-end latency",
    )
    levels = sorted({r.concurrency for r in results})
    for ax in (left, right):
        ax.set_xticks(levels, labels=[str(c) for c in levels])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(results: list[LevelResult]) -> str:
    lines = [
        "| concurrency | target | requests | tokens/s | TTFT p50 / p99 (ms) "
        "| TPOT p50 (ms) | e2e p50 / p99 (ms) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.concurrency} | {r.target} | {r.requests} | {r.tokens_per_s:.0f} | "
            f"{r.ttft_p50_ms:.1f} / {r.ttft_p99_ms:.1f} | {r.tpot_p50_ms:.2f} | "
            f"{r.e2e_p50_ms:.0f} / {r.e2e_p99_ms:.0f} |"
        )
    lines += [
        "",
        "| concurrency | ensemble / direct e2e p50 | ensemble / direct tokens/s |",
        "|---:|---:|---:|",
    ]
    for level in sorted({r.concurrency for r in results}):
        ens = next(r for r in results if r.target == "ensemble" and r.concurrency == level)
        raw = next(r for r in results if r.target == "tensorrt_llm" and r.concurrency == level)
        lines.append(
            f"| {level} | {ens.e2e_p50_ms / raw.e2e_p50_ms:.2f}x | "
            f"{ens.tokens_per_s / raw.tokens_per_s:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="gRPC host:port of a running node (default: start one)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests-per-worker", type=int, default=4)
    parser.add_argument("--min-requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt-words", type=int, default=48)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    model_dir = default_model_dir()
    encoder = TextEncoder(model_dir)
    node = None
    url = args.url
    if url is None:
        params = RenderParams(tokenizer_dir=model_dir, max_batch_size=max(levels))
        node = TritonNode(
            "bench",
            render_cached(params),
            locate(),
            NodePorts.ephemeral(),
            log_path=args.out / "bench-node.log",
        )
        node.start()
        node.wait_ready()
        url = node.grpc_url
    try:
        texts = prompts(
            max(max(levels) * args.requests_per_worker, args.min_requests), args.prompt_words
        )
        ids = [encoder.encode(t, args.max_tokens).input_ids.tolist() for t in texts]
        n = args.max_tokens
        targets: dict[str, Callable[[int], list[grpcclient.InferInput]]] = {
            "ensemble": lambda i: text_inputs(texts[i], n, min_tokens=n),
            "tensorrt_llm": lambda i: token_inputs(ids[i], n, end_id=encoder.end_id, min_tokens=n),
        }
        for target, make in targets.items():  # warm-up
            asyncio.run(run_level(url, target, make, 2, 4))
        results: list[LevelResult] = []
        for level in levels:
            for target, make in targets.items():
                count = max(level * args.requests_per_worker, args.min_requests)
                timings, wall = asyncio.run(run_level(url, target, make, level, count))
                result = summarize(target, level, timings, wall)
                results.append(result)
                print(
                    f"[bench] {target:>12} c={level:<3} {result.tokens_per_s:7.0f} tok/s  "
                    f"e2e p50 {result.e2e_p50_ms:6.0f} ms  errors {result.errors}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if node is not None:
            node.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ensemble_overhead.json").write_text(
        json.dumps([r.__dict__ | {"tokens_per_s": r.tokens_per_s} for r in results], indent=2)
    )
    plot(results, args.out / "ensemble_overhead.png")
    table = markdown(results)
    (args.out / "ensemble_overhead.md").write_text(table + "\n")
    print(table)
    speedup = statistics.mean(
        r.tokens_per_s for r in results if r.concurrency == max(levels)
    ) / statistics.mean(r.tokens_per_s for r in results if r.concurrency == min(levels))
    print(f"\nthroughput at c={max(levels)} vs c={min(levels)}: {speedup:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
