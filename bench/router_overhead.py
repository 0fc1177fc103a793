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
stderr. Targets: added p50 ≤ 0.3 ms, throughput ≥ 0.95× direct.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from router_bench_common import (
    RESULTS,
    RouterProcess,
    host_facts,
    loadavg,
    log,
    median_diff_ci_ms,
    router_config,
    start_router,
)
from router_overhead_load import (
    MODES,
    ROUTERS,
    TARGET_ADDED_P50_MS,
    TARGET_RATIO,
    RunResult,
    Sample,
    run_mode,
    sim_params,
)

from mufleet.node import NodePorts, TritonNode
from mufleet.repository import RenderParams, render_cached
from mufleet.tiny_model import default_model_dir
from mufleet.triton_dist import locate


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
