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
tables to stdout. Targets: at least 2,000 routed requests/s and a
router / direct throughput ratio of at least 0.95.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import null_upstream
from router_bench_common import (
    RESULTS,
    RouterProcess,
    host_facts,
    loadavg,
    log,
    router_config,
    start_router,
)
from router_capacity_load import (
    TARGET_RATIO,
    TARGET_RPS,
    TARGETS,
    LevelResult,
    prompt_text,
    run_all,
)
from router_capacity_profile import (
    profile_level,
    serve_profiled,
    stage_breakdown,
    summarize_profile,
)

from mufleet.node import NodePorts
from mufleet.tiny_model import default_model_dir


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
                            str(Path(__file__).resolve()),
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
