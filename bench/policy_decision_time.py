"""Decision time of every routing policy: ``choose`` + ``on_routed``, per request.

    python bench/policy_decision_time.py                 # 8, 64, 512 nodes, every policy
    python bench/policy_decision_time.py --nodes 512 --policies mu_cost --requests 5000

For each node count it builds a synthetic fleet (three hardware pairs with different
capacities) and a seeded stream of realistic requests (``router.policies.synthetic``:
prompts of 100–4000 tokens with 16-token block hashes, multi-turn sessions whose prompts
grow by their previous turn, shared system prompts). It then drives each policy the way the
router service does and times only the policy: per request ``choose`` followed by
``on_routed``. Between requests (not timed) it plays the caller: the chosen node's snapshot
is replaced with one carrying the request's MU, requests finish after a random while
(``on_finished``, snapshot replaced), one node's metrics are refreshed per request
(staggered scrapes), and every ``--full-refresh`` requests every snapshot is replaced at once
(which makes policies rebuild their node tables: it shows in p99, not p50).

Prints a Markdown table of p50 / p99 / mean microseconds per policy and node count, and
writes the same as JSON under ``bench/results/``. Target: mu_cost p50 ≤ 50 µs at 512 nodes.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from router.policies import POLICIES, NodeSnapshot, RequestView, build_policy
from router.policies.synthetic import SyntheticTraffic, synthetic_fleet

RESULTS = Path(__file__).resolve().parent / "results"


def run_one(
    policy_name: str,
    n_nodes: int,
    requests: list[RequestView],
    warmup: int,
    full_refresh: int,
    seed: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    nodes: list[NodeSnapshot] = synthetic_fleet(n_nodes, seed=seed)
    index = {s.name: i for i, s in enumerate(nodes)}
    policy = build_policy(policy_name, {"seed": seed} if policy_name == "power_of_two" else None)
    finishing: list[tuple[int, int, str, float]] = []  # (step, seq, node, mu)
    times_ns: list[int] = []
    clock = 0.0
    for step, request in enumerate(requests):
        clock += 0.001
        t0 = time.perf_counter_ns()
        decision = policy.choose(request, nodes, clock)
        policy.on_routed(request, decision.node, clock)
        t1 = time.perf_counter_ns()
        if step >= warmup:
            times_ns.append(t1 - t0)
        # --- the caller's bookkeeping (not timed) ---
        i = index[decision.node]
        old = nodes[i]
        mu = request.mu_on(old)
        nodes[i] = dataclasses.replace(
            old, inflight_mu=old.inflight_mu + mu, inflight_requests=old.inflight_requests + 1
        )
        lifetime = rng.randint(4 * n_nodes, 28 * n_nodes)
        heapq.heappush(finishing, (step + lifetime, step, decision.node, mu))
        while finishing and finishing[0][0] <= step:
            _, seq, name, done_mu = heapq.heappop(finishing)
            policy.on_finished(requests[seq], name, clock)
            j = index[name]
            s = nodes[j]
            nodes[j] = dataclasses.replace(
                s,
                inflight_mu=max(0.0, s.inflight_mu - done_mu),
                inflight_requests=max(0, s.inflight_requests - 1),
            )
        k = step % n_nodes  # staggered scrape of one node
        nodes[k] = dataclasses.replace(
            nodes[k], metrics_age_s=0.0, queued_requests=rng.choice((0, 0, 0, 1, 2))
        )
        if full_refresh and step % full_refresh == full_refresh - 1:
            nodes = [dataclasses.replace(s, metrics_age_s=rng.uniform(0.0, 2.0)) for s in nodes]
    us = np.array(times_ns, dtype=np.float64) / 1000.0
    return {
        "policy": policy_name,
        "nodes": n_nodes,
        "requests": len(us),
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
        "max_us": float(us.max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="8,64,512", help="comma-separated node counts")
    parser.add_argument("--policies", default="all", help="comma-separated names, or 'all'")
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per run")
    parser.add_argument("--warmup", type=int, default=500, help="untimed requests first")
    parser.add_argument("--full-refresh", type=int, default=500, help="0: never")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    names = sorted(POLICIES) if args.policies == "all" else args.policies.split(",")
    counts = [int(x) for x in args.nodes.split(",")]
    requests = SyntheticTraffic(seed=args.seed).take(args.warmup + args.requests)
    mean_blocks = sum(len(r.block_hashes) for r in requests) / len(requests)
    rows = []
    for n in counts:
        for name in names:
            rows.append(run_one(name, n, requests, args.warmup, args.full_refresh, args.seed))
    print(
        f"policy decision time (choose + on_routed), {args.requests} requests after "
        f"{args.warmup} warm-up, mean {mean_blocks:.0f} blocks/request, "
        f"Python {platform.python_version()}\n"
    )
    print("| policy | nodes | p50 µs | p99 µs | mean µs |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['policy']} | {row['nodes']} | {row['p50_us']:.1f} | "
            f"{row['p99_us']:.1f} | {row['mean_us']:.1f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "policy_decision_time.json"
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "requests": args.requests,
        "warmup": args.warmup,
        "full_refresh": args.full_refresh,
        "mean_blocks_per_request": mean_blocks,
        "seed": args.seed,
        "unix_time": time.time(),
    }
    path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
