"""The calibration report: Markdown with the numbers, PNG plots beside it."""

from __future__ import annotations

from pathlib import Path

from mufleet.calibration.capacity import LoadPoint
from mufleet.calibration.run import Calibration
from router.engine_record import EngineRecord


def plot_busy(cal: Calibration, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for heldout, colour, label in ((False, "tab:blue", "fitted"), (True, "tab:orange", "held out")):
        pts = [p for p in cal.classes if p.heldout == heldout]
        ax.scatter(
            [p.measured_busy_s * 1e3 for p in pts],
            [p.predicted_busy_s * 1e3 for p in pts],
            c=colour,
            label=label,
        )
    top = max(max(p.measured_busy_s, p.predicted_busy_s) for p in cal.classes) * 1e3 * 1.1
    ax.plot([0, top], [0, top], "k--", lw=1, label="predicted = measured")
    ax.set(
        xlabel="measured busy time per request (ms)",
        ylabel="predicted busy time per request (ms)",
        title=f"{cal.profile.pair}: busy time (MAPE held out {cal.profile.fit.mape_busy_pct:.1f}%)"
        if cal.profile.fit
        else cal.profile.pair,
        xlim=(0, top),
        ylim=(0, top),
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def counted_points(cal: Calibration) -> list[LoadPoint]:
    """One point per concurrency: the last measurement the host did not pace, by level."""
    by_level: dict[int, LoadPoint] = {}
    for point in cal.load_points:
        if not point.host_paced:
            by_level[point.concurrency] = point
    return [by_level[c] for c in sorted(by_level)]


def plot_load(cal: Calibration, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = counted_points(cal)
    levels = [p.concurrency for p in points]
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4))
    lat.plot(levels, [p.ttft_p99_s * 1e3 for p in points], "o-", label="TTFT p99")
    lat.plot(levels, [p.tpot_p99_s * 1e3 for p in points], "s-", label="TPOT p99")
    lat.axhline(cal.profile.slo.ttft_p99_s * 1e3, color="tab:blue", ls=":", label="TTFT SLO")
    lat.axhline(cal.profile.slo.tpot_p99_s * 1e3, color="tab:orange", ls=":", label="TPOT SLO")
    thr.plot(levels, [p.rps for p in points], "o-", color="tab:green")
    for ax in (lat, thr):
        ax.axvline(cal.profile.capacity_concurrency, color="red", ls="--", label="capacity")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (standard mix)")
        ax.grid(alpha=0.3)
    lat.set(yscale="log", ylabel="latency (ms)", title="Latency vs load")
    thr.set(
        ylabel="requests/s", title=f"Throughput ({cal.profile.capacity_mu_s:.0f} MU/s at capacity)"
    )
    lat.legend(fontsize=8)
    thr.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _engine_line(engine: EngineRecord | None) -> str:
    if engine is None:
        return "not reported by the node"
    fields = engine.model_dump(exclude_none=True)
    return ", ".join(f"{k} {v}" for k, v in fields.items())


def write_report(cal: Calibration, directory: Path) -> Path:
    """Write ``report.md``, ``busy_time.png`` and ``latency_vs_load.png``; return the md."""
    directory.mkdir(parents=True, exist_ok=True)
    plot_busy(cal, directory / "busy_time.png")
    plot_load(cal, directory / "latency_vs_load.png")
    p = cal.profile
    c = p.coefficients
    fit = p.fit
    lines = [
        f"# Calibration of `{p.pair}`",
        "",
        f"Model `{p.model}` on `{p.hardware}`; SLO p99 TTFT ≤ {p.slo.ttft_p99_s * 1e3:.0f} ms, "
        f"p99 TPOT ≤ {p.slo.tpot_p99_s * 1e3:.1f} ms; time scale {p.time_scale:g}.",
        "",
        f"Engine: {_engine_line(p.engine)}.",
        "",
        "## Result",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| capacity | {p.capacity_mu_s:.1f} MU/s ({p.capacity_rps:.2f} req/s of the standard mix "
        f"at concurrency {p.capacity_concurrency}) |",
        f"| base | {c.base_s * 1e3:.3f} ms / request |",
        f"| prefill | {c.prefill_token_s * 1e6:.3f} µs / uncached prompt token |",
        f"| cached | {c.cached_token_s * 1e6:.3f} µs / cached prompt token |",
        f"| decode | {c.output_token_s * 1e3:.4f} ms / output token |",
        f"| context | {c.context_output_s * 1e9:.4f} ns / (output token × context token) |",
        f"| prefill context | {c.prefill_context_s * 1e9:.4f} ns / (uncached prompt token × "
        "token it attends over) |",
    ]
    if fit is not None:
        lines += [
            f"| busy-time MAPE, held-out classes | {fit.mape_busy_pct:.1f}% "
            f"({fit.heldout_points} classes; fitted on {fit.fit_points}) |",
            f"| capacity MAPE, held-out mix | {fit.mape_capacity_pct:.1f}% "
            f"({cal.heldout_mix_rps:.2f} req/s measured, "
            f"{cal.heldout_mix_predicted_rps:.2f} predicted) |",
        ]
    lines += [
        "",
        "![busy time](busy_time.png)",
        "![latency vs load](latency_vs_load.png)",
        "",
        "## Load points (standard mix, every measurement in order)",
        "",
        "| concurrency | time scale | requests | req/s | TTFT p99 (ms) | TPOT p99 (ms) | errors "
        "| verdict |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lp in cal.load_points:
        verdict = "meets SLO" if lp.meets(p.slo) else "breaks SLO"
        if lp.host_paced:
            verdict = f"discarded: host-paced ({lp.pace_note})"
        lines.append(
            f"| {lp.concurrency} | {lp.time_scale:g} | {lp.samples} | {lp.rps:.2f} | "
            f"{lp.ttft_p99_s * 1e3:.1f} | "
            f"{lp.tpot_p99_s * 1e3:.2f} | {lp.errors} | {verdict} |"
        )
    lines += [
        "",
        "## Classes",
        "",
        "| class | set | prompt | cached | output | measured (ms) | predicted (ms) | error |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for cp in cal.classes:
        err = (cp.predicted_busy_s - cp.measured_busy_s) / cp.measured_busy_s * 100
        lines.append(
            f"| {cp.cls.name} | {'held out' if cp.heldout else 'fit'} | {cp.shape.prompt_tokens} "
            f"| {cp.shape.cached_tokens} | {cp.shape.output_tokens} | "
            f"{cp.measured_busy_s * 1e3:.2f} | {cp.predicted_busy_s * 1e3:.2f} | {err:+.1f}% |"
        )
    if cal.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in cal.notes]]
    path = directory / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
