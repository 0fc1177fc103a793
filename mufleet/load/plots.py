"""PNG plots of a load run: latency and throughput over time, the router's view of the
nodes over the same time, and (step shape) the knee."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mufleet.load.analysis import (
    ADMITTED_MU,
    SpanStats,
    Window,
    series,
    state_timeline,
)
from mufleet.load.scrape import Sample

Mark = tuple[float, str]
"""A vertical line at a test second, with its label (a step boundary, a fault)."""

STATE_COLOURS = {
    "healthy": "#4caf50",
    "suspect": "#ffc107",
    "cordoned": "#f44336",
    "restarting": "#9c27b0",
    "probation": "#03a9f4",
    "draining": "#795548",
}


def _marks(ax: plt.Axes, marks: Sequence[Mark]) -> None:
    for t, label in marks:
        ax.axvline(t, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            label,
            (t, 1),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            rotation=90,
            va="top",
            ha="right",
            color="grey",
        )


def _mid(w: Window) -> float:
    return (w.start_s + w.end_s) / 2


def _line(ax: plt.Axes, xs: list[float], ys: list[float | None], **style: object) -> None:
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], **style)  # type: ignore[arg-type]


def plot_latency(wins: Sequence[Window], path: Path, marks: Sequence[Mark], title: str) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    xs = [_mid(w) for w in wins]
    _line(top, xs, [w.ttft_p50_ms for w in wins], label="TTFT p50", marker=".")
    _line(top, xs, [w.ttft_p99_ms for w in wins], label="TTFT p99", marker=".")
    _line(bottom, xs, [w.e2e_p50_ms for w in wins], label="E2E p50", marker=".")
    _line(bottom, xs, [w.e2e_p99_ms for w in wins], label="E2E p99", marker=".")
    top.set_ylabel("TTFT (ms)")
    bottom.set_ylabel("end-to-end (ms)")
    bottom.set_xlabel("test time (s); latency of requests sent in each window")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        _marks(ax, marks)
    top.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(wins: Sequence[Window], path: Path, marks: Sequence[Mark], title: str) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = [_mid(w) for w in wins]
    width = (wins[0].end_s - wins[0].start_s) if wins else 1.0
    ax.plot(xs, [w.request_rate for w in wins], marker=".", label="requests/s (completed)")
    ax.bar(
        xs,
        [w.failed / width for w in wins],
        width=width * 0.8,
        color="#f44336",
        alpha=0.5,
        label="failed/s",
    )
    ax.set_ylabel("requests/s")
    ax.set_xlabel("test time (s)")
    tokens = ax.twinx()
    tokens.plot(
        xs, [w.token_rate for w in wins], color="#ff9800", marker=".", label="output tokens/s"
    )
    tokens.set_ylabel("output tokens/s")
    ax.grid(alpha=0.3)
    lines = ax.get_legend_handles_labels()
    more = tokens.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    _marks(ax, marks)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_router(
    samples: Sequence[Sample],
    t0: float,
    end_s: float,
    capacity_mu_s: float | None,
    path: Path,
    marks: Sequence[Mark],
    title: str,
) -> Path:
    """Per-node MU utilisation, the fleet's admitted MU/s against its calibrated
    capacity, and each node's health state, on the test's time axis."""
    fig, (util, mu, states) = plt.subplots(
        3, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.2]}
    )
    for labels, points in sorted(series(samples, "mufleet_router_utilisation_ratio").items()):
        node = dict(labels).get("node", "?")
        util.plot([t - t0 for t, _ in points], [v for _, v in points], label=node)
    util.set_ylabel("in-flight MU ÷ capacity (s)")
    util.set_title(title)
    admitted: dict[float, float] = {}
    for points in series(samples, ADMITTED_MU).values():
        for t, v in points:
            admitted[t] = admitted.get(t, 0.0) + v
    times = sorted(admitted)
    rates = [
        (b - t0, (admitted[b] - admitted[a]) / (b - a))
        for a, b in itertools.pairwise(times)
        if b > a
    ]
    if rates:
        mu.plot([t for t, _ in rates], [r for _, r in rates], label="admitted MU/s")
    if capacity_mu_s:
        mu.axhline(
            capacity_mu_s,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"calibrated capacity {capacity_mu_s:.0f} MU/s",
        )
    mu.set_ylabel("MU/s")
    timeline = state_timeline(samples, t0)
    nodes = sorted(timeline)
    for row, node in enumerate(nodes):
        changes = timeline[node]
        for i, (t, state) in enumerate(changes):
            until = changes[i + 1][0] if i + 1 < len(changes) else end_s
            states.broken_barh(
                [(t, max(until - t, 0.0))],
                (row - 0.4, 0.8),
                color=STATE_COLOURS.get(state, "#9e9e9e"),
            )
    states.set_yticks(range(len(nodes)), nodes)
    states.set_xlabel("test time (s)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in STATE_COLOURS.values()]
    states.legend(
        handles,
        list(STATE_COLOURS),
        fontsize=7,
        ncol=6,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.45),
    )
    for ax in (util, mu):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8)
    for ax in (util, mu, states):
        _marks(ax, marks)
    states.set_xlim(0, end_s)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_knee(
    rows: Sequence[SpanStats],
    knee_step: int | None,
    power_step: int | None,
    capacity_mu_s: float | None,
    path: Path,
    title: str,
) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    users = [r.users for r in rows]
    left.plot(users, [r.request_rate for r in rows], marker="o", label="requests/s")
    left.set_xlabel("users")
    left.set_ylabel("requests/s")
    latency = left.twinx()
    _line(
        latency,
        [float(u) for u in users],
        [r.ttft_p99_ms for r in rows],
        marker="s",
        color="#f44336",
        label="TTFT p99 (ms)",
    )
    latency.set_ylabel("TTFT p99 (ms)")
    mu = [r.admitted_mu_s for r in rows]
    _line(right, [float(u) for u in users], mu, marker="o", label="admitted MU/s")
    if capacity_mu_s:
        right.axhline(
            capacity_mu_s,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"calibrated {capacity_mu_s:.0f} MU/s",
        )
    right.set_xlabel("users")
    right.set_ylabel("MU/s")
    for step, style, label in ((knee_step, ":", "knee (SLO)"), (power_step, "-.", "knee (power)")):
        if step is not None:
            for ax in (left, right):
                ax.axvline(rows[step].users, color="grey", linestyle=style, label=label)
    handles, labels = left.get_legend_handles_labels()
    more, more_labels = latency.get_legend_handles_labels()
    left.legend(handles + more, labels + more_labels, loc="upper left", fontsize=8)
    right.legend(loc="upper left", fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
