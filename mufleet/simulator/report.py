"""``summary.json``, ``report.md`` and PNG plots of one simulation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mufleet.simulator.experiment import ExperimentResult

__all__ = ["write_report"]

_COLUMNS = (
    ("rate_at_slo90_rps", "rate at 90% SLO (req/s)", "{:.1f}"),
    ("goodput_rps", "goodput (req/s)", "{:.1f}"),
    ("slo_attainment", "SLO attainment", "{:.1%}"),
    ("ttft_p50_ms", "TTFT p50 (ms)", "{:.0f}"),
    ("ttft_p99_ms", "TTFT p99 (ms)", "{:.0f}"),
    ("tpot_p50_ms", "TPOT p50 (ms)", "{:.1f}"),
    ("tpot_p99_ms", "TPOT p99 (ms)", "{:.1f}"),
    ("kv_hit_rate", "KV hits", "{:.1%}"),
    ("load_imbalance", "imbalance", "{:.2f}"),
    ("shed_mu", "shed MU", "{:.0f}"),
)


def _policies(summary: dict[str, Any]) -> list[str]:
    return [k for k in summary if not k.startswith("_")]


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def _table(summary: dict[str, Any]) -> list[str]:
    shown = [c for c in _COLUMNS if any(c[0] in summary[p] for p in _policies(summary))]
    lines = ["| policy | " + " | ".join(c[1] for c in shown) + " |"]
    lines.append("|---|" + "---:|" * len(shown))
    for name in _policies(summary):
        row = summary[name]
        lines.append(f"| {name} | " + " | ".join(_cell(row.get(k), f) for k, _, f in shown) + " |")
    return lines


def _markdown(summary: dict[str, Any], plots: list[str]) -> str:
    run = summary["_run"]
    policies = _policies(summary)
    bound = summary[policies[0]]["kv_hit_bound"] if policies else 0.0
    slo = run["slo"]
    lines = [
        f"# Fleet simulation: {run['trace']} on {run['fleet']}",
        "",
        f"- {run['nodes']} nodes, {run['fleet_capacity_mu_s']:.0f} MU/s calibrated = "
        f"{run['no_reuse_capacity_rps']:.1f} req/s of this trace without prefix reuse",
        f"- load {', '.join(f'{x:g}' for x in run['loads'])} of that; {run['duration_s']:.0f} s "
        f"of arrivals per run, seed {run['seed']}"
        + (
            f"; timestamps quantised to {run['arrivals_spread_s']:g} s were spread uniformly "
            "within their bucket"
            if run["arrivals_spread_s"]
            else ""
        ),
        f"- SLO: TTFT ≤ {slo['ttft_s']:g} s + {slo['ttft_per_1k_s']:g} s per 1k prompt tokens, "
        f"mean TPOT ≤ {slo['tpot_s'] * 1000:g} ms",
        f"- KV token hit bound: {bound:.1%} with one infinite cache, "
        f"{run['kv_hit_bound_fleet_cache']:.1%} with the fleet's KV memory as one LRU cache",
        "",
        *_table(summary),
        "",
    ]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def _plot_rates(summary: dict[str, Any], out: Path) -> Path | None:
    policies = [p for p in _policies(summary) if "rate_at_slo90_rps" in summary[p]]
    if not policies:
        return None
    capacity = summary["_run"]["no_reuse_capacity_rps"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    values = [summary[p]["rate_at_slo90_rps"] / capacity for p in policies]
    left.barh(policies, values, color=["C3" if p == "mu_cost" else "C0" for p in policies])
    left.set_xlabel("rate at ≥ 90% SLO ÷ no-reuse capacity")
    left.invert_yaxis()
    for p in policies:
        runs = sorted(summary[p].get("rate_search", []), key=lambda r: r["rate_rps"])
        right.plot(
            [r["rate_rps"] / capacity for r in runs],
            [r["slo_attainment"] for r in runs],
            marker="o",
            label=p,
        )
    right.axhline(0.9, color="grey", linestyle=":")
    right.set_xlabel("arrival rate ÷ no-reuse capacity")
    right.set_ylabel("SLO attainment")
    right.legend(fontsize=7)
    fig.suptitle(f"{summary['_run']['trace']} on {summary['_run']['fleet']}")
    fig.tight_layout()
    path = out / "rate_at_slo90.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_latency(result: ExperimentResult, out: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, runs in result.runs.items():
        served = [r for r in runs[0].requests if not r.shed and r.finish_s >= 0]
        ttft = np.sort([r.ttft_s for r in served])
        share = np.array(runs[0].node_mu) / np.array(runs[0].node_capacity)
        if len(ttft):
            left.plot(ttft, np.linspace(0, 1, len(ttft)), label=name)
        right.plot(np.sort(share)[::-1] / max(share.mean(), 1e-9), label=name)
    left.set_xscale("log")
    left.set_xlabel("TTFT (s)")
    left.set_ylabel("fraction of requests")
    left.legend(fontsize=7)
    right.set_xlabel("node (busiest first)")
    right.set_ylabel("MU served per MU/s, ÷ fleet mean")
    fig.suptitle("first load point")
    fig.tight_layout()
    path = out / "latency_and_balance.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such figures (nothing measured) become ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_report(result: ExperimentResult, out: Path) -> Path:
    """Write the three outputs to ``out``; returns the Markdown report's path."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(result.summary), indent=2, allow_nan=False)
    (out / "summary.json").write_text(text + "\n")
    plots = [p for p in (_plot_rates(result.summary, out), _plot_latency(result, out)) if p]
    report = out / "report.md"
    report.write_text(_markdown(result.summary, [str(p) for p in plots]))
    return report
