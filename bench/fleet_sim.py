"""Policy against policy on the shared traces: the fleet simulator's benchmark matrix.

    .venv/bin/python bench/fleet_sim.py [--only NAME,...] [--out bench/results/sim]

Runs ``mufleet simulate`` for every configuration below (trace × fleet × loads, every
policy, each with its rate search), writes one folder per configuration (summary.json,
report.md, PNGs) and a combined ``table.md`` plus ``rate_at_slo90.png`` across them. A
configuration whose ``summary.json`` exists is not run again (``--force`` reruns it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mufleet.cli import main as mufleet_main

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
MOONCAKE = TRACES / "mooncake_conversation_trace.first40min.jsonl.gz"
CONV = TRACES / "AzureLLMInferenceTrace_conv.before_1855.csv.gz"
H100 = "llama-3.1-8b_h100-sxm_tp1"
A100 = "llama-3.1-8b_a100-sxm-80gb_tp1"
LOADS = "0.5,0.8,1.0,1.2"


@dataclass(frozen=True)
class Config:
    name: str
    trace: Path
    fleet: str
    duration_s: float
    loads: str = LOADS
    search_runs: int = 12


CONFIGS = (
    Config("mooncake_h100x16", MOONCAKE, f"{H100}:16", 600),
    Config("mooncake_h100x64", MOONCAKE, f"{H100}:64", 300),
    Config("mooncake_hetero_12h100_4a100", MOONCAKE, f"{H100}:12,{A100}:4", 600, "0.5,1.0", 10),
    Config("azure_conv_h100x16", CONV, f"{H100}:16", 120, "0.5,1.0", 8),
    Config("azure_conv_hetero_12h100_4a100", CONV, f"{H100}:12,{A100}:4", 120, "0.5,1.0", 8),
    Config("mooncake_h100x512", MOONCAKE, f"{H100}:512", 60, loads="1.0", search_runs=7),
)


def run(config: Config, out: Path, force: bool) -> dict[str, Any]:
    folder = out / config.name
    summary = folder / "summary.json"
    if summary.exists() and not force:
        print(f"{config.name}: kept {summary}", flush=True)
    else:
        started = time.perf_counter()
        code = mufleet_main(
            [
                "simulate",
                "--trace",
                str(config.trace),
                "--fleet",
                config.fleet,
                "--load",
                config.loads,
                "--duration",
                str(config.duration_s),
                "--search-runs",
                str(config.search_runs),
                "--out",
                str(folder),
            ]
        )
        if code:
            raise SystemExit(f"{config.name}: mufleet simulate exited {code}")
        print(f"{config.name}: {time.perf_counter() - started:.0f} s", flush=True)
    data: dict[str, Any] = json.loads(summary.read_text())
    return data


def _policies(summary: dict[str, Any]) -> list[str]:
    return [k for k in summary if not k.startswith("_")]


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| configuration | policy | rate at 90% SLO ÷ capacity | vs round_robin "
        "| vs best baseline | TTFT p99 @1.0 (ms) | KV hits @1.0 "
        "| hit bound (fleet LRU / infinite) | imbalance |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    baselines = {"round_robin", "least_request", "power_of_two", "sglang_cache_aware"}
    baselines |= {"dynamo_kv", "llmd_scorers"}
    for name, summary in results.items():
        run_info = summary["_run"]
        capacity = float(run_info["no_reuse_capacity_rps"])
        rates = {p: float(summary[p]["rate_at_slo90_rps"]) for p in _policies(summary)}
        best = max((rates[p] for p in rates if p in baselines), default=0.0)
        rr = rates.get("round_robin", 0.0)
        for policy in _policies(summary):
            row = summary[policy]
            at_one = row["by_load"].get("1", row)
            rate = rates[policy]
            vs_rr = rate / rr if rr else float("nan")
            vs_best = rate / best if best else float("nan")
            bounds = f"{run_info['kv_hit_bound_fleet_cache']:.1%} / {row['kv_hit_bound']:.1%}"
            lines.append(
                f"| {name} | {policy} | {rate / capacity:.2f} | {vs_rr:.2f} | {vs_best:.2f} | "
                f"{at_one['ttft_p99_ms']:.0f} | {at_one['kv_hit_rate']:.1%} | {bounds} | "
                f"{at_one['load_imbalance']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(12, 0.6 + 0.5 * len(results)))
    names = list(results)
    policies = sorted({p for s in results.values() for p in _policies(s)})
    width = 0.8 / max(len(policies), 1)
    for j, policy in enumerate(policies):
        values = []
        for name in names:
            summary = results[name]
            capacity = float(summary["_run"]["no_reuse_capacity_rps"])
            row = summary.get(policy)
            values.append(float(row["rate_at_slo90_rps"]) / capacity if row else 0.0)
        ax.barh([i + j * width for i in range(len(names))], values, height=width, label=policy)
    ax.set_yticks([i + 0.4 - width / 2 for i in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xlabel("highest rate with ≥ 90% of requests within SLO ÷ the fleet's no-reuse capacity")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/sim"))
    parser.add_argument("--only", help="comma-separated configuration names")
    parser.add_argument("--force", action="store_true", help="rerun configurations already done")
    args = parser.parse_args(argv)
    chosen = [c for c in CONFIGS if not args.only or c.name in args.only.split(",")]
    results = {c.name: run(c, args.out, args.force) for c in chosen}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table(results))
    plot(results, args.out / "rate_at_slo90.png")
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
