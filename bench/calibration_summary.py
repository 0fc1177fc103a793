"""The calibrated pairs side by side: a Markdown table and a capacity/MAPE plot.

    python bench/calibration_summary.py profiles/*.json --out docs/img/calibration_summary.png

``bench/calibrate_pairs.py`` writes the same for the pairs it calibrates; this draws them
from saved profiles, so pairs calibrated in separate runs share one table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from router.cost_model import PairProfile


def summary(profiles: Sequence[PairProfile]) -> str:
    lines = [
        "| pair | capacity (MU/s) | req/s at capacity | concurrency | base (ms) "
        "| prefill (µs/tok) | decode (ms/tok) | context (ns/tok²) | prefill context (ns/tok²) "
        "| MAPE busy | MAPE capacity |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in profiles:
        c, f = p.coefficients, p.fit
        assert f is not None
        lines.append(
            f"| `{p.pair}` | {p.capacity_mu_s:.0f} | {p.capacity_rps:.2f} | "
            f"{p.capacity_concurrency} | {c.base_s * 1e3:.2f} | {c.prefill_token_s * 1e6:.2f} | "
            f"{c.output_token_s * 1e3:.3f} | {c.context_output_s * 1e9:.3f} | "
            f"{c.prefill_context_s * 1e9:.3f} | "
            f"{f.mape_busy_pct:.1f}% | {f.mape_capacity_pct:.1f}% |"
        )
    return "\n".join(lines)


def plot(profiles: Sequence[PairProfile], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p.pair for p in profiles]
    fig, (cap, err) = plt.subplots(1, 2, figsize=(12, 4.5))
    cap.barh(names, [p.capacity_mu_s for p in profiles], color="tab:green")
    cap.set(xlabel="capacity (MU/s; reference = 1000)", title="Capacity at the SLO")
    y = range(len(profiles))
    err.barh(
        [i - 0.2 for i in y],
        [p.fit.mape_busy_pct if p.fit else 0.0 for p in profiles],
        height=0.4,
        label="busy time, held-out classes",
    )
    err.barh(
        [i + 0.2 for i in y],
        [p.fit.mape_capacity_pct if p.fit else 0.0 for p in profiles],
        height=0.4,
        label="capacity, held-out mix",
    )
    err.axvline(10, color="red", ls="--", lw=1, label="10%")
    err.set(yticks=list(y), yticklabels=names, xlabel="MAPE (%)", title="Prediction error")
    err.legend(fontsize=8)
    for ax in (cap, err):
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", type=Path, help="saved pair profiles (JSON)")
    parser.add_argument("--out", type=Path, required=True, help="the plot (PNG)")
    args = parser.parse_args(argv)
    profiles = [PairProfile.load(path) for path in args.profiles]
    print(summary(profiles))
    plot(profiles, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
