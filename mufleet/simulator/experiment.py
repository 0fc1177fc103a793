"""One ``mufleet simulate`` invocation: every policy at the chosen load(s), and its rate search.

The same workload object (same arrivals and prefix hashes for a seed) is replayed for every
policy, so the policies are compared on identical traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mufleet.simulator.faults import FaultPlan
from mufleet.simulator.fleet_spec import FleetSpec
from mufleet.simulator.metrics import Slo, summarize
from mufleet.simulator.run import RunResult, SimSettings, no_reuse_capacity_rps, simulate
from mufleet.simulator.search import search_rate
from mufleet.simulator.workload import Workload, fleet_cache_bound
from mufleet.traces import Trace

__all__ = ["Experiment", "ExperimentResult"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Experiment:
    trace: Trace
    fleet: FleetSpec
    policies: Sequence[str]
    slo: Slo = field(default_factory=Slo)
    loads: Sequence[float] = (1.0,)
    """Loads (fractions of the fleet's no-reuse capacity) each policy runs at."""
    rate_scale: float | None = None
    """Instead of ``loads``: one run at this multiple of the trace's own rate."""
    duration_s: float | None = None
    """Simulated seconds of arrivals per run (default: the trace's whole span)."""
    search: bool = True
    search_runs: int = 12
    seed: int = 0
    settings: SimSettings = field(default_factory=SimSettings)
    faults: FaultPlan | None = None


@dataclass
class ExperimentResult:
    summary: dict[str, Any]
    runs: dict[str, list[RunResult]]
    """Per policy, the fixed-load runs (the rate search's runs are not kept)."""


def _workload(exp: Experiment, multiplier: float) -> Workload:
    return Workload(
        exp.trace,
        multiplier,
        seed=exp.seed,
        pool_block_tokens=exp.settings.kv_block_tokens,
        duration_s=exp.duration_s,
    )


def run_experiment(exp: Experiment, progress: Progress | None = None) -> ExperimentResult:
    say = progress or (lambda line: None)
    base = _workload(exp, 1.0)
    capacity_rps = no_reuse_capacity_rps(base, exp.fleet)
    trace_rps = exp.trace.rate_rps
    if exp.rate_scale is not None:
        points = [(exp.rate_scale * trace_rps / capacity_rps, exp.rate_scale)]
    else:
        points = [(load, load * capacity_rps / trace_rps) for load in exp.loads]
    kv_tokens = sum(
        g.count * g.hardware.kv_cache.total_blocks * g.hardware.kv_cache.block_tokens
        for g in exp.fleet.groups
    )
    workloads = {m: _workload(exp, m) for _, m in points}
    main = workloads[points[0][1]]
    bound = main.kv_hit_bound()
    fleet_bound = fleet_cache_bound(main, kv_tokens)
    say(
        f"{exp.trace.name}: {len(exp.trace)} requests at {trace_rps:.2f} req/s; fleet "
        f"{exp.fleet.describe()} ({exp.fleet.nodes} nodes, {exp.fleet.capacity_mu_s:.0f} MU/s = "
        f"{capacity_rps:.1f} req/s of this trace without reuse); KV hit bound "
        f"{bound:.1%} (infinite cache), {fleet_bound:.1%} (the fleet's KV memory as one LRU)"
    )
    summary: dict[str, Any] = {
        "_run": {
            "trace": exp.trace.name,
            "trace_requests": len(exp.trace),
            "trace_rate_rps": trace_rps,
            "arrivals_spread_s": exp.trace.bucket_s,
            "fleet": exp.fleet.describe(),
            "nodes": exp.fleet.nodes,
            "fleet_capacity_mu_s": exp.fleet.capacity_mu_s,
            "no_reuse_capacity_rps": capacity_rps,
            "slo": exp.slo.model_dump(),
            "seed": exp.seed,
            "duration_s": main.duration_s,
            "loads": [load for load, _ in points],
            "settings": {
                "max_tokens": exp.settings.max_tokens,
                "scrape_interval_s": exp.settings.scrape_interval_s,
                "reserve_factor": exp.settings.reserve_factor,
                "kv_block_tokens": main.pool_block_tokens,
            },
            "kv_hit_bound_fleet_cache": fleet_bound,
        }
    }
    runs: dict[str, list[RunResult]] = {}
    for name in exp.policies:
        by_load: dict[str, Any] = {}
        runs[name] = []
        for load, multiplier in points:
            result = simulate(workloads[multiplier], exp.fleet, name, exp.settings, exp.faults, say)
            runs[name].append(result)
            figures = summarize(result, exp.slo)
            by_load[f"{load:g}"] = figures
            say(
                f"{name:>20} load {load:.2f}: attainment {figures['slo_attainment']:.1%}, "
                f"TTFT p99 {figures['ttft_p99_ms']:.0f} ms, KV hits {figures['kv_hit_rate']:.1%}, "
                f"imbalance {figures['load_imbalance']:.2f} ({len(result.requests)} requests, "
                f"{result.wall_s:.1f} s)"
            )
        entry = dict(by_load[f"{points[0][0]:g}"])
        entry["kv_hit_bound"] = bound
        entry["by_load"] = by_load
        if exp.search:
            searched = _search(exp, name, capacity_rps, trace_rps, say)
            entry["rate_at_slo90_rps"] = searched[0]
            entry["rate_search"] = searched[1]
        summary[name] = entry
    return ExperimentResult(summary, runs)


def _search(
    exp: Experiment, name: str, capacity_rps: float, trace_rps: float, say: Progress
) -> tuple[float, list[dict[str, float]]]:
    def attainment_at(rate_rps: float) -> float:
        workload = _workload(exp, rate_rps / trace_rps)
        result = simulate(workload, exp.fleet, name, exp.settings, exp.faults)
        value = float(summarize(result, exp.slo)["slo_attainment"])
        say(f"{name:>20} search: {rate_rps:8.1f} req/s → {value:.1%} within SLO")
        return value

    found = search_rate(attainment_at, capacity_rps, max_runs=exp.search_runs)
    share = found.rate / capacity_rps
    say(f"{name:>20} rate at 90% SLO: {found.rate:.1f} req/s ({share:.2f} × capacity)")
    return found.rate, [{"rate_rps": r, "slo_attainment": a} for r, a in found.runs]
