"""The report folder of a load run: ``report.md``, ``summary.json`` and the plots.

It reads what the run left: ``llm_requests.csv`` / ``llm_meta.json`` (the locustfile),
``router_metrics.csv`` (the scrape) and, for a failover run, when the fault was set and
cleared. Locust's own ``stats_*.csv`` and ``report.html`` sit beside it, untouched.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mufleet.load.analysis import (
    ROUTER_COUNTERS,
    Recovery,
    SpanStats,
    counter_increase,
    find_knee,
    recovery,
    span_stats,
    state_timeline,
    windows,
)
from mufleet.load.metrics import ERROR_KINDS, RequestRecord, Slo, Summary, summarize
from mufleet.load.plots import Mark, plot_knee, plot_latency, plot_router, plot_throughput
from mufleet.load.scrape import read_samples
from mufleet.load.shapes import AnySchedule, Span, StepRamp, build_schedule


@dataclass(frozen=True)
class FaultWindow:
    node: str
    at_s: float
    """Test seconds at which the node was hung."""
    clear_s: float
    """Test seconds at which the fault was cleared."""


@dataclass(frozen=True)
class RunContext:
    scenario: str
    command: str
    schedule: AnySchedule
    slo: Slo
    capacity_mu_s: float | None = None
    """The fleet's calibrated capacity in MU per wall-clock second (profile capacity over
    the nodes' time scale)."""
    capacity_note: str = ""
    fault: FaultWindow | None = None
    expected_errors: frozenset[str] = field(default_factory=frozenset)
    host_note: str = ""
    """The load generator's host during the run (its load average), for reading timings."""
    cached_tokens: int | None = None
    """Prompt tokens the nodes served from their prefix caches during the run."""


def save_context(path: Path, ctx: RunContext, schedule_args: dict[str, Any]) -> None:
    """``run.json``: what :func:`build_report` needs besides the run's own files, so that
    ``mufleet load --report-from DIR`` can draw the report again."""
    data = {
        **asdict(ctx),
        "schedule": schedule_args,
        "expected_errors": sorted(ctx.expected_errors),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def load_context(path: Path) -> RunContext:
    data = json.loads(path.read_text())
    fault = data.get("fault")
    return RunContext(
        scenario=data["scenario"],
        command=data["command"],
        schedule=build_schedule(**data["schedule"]),
        slo=Slo(**data["slo"]),
        capacity_mu_s=data.get("capacity_mu_s"),
        capacity_note=data.get("capacity_note", ""),
        fault=FaultWindow(**fault) if fault else None,
        expected_errors=frozenset(data.get("expected_errors", ())),
        host_note=data.get("host_note", ""),
        cached_tokens=data.get("cached_tokens"),
    )


@dataclass(frozen=True)
class Report:
    path: Path
    total: Summary
    unexpected_failures: int
    figures: dict[str, Any]


def read_records(path: Path) -> list[RequestRecord]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [RequestRecord.from_row(row) for row in csv.DictReader(f)]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _summary_table(rows: Sequence[Summary]) -> list[str]:
    lines = [
        "| class [tenant] | requests | ok | errors | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) "
        "| E2E p50 / p99 (ms) | output tok/s | tok/s per user | SLO attained |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in rows:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "0"
        lines.append(
            f"| {s.user_class} [{s.tenant}] | {s.requests} | {s.ok} | {errors} "
            f"| {_fmt(s.ttft_ms.get(50))} / {_fmt(s.ttft_ms.get(99))} "
            f"| {_fmt(s.tpot_ms.get(50), 2)} / {_fmt(s.tpot_ms.get(99), 2)} "
            f"| {_fmt(s.e2e_ms.get(50), 0)} / {_fmt(s.e2e_ms.get(99), 0)} "
            f"| {_fmt(s.output_token_rate)} | {_fmt(s.per_user_token_rate, 0)} "
            f"| {_pct(s.slo_attainment)} |"
        )
    return lines


def _span_table(rows: Sequence[SpanStats], knee: int | None = None) -> list[str]:
    lines = [
        "| span | users | requests | failed | req/s | output tok/s | TTFT p50 / p99 (ms) "
        "| TPOT p99 (ms) | E2E p99 (ms) | SLO attained | admitted MU/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rows):
        name = f"**{r.name} (knee)**" if i == knee else r.name
        lines.append(
            f"| {name} | {r.users} | {r.requests} | {r.failed} | {r.request_rate:.2f} "
            f"| {r.output_token_rate:.1f} | {_fmt(r.ttft_p50_ms)} / {_fmt(r.ttft_p99_ms)} "
            f"| {_fmt(r.tpot_p99_ms, 2)} | {_fmt(r.e2e_p99_ms, 0)} | {_pct(r.slo_attainment)} "
            f"| {_fmt(r.admitted_mu_s)} |"
        )
    return lines


def _failover_spans(fault: FaultWindow, end_s: float, users: int) -> list[Span]:
    return [
        Span("before the fault", 0.0, fault.at_s, users),
        Span(f"{fault.node} hung", fault.at_s, fault.clear_s, users),
        Span("after clearing", fault.clear_s, end_s, users),
    ]


def build_report(out_dir: Path, ctx: RunContext) -> Report:
    records = read_records(out_dir / "llm_requests.csv")
    meta = json.loads((out_dir / "llm_meta.json").read_text())
    samples = read_samples(out_dir / "router_metrics.csv")
    t0 = float(meta["start_s"])
    end_s = float(meta.get("stop_s") or t0 + ctx.schedule.duration_s) - t0
    duration = max(end_s, 1e-9)
    rows = summarize(records, duration, ctx.slo)
    total = rows[-1]
    spans = ctx.schedule.spans()
    marks: list[Mark] = [(s.start_s, s.name) for s in spans[1:]]
    figures: dict[str, Any] = {
        "scenario": ctx.scenario,
        "requests": total.requests,
        "ok": total.ok,
        "errors": total.errors,
        "ttft_p99_ms": total.ttft_ms.get(99),
        "slo_attainment": total.slo_attainment,
        "output_tokens_per_s": total.output_token_rate,
        "duration_s": round(duration, 1),
    }
    lines = [
        f"# Load run: {ctx.scenario}",
        "",
        f"Command: `{ctx.command}`",
        "",
        f"Shape: {type(ctx.schedule).__name__}, {ctx.schedule.duration_s:.0f} s; "
        f"{meta.get('users')} users ({', '.join(meta.get('user_classes') or [])}) at "
        f"{meta.get('spawn_rate')}/s; target `{meta.get('target')}` at {meta.get('host')}. "
        f"SLO: {ctx.slo.describe()}. {ctx.host_note}",
        "",
        "## Requests by user class and tenant",
        "",
        *_summary_table(rows),
        "",
        "Errors by kind over all requests: "
        + ", ".join(f"{k.value} {total.errors.get(k.value, 0)}" for k in ERROR_KINDS)
        + ".",
        "",
    ]
    settle = 0.0
    knee_index: int | None = None
    if isinstance(ctx.schedule, StepRamp):
        settle = min(5.0, ctx.schedule.step_s / 4)
    span_rows = [span_stats(records, t0, s, ctx.slo, samples, settle) for s in spans]
    if isinstance(ctx.schedule, StepRamp):
        knee = find_knee(span_rows, ctx.slo)
        knee_index = knee.slo_step
        lines += _knee_section(span_rows, knee_index, knee.slo_reached, knee.power_step, ctx)
        figures["knee"] = _knee_figures(span_rows, knee_index, knee.power_step, ctx)
        plot_knee(
            span_rows,
            knee_index,
            knee.power_step,
            ctx.capacity_mu_s,
            out_dir / "knee.png",
            f"{ctx.scenario}: step ramp",
        )
        lines += ["![knee](knee.png)", ""]
    elif len(spans) > 1 and ctx.fault is None:
        lines += ["## Spans", "", *_span_table(span_rows), ""]
    if ctx.fault is not None:
        marks = [(ctx.fault.at_s, f"{ctx.fault.node} hung"), (ctx.fault.clear_s, "cleared")]
        phase_rows = [
            span_stats(records, t0, s, ctx.slo, samples)
            for s in _failover_spans(ctx.fault, end_s, spans[0].users)
        ]
        rec = recovery(
            state_timeline(samples, t0), ctx.fault.node, ctx.fault.at_s, ctx.fault.clear_s
        )
        lines += _failover_section(phase_rows, rec, ctx.fault)
        figures["failover"] = {
            "node": ctx.fault.node,
            "fault_at_s": ctx.fault.at_s,
            "clear_at_s": ctx.fault.clear_s,
            "phases": [asdict(r) for r in phase_rows],
            "detected_s": rec.detected_s,
            "healthy_again_s": rec.healthy_again_s,
            "states": rec.states,
        }
    if samples:
        counted = {
            label: round(counter_increase(samples, metric, t0, t0 + end_s + 5), 1)
            for label, metric in ROUTER_COUNTERS.items()
        }
        figures["router"] = counted
        lines += [
            "Router over the run: " + ", ".join(f"{k} {v:g}" for k, v in counted.items()) + ".",
            "",
        ]
    if ctx.cached_tokens is not None:
        sent = sum(r.input_tokens or 0 for r in records if r.ok)
        share = (
            f" of {sent} prompt tokens sent ({100 * ctx.cached_tokens / sent:.1f}%)" if sent else ""
        )
        figures["cached_prompt_tokens"] = ctx.cached_tokens
        figures["prompt_tokens"] = sent
        lines += [
            f"Prefix cache: {ctx.cached_tokens} prompt tokens served from the nodes' KV "
            f"caches{share}.",
            "",
        ]
    lags = [r.lag_s for r in records]
    if meta.get("trace"):
        late = sum(lag > 0.1 for lag in lags)
        figures["trace"] = {"late_starts": late, "max_lag_s": max(lags, default=0.0)}
        lines += [
            f"Trace `{Path(str(meta['trace'])).name}` replayed ×{meta.get('rate_scale')} with "
            f"{meta.get('block_tokens')}-token blocks; {late} of {len(records)} requests were "
            f"sent more than 100 ms late (max lag {max(lags, default=0.0):.2f} s).",
            "",
        ]
    width = min(10.0, max(2.0, duration / 30))
    wins = windows(records, t0, width, end_s)
    title = f"{ctx.scenario} ({type(ctx.schedule).__name__})"
    plot_latency(wins, out_dir / "latency.png", marks, title)
    plot_throughput(wins, out_dir / "throughput.png", marks, title)
    plot_router(samples, t0, end_s, ctx.capacity_mu_s, out_dir / "router.png", marks, title)
    lines += [
        "## Over time",
        "",
        "![latency percentiles](latency.png)",
        "![throughput](throughput.png)",
        "![router: MU utilisation and health per node](router.png)",
        "",
        "Locust's own output: `stats_stats.csv`, `stats_stats_history.csv`, "
        "`stats_failures.csv`, `stats_exceptions.csv`, `report.html`; per request "
        "`llm_requests.csv`; per class and tenant `llm_summary.csv`; the router's metrics "
        "`router_metrics.csv`.",
        "",
    ]
    unexpected = sum(n for kind, n in total.errors.items() if kind not in ctx.expected_errors)
    figures["unexpected_failures"] = unexpected
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    (out_dir / "summary.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return Report(path, total, unexpected, figures)


def _knee_figures(
    rows: Sequence[SpanStats], knee: int | None, power: int | None, ctx: RunContext
) -> dict[str, Any]:
    at = rows[knee] if knee is not None else None
    admitted = at.admitted_mu_s if at else None
    return {
        "slo_step": knee,
        "power_step": power,
        "users": at.users if at else None,
        "request_rate": at.request_rate if at else None,
        "admitted_mu_s": admitted,
        "calibrated_mu_s": ctx.capacity_mu_s,
        "ratio": admitted / ctx.capacity_mu_s if admitted and ctx.capacity_mu_s else None,
        "steps": [asdict(r) for r in rows],
    }


def _knee_section(
    rows: Sequence[SpanStats],
    knee: int | None,
    reached: bool,
    power: int | None,
    ctx: RunContext,
) -> list[str]:
    lines = ["## Step ramp", "", *_span_table(rows, knee), ""]
    if knee is None:
        lines.append("The first step already breaks the SLO: no knee inside this ramp.")
    else:
        at = rows[knee]
        where = "" if reached else " (the SLO held at every step: the knee lies beyond)"
        lines.append(
            f"Knee (the most admitted MU/s before p99 TTFT or TPOT breaks the SLO){where}: "
            f"step {knee + 1}, {at.users} users, {at.request_rate:.2f} req/s, "
            f"{_fmt(at.admitted_mu_s)} admitted MU/s."
        )
        if at.admitted_mu_s and ctx.capacity_mu_s:
            lines.append(
                f"Calibrated capacity {ctx.capacity_mu_s:.1f} MU/s{ctx.capacity_note}: "
                f"admitted ÷ calibrated = **{at.admitted_mu_s / ctx.capacity_mu_s:.2f}**."
            )
    if power is not None:
        lines.append(
            f"Highest power (throughput ÷ median latency): step {power + 1}, "
            f"{rows[power].users} users."
        )
    return [*lines, ""]


def _failover_section(rows: Sequence[SpanStats], rec: Recovery, fault: FaultWindow) -> list[str]:
    before, during = rows[0], rows[1]
    lines = [
        "## Failover",
        "",
        f"`{fault.node}` hung through its fault switch at {fault.at_s:.1f} s, cleared at "
        f"{fault.clear_s:.1f} s.",
        "",
        *_span_table(rows),
        "",
        f"Requests failed: {sum(r.failed for r in rows)} (before {before.failed}, during "
        f"{during.failed}, after {rows[2].failed}). TTFT p99 during the failure "
        f"{_fmt(during.ttft_p99_ms)} ms vs {_fmt(before.ttft_p99_ms)} ms before.",
        f"Router: {fault.node} left `healthy` {_fmt(rec.detected_s, 2)} s after the fault "
        f"(states {' → '.join(rec.states) or 'none seen'}), healthy again "
        f"{_fmt(rec.healthy_again_s, 1)} s after clearing.",
        "",
    ]
    return lines
