"""How far repeated calibrations of one pair agree (``bench/calibrate_pairs.py --repeat``).

For each pair: the spread of capacity (req/s of the standard mix at the SLO), of each cost
coefficient that carries more than 5% of the standard mix's cost, and of the MU price of
the standard mix. Spread is (max − min) / median, so "within 10%" means the extremes of
the runs are within 10% of their middle.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

from mufleet.calibration.run import Calibration
from mufleet.calibration.workload import STANDARD_MIX
from router.cost_model import FEATURE_NAMES, CostModel, PairProfile, RequestShape, feature_matrix

COEFFICIENT_SHARE = 0.05
"""Coefficients that carry less of the standard mix's cost are not compared."""


def spread(values: Sequence[float]) -> float:
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else float("nan")


def mix_shapes(cal: Calibration) -> list[tuple[RequestShape, float]]:
    """The standard mix's classes as the calibration's own prompts shaped them."""
    shapes = {p.cls: p.shape for p in cal.classes}
    out = []
    for cls, weight in STANDARD_MIX:
        shape = shapes.get(cls)
        if shape is None:
            cached = int(cls.input_tokens * cls.prefix_fraction)
            shape = RequestShape(cls.input_tokens, cls.output_tokens, cached)
        out.append((shape, weight))
    return out


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


def table(runs_by_pair: dict[str, list[Calibration]]) -> str:
    lines = [
        "| pair | runs | capacity req/s (each run) | spread | MU price of the standard mix "
        "| spread | coefficients > 5% of the mix: spread |",
        "|---|---:|---|---:|---|---:|---|",
    ]
    for pair, runs in runs_by_pair.items():
        mix = mix_shapes(runs[0])
        rps = [r.profile.capacity_rps for r in runs]
        prices = [mix_price_mu(r.profile, mix) for r in runs]
        shares = coefficient_shares(runs[0].profile, mix)
        carried = [name for name, share in shares.items() if share > COEFFICIENT_SHARE]
        coefficient_spreads = []
        for name in carried:
            index = FEATURE_NAMES.index(name)
            values = [float(r.profile.coefficients.as_array()[index]) for r in runs]
            coefficient_spreads.append(f"{name} {spread(values):.1%} ({shares[name]:.0%})")
        lines.append(
            f"| `{pair}` | {len(runs)} | {', '.join(f'{v:.2f}' for v in rps)} | "
            f"{spread(rps):.1%} | {', '.join(f'{v:.2f}' for v in prices)} | "
            f"{spread(prices):.1%} | {'; '.join(coefficient_spreads)} |"
        )
    return "\n".join(lines)
