"""How far repeated calibrations of one pair agree.

    python bench/calibration_repro.py profiles/P.json bench/results/repro/runs/P-*.json

For each pair among the saved profiles given: the spread of capacity (req/s of the
standard mix at the SLO), of each cost coefficient that carries more than 5% of the
standard mix's cost, and of the MU price of the standard mix. Spread is
(max − min) / median, so "within 10%" means the extremes of the runs are within 10% of
their middle. ``bench/calibrate_pairs.py --repeat N`` writes the same table as it goes.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mufleet.calibration.workload import STANDARD_MIX
from router.cost_model import FEATURE_NAMES, CostModel, PairProfile, RequestShape, feature_matrix

COEFFICIENT_SHARE = 0.05
"""Coefficients that carry less of the standard mix's cost are not compared."""
CAPACITY_BOUND = 0.10
PRICE_BOUND = 0.05


def spread(values: Sequence[float]) -> float:
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else float("nan")


def standard_mix() -> list[tuple[RequestShape, float]]:
    """The standard mix's classes at their nominal token counts, with their weights: the
    same shapes for every run, so runs differ only by what they measured."""
    return [
        (
            RequestShape(
                cls.input_tokens, cls.output_tokens, int(cls.input_tokens * cls.prefix_fraction)
            ),
            weight,
        )
        for cls, weight in STANDARD_MIX
    ]


def mix_price_mu(profile: PairProfile, mix: list[tuple[RequestShape, float]]) -> float:
    """The MU price of one standard-mix request (weighted mean)."""
    model = CostModel(profile)
    return sum(weight * model.mu(shape) for shape, weight in mix)


def coefficient_shares(
    profile: PairProfile, mix: list[tuple[RequestShape, float]]
) -> dict[str, float]:
    """Each coefficient's share of the standard mix's busy time."""
    features = feature_matrix([shape for shape, _ in mix])
    weights = np.array([w for _, w in mix])
    coefficients = profile.coefficients.as_array()
    parts = (weights[:, None] * features * coefficients[None, :]).sum(axis=0)
    total = float(parts.sum())
    return {name: float(part) / total for name, part in zip(FEATURE_NAMES, parts, strict=True)}


def _verdict(value: float, bound: float) -> str:
    return f"{value:.1%} {'✓' if value <= bound else '✗'}"


def table(runs_by_pair: dict[str, list[PairProfile]]) -> str:
    """One row per pair; ✓ where the spread is within its bound (capacity and each
    carried coefficient 10%, MU price 5%)."""
    lines = [
        "| pair | runs | capacity req/s (each run) | spread | MU price of the standard mix "
        "| spread | coefficients > 5% of the mix: spread (share) |",
        "|---|---:|---|---:|---|---:|---|",
    ]
    mix = standard_mix()
    for pair, runs in runs_by_pair.items():
        rps = [r.capacity_rps for r in runs]
        prices = [mix_price_mu(r, mix) for r in runs]
        shares = coefficient_shares(runs[0], mix)
        carried = [name for name, share in shares.items() if share > COEFFICIENT_SHARE]
        coefficient_spreads = []
        for name in carried:
            index = FEATURE_NAMES.index(name)
            values = [float(r.coefficients.as_array()[index]) for r in runs]
            coefficient_spreads.append(
                f"{name} {_verdict(spread(values), CAPACITY_BOUND)} ({shares[name]:.0%})"
            )
        lines.append(
            f"| `{pair}` | {len(runs)} | {', '.join(f'{v:.2f}' for v in rps)} | "
            f"{_verdict(spread(rps), CAPACITY_BOUND)} | {', '.join(f'{v:.3f}' for v in prices)} | "
            f"{_verdict(spread(prices), PRICE_BOUND)} | {'; '.join(coefficient_spreads)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", type=Path, help="saved pair profiles (JSON)")
    args = parser.parse_args(argv)
    runs_by_pair: dict[str, list[PairProfile]] = {}
    for path in args.profiles:
        profile = PairProfile.load(path)
        runs_by_pair.setdefault(profile.pair, []).append(profile)
    print(table(runs_by_pair))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
