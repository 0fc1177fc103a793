"""How fast the fleet simulator runs: one simulated hour of trace at the fleet's capacity.

    .venv/bin/python bench/sim_speed.py [--nodes 64,512] [--policies round_robin,mu_cost]
        [--hours 1] [--load 1.0] [--trace FILE]

For each fleet size and policy: wall seconds, requests simulated, microseconds per request
and simulated seconds per wall second. The rate is ``--load`` of the fleet's no-reuse
capacity, so requests grow with the fleet (64 H100 nodes take ~170 Mooncake requests/s).
Run it on an otherwise idle machine: it measures the host.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mufleet.simulator.fleet_spec import parse_fleet
from mufleet.simulator.run import no_reuse_capacity_rps, simulate
from mufleet.simulator.workload import Workload
from mufleet.traces import load_trace

TRACE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "traces"
    / "mooncake_conversation_trace.first40min.jsonl.gz"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--nodes", default="64,512")
    parser.add_argument("--policies", default="round_robin,mu_cost")
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--load", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/sim_speed.json"))
    args = parser.parse_args(argv)
    trace = load_trace(args.trace)
    rows = []
    for nodes in (int(n) for n in args.nodes.split(",")):
        fleet = parse_fleet(nodes=nodes)
        capacity = no_reuse_capacity_rps(Workload(trace, 1.0), fleet)
        multiplier = args.load * capacity / trace.rate_rps
        workload = Workload(trace, multiplier, duration_s=args.hours * 3600)
        for policy in args.policies.split(","):
            started = time.perf_counter()
            result = simulate(
                workload, fleet, policy, progress=lambda line: print(line, flush=True)
            )
            wall = time.perf_counter() - started
            row = {
                "nodes": nodes,
                "policy": policy,
                "simulated_s": workload.duration_s,
                "requests": len(result.requests),
                "wall_s": wall,
                "us_per_request": 1e6 * wall / max(len(result.requests), 1),
                "simulated_s_per_wall_s": workload.duration_s / wall,
            }
            rows.append(row)
            print(
                f"{nodes} nodes, {policy}: {row['requests']} requests over "
                f"{workload.duration_s:.0f} simulated s in {wall:.1f} s "
                f"({row['us_per_request']:.0f} µs per request)",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
