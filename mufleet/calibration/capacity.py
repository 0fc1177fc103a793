"""The capacity search: the highest concurrency whose p99 TTFT and TPOT meet the SLO.

Pure: it asks a ``measure(level, samples)`` callable for load points and decides what to
measure next, so the same object runs against a live node and in unit tests.

1. **Scouting.** Concurrency doubles from 1. A scout level sends a few requests per slot;
   one whose p99s are well inside the SLO (below ``margin`` of it) passes as is — it is
   not near the knee, and it is not the level capacity is read at.
2. **Full measurement.** A level that is not clearly inside, and every level the answer
   rests on, is measured with at least ``full_samples`` requests: with 200, at least two
   requests lie above the p99, so no single outlier can move it.
3. **A breaking level is re-run before it counts.** It fails only if the re-run (a full
   measurement) fails too; a full run that passes after a failed one passes on the pooled
   samples.
4. **Bisection** between the last passing and the first failing level, until they are
   within ``resolution`` of each other.
5. **High enough to be SLO-bounded**: doubling goes on until a level fails or
   ``max_level``; a search that never fails says so (``slo_bounded`` false).
6. **Host-paced points are not GPU points.** A point the measurement flags as host-paced
   is handed to ``on_host_paced`` (which slows the emulation, see
   :mod:`mufleet.calibration.pacing`) and measured again; when nothing can be done the
   search stops below it and says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from router.cost_model import SLO


@dataclass(frozen=True)
class LoadPoint:
    """One measured level (durations in emulated seconds)."""

    concurrency: int
    rps: float
    ttft_s: tuple[float, ...]
    tpot_s: tuple[float, ...]
    errors: int = 0
    host_paced: bool = False
    pace_note: str = ""
    runs: int = 1
    time_scale: float = 1.0
    """Wall seconds per emulated second while it was measured."""

    @property
    def samples(self) -> int:
        return min(len(self.ttft_s), len(self.tpot_s))

    @property
    def ttft_p99_s(self) -> float:
        return _p99(self.ttft_s)

    @property
    def tpot_p99_s(self) -> float:
        return _p99(self.tpot_s)

    def meets(self, slo: SLO, margin: float = 1.0) -> bool:
        return (
            self.errors == 0
            and self.samples > 0
            and self.ttft_p99_s <= slo.ttft_p99_s * margin
            and self.tpot_p99_s <= slo.tpot_p99_s * margin
        )

    def pooled(self, other: LoadPoint) -> LoadPoint:
        """Both runs of one level as one point (throughput weighted by samples)."""
        n, m = self.samples, other.samples
        rps = (self.rps * n + other.rps * m) / max(n + m, 1)
        return replace(
            self,
            rps=rps,
            ttft_s=self.ttft_s + other.ttft_s,
            tpot_s=self.tpot_s + other.tpot_s,
            errors=self.errors + other.errors,
            runs=self.runs + other.runs,
            time_scale=max(self.time_scale, other.time_scale),
        )


def _p99(values: tuple[float, ...]) -> float:
    return float(np.percentile(values, 99)) if values else math.nan


Measure = Callable[[int, int], LoadPoint]
"""``measure(concurrency, requests)`` → the load point."""


@dataclass(frozen=True)
class SearchSettings:
    slo: SLO
    full_samples: int = 200
    scout_per_slot: int = 2
    scout_min: int = 8
    margin: float = 0.6
    resolution: float = 0.1
    """Bisection stops when the failing level is within this share of the passing one."""
    max_level: int = 1024
    max_pacing_fixes: int = 4


@dataclass
class SearchResult:
    points: list[LoadPoint] = field(default_factory=list)
    """Every measurement, in order (re-runs and discarded host-paced points included)."""
    best: LoadPoint | None = None
    first_failing: int | None = None
    slo_bounded: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def concurrency(self) -> int:
        return self.best.concurrency if self.best else 1

    @property
    def rps(self) -> float:
        return self.best.rps if self.best else math.nan


class CapacitySearch:
    """See the module docstring."""

    def __init__(
        self,
        settings: SearchSettings,
        measure: Measure,
        on_host_paced: Callable[[LoadPoint], bool] = lambda point: False,
        progress: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.s = settings
        self._measure = measure
        self._on_host_paced = on_host_paced
        self.progress = progress
        self.result = SearchResult()
        self._fixes = 0
        self._stopped = False

    # -- one level ----------------------------------------------------------------------
    def _point(self, level: int, samples: int, tag: str) -> LoadPoint | None:
        """A measurement that the host did not pace (``None``: none could be had)."""
        while True:
            point = self._measure(level, samples)
            self.result.points.append(point)
            self._report(point, tag)
            if not point.host_paced:
                return point
            if (
                self._stopped
                or self._fixes >= self.s.max_pacing_fixes
                or not self._on_host_paced(point)
            ):
                self.result.notes.append(
                    f"concurrency {level}: the host set the pace ({point.pace_note}) and the "
                    "emulation could not be slowed further; the search stops below it"
                )
                self._stopped = True
                return None
            self._fixes += 1

    def _full(self, level: int) -> bool | None:
        """Measure ``level`` fully; a failure is re-run before it counts."""
        first = self._point(level, self.s.full_samples, "full")
        if first is None:
            return None
        if first.meets(self.s.slo):
            self._passed(first)
            return True
        again = self._point(level, self.s.full_samples, "re-run")
        if again is None:
            return None
        if not again.meets(self.s.slo):
            return False
        self._passed(first.pooled(again))
        return True

    def _passed(self, point: LoadPoint) -> None:
        best = self.result.best
        if best is None or point.concurrency >= best.concurrency:
            self.result.best = point

    def _scout(self, level: int) -> bool | None:
        samples = max(self.s.scout_per_slot * level, self.s.scout_min)
        if samples >= self.s.full_samples:
            return self._full(level)
        point = self._point(level, samples, "scout")
        if point is None:
            return None
        if point.meets(self.s.slo, self.s.margin):
            return True
        if point.meets(self.s.slo):
            return self._full(level)
        # A breaking scout is the first run: one full run confirms the break or not.
        full = self._point(level, self.s.full_samples, "re-run")
        if full is None:
            return None
        if full.meets(self.s.slo):
            self._passed(full)
            return True
        return False

    # -- the search ----------------------------------------------------------------------
    def run(self) -> SearchResult:
        lo, hi, level = 0, None, 1
        while level <= self.s.max_level:
            verdict = self._scout(level)
            if verdict is None:
                break
            if not verdict:
                hi = level
                break
            lo, level = level, level * 2
        # The answer must rest on a full measurement, not a scout.
        while lo >= 1 and not self._measured_fully(lo):
            verdict = self._full(lo)
            if verdict is None:
                return self._finish(hi)
            if verdict:
                break
            hi, lo = lo, lo // 2
        if hi is not None and not self._stopped:
            while hi - lo > max(1, math.ceil(self.s.resolution * lo)):
                mid = (lo + hi) // 2
                verdict = self._full(mid)
                if verdict is None:
                    break
                lo, hi = (mid, hi) if verdict else (lo, mid)
        return self._finish(hi)

    def _measured_fully(self, level: int) -> bool:
        best = self.result.best
        return best is not None and best.concurrency == level

    def _finish(self, failing: int | None) -> SearchResult:
        result = self.result
        result.first_failing = failing
        result.slo_bounded = failing is not None and not self._stopped
        if failing is None and not self._stopped:
            result.notes.append(
                f"every level up to {self.s.max_level} meets the SLO: capacity is a lower bound"
            )
        if result.best is None and result.points:
            result.notes.append("the SLO is not met at any level measured; capacity is the first")
            result.best = result.points[0]
        return result

    def _report(self, point: LoadPoint, tag: str) -> None:
        verdict = "meets SLO" if point.meets(self.s.slo) else "breaks SLO"
        if point.host_paced:
            verdict = f"host-paced ({point.pace_note})"
        self.progress(
            f"[capacity] c={point.concurrency:<5} {tag:<6} n={point.samples:<4} "
            f"{point.rps:8.2f} req/s  TTFT p99 {point.ttft_p99_s * 1e3:8.1f} ms  "
            f"TPOT p99 {point.tpot_p99_s * 1e3:7.2f} ms  {verdict}"
        )
