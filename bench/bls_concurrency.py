"""Concurrent unary requests through ``tensorrt_llm_bls``: served together, or a batch at a time?

    python bench/bls_concurrency.py                      # --concurrency 1,4,16 --max-tokens 32
    python bench/bls_concurrency.py --requests-per-level 32 --out /tmp/bls

Unary ``infer`` calls (HTTP or gRPC) cannot go to the decoupled ``ensemble``; they go to
``tensorrt_llm_bls``, a non-decoupled Python model that runs the ensemble through BLS and
folds its responses into one. That model has one instance and Triton's dynamic batcher in
front of it, so the question this benchmark answers is whether N clients that each send
one unary request at a time are served concurrently (the cpu engine batches all N, and
throughput rises with N as it does for the streaming ensemble) or one Triton batch at a
time (requests that arrive while a batch runs wait until the whole batch finishes, so
throughput stays near the single-request rate and latency grows with N).

The benchmark renders the cpu-profile repository for the seeded tiny Llama, starts one
real ``tritonserver`` on ephemeral loopback ports, warms up, and then runs each
concurrency level as that many closed-loop client threads sending unary gRPC ``infer``
requests with distinct prompts and ``min_tokens = max_tokens``, so every request produces
exactly ``max_tokens`` tokens. Per level it reports requests/s, output tokens/s, p50/p99
latency and, from the node's metrics, how many requests each ``tensorrt_llm_bls``
execution carried and the peak number of requests the engine had active at once (polled
every ``--sample-interval`` seconds, so a lower bound). The load average is recorded before
and after each level, because the host may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient
from bls_load import (
    MODEL,
    REPO_ROOT,
    RESULTS,
    LevelResult,
    PeakSampler,
    bls_inputs,
    run_level,
    scrape,
    summarize,
)
from ensemble_overhead import prompts

import mufleet
import python_backends
from mufleet import paths
from mufleet.node import NodePorts, TritonNode
from mufleet.repository import RenderParams, render_cached
from mufleet.tiny_model import default_model_dir
from mufleet.triton_dist import locate


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def _load(values: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def markdown(levels: list[LevelResult]) -> str:
    """The results table, with throughput relative to the first level."""
    base = levels[0].requests_per_s if levels else float("nan")
    lines = [
        "| concurrency | requests | errors | req/s | tokens/s | p50 (ms) | p99 (ms) "
        "| req/s vs first | BLS requests / execution | engine peak active (sampled) "
        "| load 1/5/15 before | load 1/5/15 after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in levels:
        lines.append(
            f"| {r.concurrency} | {r.requests} | {r.errors} | {r.requests_per_s:.2f} | "
            f"{r.tokens_per_s:.0f} | {r.p50_ms:.0f} | {r.p99_ms:.0f} | "
            f"{r.requests_per_s / base:.2f}x | {_fmt(r.bls_requests_per_execution, '.2f')} | "
            f"{_fmt(r.engine_active_peak, '.0f')} | {_load(r.loadavg_before)} | "
            f"{_load(r.loadavg_after)} |"
        )
    return "\n".join(lines)


def _loadavg() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (one, five, fifteen)


def _git_head() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def provenance(repository: Path) -> dict[str, Any]:
    """Which code and templates this run used."""
    return {
        "git_head": _git_head(),
        "repo_root": str(REPO_ROOT),
        "mufleet_package": str(Path(mufleet.__file__).resolve().parent),
        "python_backends_package": str(Path(python_backends.__file__).resolve().parent),
        "templates": str(paths.model_repository_templates().resolve()),
        "rendered_repository": str(repository),
        "mufleet_home": str(paths.home()),
        "python": sys.executable,
        "pythonpath": os.environ.get("PYTHONPATH"),
        "cpus": os.cpu_count(),
    }


WARMUP_CONCURRENCY, WARMUP_REQUESTS = 2, 4
DEFAULT_VARIANTS = ["pool", "instances4:bls_instance_count=4,bls_max_concurrent_requests=1"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    parser.add_argument(
        "--requests-per-level",
        type=int,
        default=None,
        help="requests in every level (default: max(3 x concurrency, 8))",
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt-words", type=int, default=48)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per request")
    parser.add_argument(
        "--sample-interval", type=float, default=0.2, help="engine gauge polling, s (0: off)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="NAME[:FIELD=VALUE,...]",
        help="a rendering to measure (unary, so decoupled_mode is false); repeatable. "
        "Default: 'pool' (one BLS instance serving requests concurrently) and "
        "'instances4' (four instances, one request at a time each)",
    )
    args = parser.parse_args(argv)
    variants = [_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1:
        parser.error("--concurrency needs positive integers")

    def count_for(level: int) -> int:
        if args.requests_per_level is not None:
            return int(args.requests_per_level)
        return max(3 * level, 8)

    total = WARMUP_REQUESTS + sum(count_for(level) for level in levels)
    texts = prompts(total, args.prompt_words)
    n = args.max_tokens

    def make(i: int) -> list[grpcclient.InferInput]:
        return bls_inputs(texts[i], n)

    model_dir = default_model_dir()
    report_variants: list[dict[str, Any]] = []
    failed = False
    for name, overrides in variants:
        params = RenderParams.model_validate(
            {
                "tokenizer_dir": model_dir,
                "max_batch_size": max(levels),
                "decoupled_mode": False,
                **overrides,
            }
        )
        print(f"[bls] variant {name}: {overrides}", file=sys.stderr, flush=True)
        results, where = run_variant(name, params, levels, count_for, make, n, args)
        report_variants.append(
            {
                "name": name,
                "overrides": overrides,
                "provenance": where,
                "levels": [asdict(r) for r in results],
            }
        )
        failed = failed or any(r.errors for r in results)
        print(f"\n### {name}\n\n{markdown(results)}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "bls_concurrency",
        "model": MODEL,
        "protocol": "grpc unary infer",
        "command": [sys.executable, *sys.argv],
        "max_tokens": n,
        "min_tokens": n,
        "prompt_words": args.prompt_words,
        "warmup": {"concurrency": WARMUP_CONCURRENCY, "requests": WARMUP_REQUESTS},
        "variants": report_variants,
    }
    out = args.out / "bls_concurrency.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)
    return 1 if failed else 0


def _variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, fields = spec.partition(":")
    overrides: dict[str, str] = {}
    for item in filter(None, fields.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {spec!r}: expected FIELD=VALUE, got {item!r}")
        overrides[key] = value
    return name, overrides


def run_variant(
    name: str,
    params: RenderParams,
    levels: list[int],
    count_for: Callable[[int], int],
    make: Callable[[int], list[grpcclient.InferInput]],
    n: int,
    args: argparse.Namespace,
) -> tuple[list[LevelResult], dict[str, Any]]:
    """Start one node with ``params``' repository and measure every level on it."""
    repository = render_cached(params)
    where = provenance(repository)
    print(
        f"[bls] code {where['mufleet_package']}, {where['python_backends_package']}; "
        f"templates {where['templates']}; repository {repository}",
        file=sys.stderr,
        flush=True,
    )
    node = TritonNode(
        f"bls-{name}",
        repository,
        locate(),
        NodePorts.ephemeral(),
        log_path=args.out / "bls-node.log",
    )
    results: list[LevelResult] = []
    node.start()
    try:
        node.wait_ready(timeout=240)
        url = node.grpc_url
        warm, _ = run_level(
            url, WARMUP_CONCURRENCY, range(WARMUP_REQUESTS), make, n, args.timeout_s
        )
        warm_errors = [r.error for r in warm if r.error is not None]
        if warm_errors:
            print(f"[bls] warm-up errors: {warm_errors[0]}", file=sys.stderr, flush=True)
        offset = WARMUP_REQUESTS
        for level in levels:
            count = count_for(level)
            indices = range(offset, offset + count)
            offset += count
            load_before = _loadavg()
            metrics_before = scrape(node.metrics_url)
            with PeakSampler(node.metrics_url, args.sample_interval) as sampler:
                timings, wall = run_level(url, level, indices, make, n, args.timeout_s)
            metrics_after = scrape(node.metrics_url)
            load_after = _loadavg()
            result = summarize(
                level,
                timings,
                wall,
                n,
                (load_before, load_after),
                (metrics_before, metrics_after),
                sampler.peak,
            )
            results.append(result)
            print(
                f"[bls] c={level:<3} {result.requests:>3} req  {result.requests_per_s:6.2f} req/s  "
                f"{result.tokens_per_s:6.0f} tok/s  p50 {result.p50_ms:6.0f} ms  "
                f"p99 {result.p99_ms:6.0f} ms  per-exec "
                f"{_fmt(result.bls_requests_per_execution, '.2f')}  peak active "
                f"{_fmt(result.engine_active_peak, '.0f')}  errors {result.errors}  "
                f"load {_load(load_before)} -> {_load(load_after)}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        node.stop()
    return results, where


if __name__ == "__main__":
    sys.exit(main())
