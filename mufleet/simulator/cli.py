"""The ``mufleet simulate`` command."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mufleet.simulator.experiment import Experiment, run_experiment
from mufleet.simulator.faults import FaultSpecError, parse_faults
from mufleet.simulator.fleet_spec import DEFAULT_PAIR, FleetSpecError, parse_fleet
from mufleet.simulator.metrics import SloError, parse_slo
from mufleet.simulator.report import write_report
from mufleet.simulator.run import ORACLE, SimSettings
from mufleet.traces import TraceError, load_trace
from router.policies import POLICIES

BASELINES = (
    "round_robin",
    "least_request",
    "power_of_two",
    "sglang_cache_aware",
    "dynamo_kv",
    "llmd_scorers",
)
DEFAULT_POLICIES = (*BASELINES, "mu_cost", ORACLE)


def _policies(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = set(POLICIES) | {ORACLE}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown policies {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return names


def _loads(text: str) -> list[float]:
    try:
        loads = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--load takes numbers, got {text!r}") from None
    if not loads or any(x <= 0 for x in loads):
        raise argparse.ArgumentTypeError("--load values must be > 0")
    return loads


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = subparsers.add_parser(
        "simulate",
        help="replay a request trace over a simulated fleet, policy against policy",
        description="A discrete-event fleet simulator: the sim engine's batching, timing and "
        "KV pool per node, and the router's own policy, admission and pricing objects. "
        "Writes summary.json, report.md and PNG plots.",
    )
    sim.add_argument(
        "--trace", type=Path, required=True, help="Mooncake .jsonl or Azure .csv (.gz)"
    )
    sim.add_argument("--nodes", type=int, default=16)
    sim.add_argument("--pair", default=None, help=f"pair of every node (default {DEFAULT_PAIR})")
    sim.add_argument("--fleet", help="mixed fleet, PAIR:COUNT,PAIR:COUNT (overrides --nodes)")
    rate = sim.add_mutually_exclusive_group()
    rate.add_argument("--rate-scale", type=float, help="arrival rate as a multiple of the trace's")
    rate.add_argument(
        "--load",
        type=_loads,
        default=[1.0],
        help="arrival rate as fractions of the fleet's no-reuse capacity, e.g. 0.5,0.8,1.2",
    )
    sim.add_argument("--policies", type=_policies, default=list(DEFAULT_POLICIES))
    sim.add_argument("--slo", help="ttft=2s,ttft_per_1k=50ms,tpot=100ms (the default)")
    sim.add_argument("--faults", help="e.g. hang:3@120+60,kill:5@300 (node@start+duration)")
    sim.add_argument("--duration", type=float, help="seconds of arrivals per run (default: all)")
    sim.add_argument("--max-tokens", type=int, default=2048, help="max_tokens of every request")
    sim.add_argument("--no-search", action="store_true", help="skip the rate search")
    sim.add_argument("--search-runs", type=int, default=12, help="runs per rate search")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--out", type=Path, default=Path("sim-out"))
    sim.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        trace = load_trace(args.trace, seed=args.seed)
        fleet = parse_fleet(args.fleet, args.pair, args.nodes)
        slo = parse_slo(args.slo)
        faults = parse_faults(args.faults, fleet.nodes) if args.faults else None
    except (TraceError, FleetSpecError, SloError, FaultSpecError) as exc:
        print(f"mufleet simulate: {exc}", file=sys.stderr)
        return 2
    problems = [
        ("--max-tokens must be >= 1", args.max_tokens < 1),
        ("--nodes must be >= 1", args.nodes < 1),
        ("--rate-scale must be > 0", args.rate_scale is not None and not args.rate_scale > 0),
        ("--duration must be > 0", args.duration is not None and not args.duration > 0),
        ("--search-runs must be >= 2", args.search_runs < 2),
    ]
    for message, failed in problems:
        if failed:
            print(f"mufleet simulate: {message}", file=sys.stderr)
            return 2
    experiment = Experiment(
        trace=trace,
        fleet=fleet,
        policies=args.policies,
        slo=slo,
        loads=args.load,
        rate_scale=args.rate_scale,
        duration_s=args.duration,
        search=not args.no_search,
        search_runs=args.search_runs,
        seed=args.seed,
        settings=SimSettings(max_tokens=args.max_tokens),
        faults=faults,
    )
    started = time.perf_counter()
    result = run_experiment(experiment, progress=lambda line: print(line, flush=True))
    report = write_report(result, args.out)
    print(f"done in {time.perf_counter() - started:.0f} s: {report}, {args.out / 'summary.json'}")
    return 0
