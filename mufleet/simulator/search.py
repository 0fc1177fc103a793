"""The headline number: the highest arrival rate at which ≥ 90% of requests meet the SLO.

Attainment falls as the rate rises, but not smoothly (a burst can tip one run), so the
search brackets first (×``step`` up from a passing rate, ÷ down from a failing one), then
bisects geometrically until the bracket is within ``rel_tol``, and reports the highest
rate that passed. Every run is kept, so a report can show the curve the search walked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RateSearch", "search_rate"]


@dataclass
class RateSearch:
    rate: float
    """Highest rate that met the target (0 when even the lowest tried did not)."""
    runs: list[tuple[float, float]] = field(default_factory=list)
    """(rate, attainment) of every run, in the order they ran."""


def search_rate(
    attainment_at: Callable[[float], float],
    start: float,
    *,
    target: float = 0.9,
    step: float = 1.5,
    rel_tol: float = 0.02,
    max_runs: int = 12,
) -> RateSearch:
    """Search ``attainment_at(rate)`` for the highest rate with attainment ≥ ``target``."""
    if not (start > 0 and step > 1 and rel_tol > 0):
        raise ValueError("start must be > 0, step > 1 and rel_tol > 0")
    result = RateSearch(0.0)

    def passes(rate: float) -> bool:
        value = attainment_at(rate)
        result.runs.append((rate, value))
        return value >= target

    lo: float | None = None
    hi: float | None = None
    rate = start
    while len(result.runs) < max_runs and (lo is None or hi is None):
        if passes(rate):
            lo = rate
            rate *= step
        else:
            hi = rate
            rate /= step
    while (
        lo is not None and hi is not None and hi / lo > 1 + rel_tol and len(result.runs) < max_runs
    ):
        mid = math.sqrt(lo * hi)
        if passes(mid):
            lo = mid
        else:
            hi = mid
    result.rate = lo or 0.0
    return result
