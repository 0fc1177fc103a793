"""The calibration procedure: capacity search, class sweep, fit, held-out check.

1. **Capacity.** The standard mix runs closed-loop at rising concurrency; a few requests
   stream to measure TTFT and TPOT (as genai-perf defines them). The capacity point is the
   highest concurrency whose p99 TTFT and p99 TPOT meet the SLO; its request rate on the
   standard mix, ``capacity_rps``, sets the pair's MU/s.
2. **Busy time per class.** At the capacity concurrency each request class runs alone,
   closed-loop; the steady request rate ``R`` gives the class's busy time ``1 / R`` (at
   capacity the engine is always busy, so each request's share of it is the wall time
   per completed request).
3. **Fit.** Non-negative least squares of busy time on the cost model's features.
4. **Held out.** Classes and a mixed workload never used for fitting: their measured busy
   time and throughput against the fitted model's prediction, as MAPE.

Durations from a simulator running ``time_scale`` times slower than the hardware it
emulates are divided by that factor, so the profile describes the emulated hardware.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

from mufleet.calibration.load import LoadRun, closed_loop
from mufleet.calibration.workload import STANDARD_MIX, PromptFactory, RequestClass, Sweep
from mufleet.streaming_client import text_inputs
from router.cost_model import (
    MU_PER_REFERENCE_SECOND,
    SLO,
    CostModel,
    FitReport,
    PairProfile,
    RequestShape,
    fit_coefficients,
    mape_pct,
    reference_capacity,
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LoadPoint:
    concurrency: int
    rps: float
    ttft_p99_s: float
    tpot_p99_s: float
    errors: int
    meets_slo: bool


@dataclass(frozen=True)
class ClassPoint:
    cls: RequestClass
    shape: RequestShape
    measured_busy_s: float
    predicted_busy_s: float = float("nan")
    heldout: bool = False


@dataclass
class Calibration:
    """Everything measured, fitted and checked; the report is drawn from it."""

    profile: PairProfile
    load_points: list[LoadPoint]
    classes: list[ClassPoint]
    heldout_mix_rps: float
    heldout_mix_predicted_rps: float
    standard_mix_predicted_rps: float
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CalibrationSettings:
    url: str
    model: str
    pair: str
    slo: SLO
    tokenizer_dir: Path
    corpus: Path
    sweep: Sweep
    time_scale: float = 1.0
    block_tokens: int = 1
    hardware: str = "unknown"
    model_name: str = "unknown"
    reference: PairProfile | None = None
    waves: int = 5
    seed: int = 0
    nonce: int = field(default_factory=lambda: random.SystemRandom().randrange(2**32))
    """Makes this calibration's prompts new to a server that saw earlier calibrations."""


class Calibrator:
    """Runs one calibration against a live server."""

    def __init__(self, settings: CalibrationSettings, progress: Progress = print) -> None:
        self.s = settings
        self.progress = progress
        self.prompts = PromptFactory(
            settings.tokenizer_dir, settings.corpus, settings.block_tokens, nonce=settings.nonce
        )
        self._used_prompts = 0

    # -- workloads ----------------------------------------------------------------------
    def _inputs_for(
        self, classes: list[RequestClass]
    ) -> Callable[[int, bool], list[grpcclient.InferInput]]:
        """Inputs for the ``i``-th request of a run over ``classes``.

        Prompt numbers are never reused within a calibration: a prompt sent before would
        find its whole prefix in the KV cache and cost less than the class it stands for.
        Only the class's shared prefix is meant to be cached.
        """
        first = self._used_prompts
        self._used_prompts += len(classes)

        def make(i: int, stream: bool) -> list[grpcclient.InferInput]:
            cls = classes[i % len(classes)]
            n = cls.output_tokens
            prompt = self.prompts.prompt(cls, first + i)
            return text_inputs(prompt, n, min_tokens=n, stream=stream)

        return make

    def _mix(self, weighted: list[tuple[RequestClass, float]], count: int) -> list[RequestClass]:
        rng = random.Random(self.s.seed)
        classes = [c for c, _ in weighted]
        return rng.choices(classes, weights=[w for _, w in weighted], k=count)

    def _warm(self, classes: list[RequestClass]) -> float:
        """One request per class, so shared prefixes are cached before measuring.

        Returns the mean latency of those lone requests, the unit for staggering.
        """
        unique = list(dict.fromkeys(classes))
        run = closed_loop(self.s.url, self.s.model, self._inputs_for(unique), 1, len(unique))
        return sum(t.e2e_s for t in run.timings) / len(run.timings)

    def _run(
        self, classes: list[RequestClass], concurrency: int, stream_every: int, latency_s: float
    ) -> LoadRun:
        run = closed_loop(
            self.s.url,
            self.s.model,
            self._inputs_for(classes),
            concurrency,
            len(classes),
            stream_every,
            stagger_s=latency_s / concurrency,
        )
        if run.errors:
            self.progress(f"  {len(run.errors)} errors, first: {run.errors[0]}")
        return run

    # -- the procedure ------------------------------------------------------------------
    def capacity_search(self) -> tuple[list[LoadPoint], int, float]:
        scale = self.s.time_scale
        points: list[LoadPoint] = []
        best: LoadPoint | None = None
        latency = self._warm([c for c, _ in STANDARD_MIX])
        for level in self.s.sweep.levels:
            count = max(self.s.waves * level, 24)
            mix = self._mix(list(STANDARD_MIX), count)
            run = self._run(mix, level, max(level // 4, 1), latency)
            ttft = run.percentile("ttft_s", 99) / scale
            tpot = run.percentile("tpot_s", 99) / scale
            errors = len(run.errors)
            ok = errors == 0 and ttft <= self.s.slo.ttft_p99_s and tpot <= self.s.slo.tpot_p99_s
            point = LoadPoint(level, run.steady_rps() * scale, ttft, tpot, errors, ok)
            points.append(point)
            self.progress(
                f"[capacity] c={level:<4} {point.rps:8.2f} req/s  TTFT p99 "
                f"{point.ttft_p99_s * 1e3:8.1f} ms  TPOT p99 {point.tpot_p99_s * 1e3:7.2f} ms  "
                f"{'meets SLO' if ok else 'breaks SLO'}"
            )
            if not ok:
                break
            best = point
        if best is None:
            best = points[0]
        return points, best.concurrency, best.rps

    def measure_class(self, cls: RequestClass, concurrency: int) -> float:
        """Busy seconds per request of ``cls`` at ``concurrency`` (emulated time)."""
        latency = self._warm([cls])
        count = max(self.s.waves * concurrency, 8)
        run = self._run([cls] * count, concurrency, 0, latency)
        return 1.0 / (run.steady_rps() * self.s.time_scale)

    def calibrate(self) -> Calibration:
        s = self.s
        self.progress(
            f"calibrating {s.pair} at {s.url} (model {s.model}, time_scale {s.time_scale})"
        )
        load_points, concurrency, capacity_rps = self.capacity_search()
        self.progress(f"[capacity] {capacity_rps:.2f} req/s at concurrency {concurrency}")

        measured: list[ClassPoint] = []
        total = len(s.sweep.fit) + len(s.sweep.heldout)
        for k, (cls, heldout) in enumerate(
            [(c, False) for c in s.sweep.fit] + [(c, True) for c in s.sweep.heldout], start=1
        ):
            busy = self.measure_class(cls, concurrency)
            shape = self.prompts.shape(cls, 0)
            measured.append(ClassPoint(cls, shape, busy, heldout=heldout))
            self.progress(f"[classes {k}/{total}] {cls.name:<20} busy {busy * 1e3:9.2f} ms")

        fit_points = [p for p in measured if not p.heldout]
        coefficients = fit_coefficients(
            [p.shape for p in fit_points],
            [p.measured_busy_s for p in fit_points],
            weights=[1.0 / p.measured_busy_s**2 for p in fit_points],
        )
        capacity_mu_s = (
            MU_PER_REFERENCE_SECOND
            if s.reference is None
            else reference_capacity(capacity_rps, s.reference.capacity_rps)
        )

        def profile_with(fit: FitReport | None) -> PairProfile:
            return PairProfile(
                pair=s.pair,
                model=s.model_name,
                hardware=s.hardware,
                coefficients=coefficients,
                capacity_mu_s=capacity_mu_s,
                capacity_concurrency=concurrency,
                capacity_rps=capacity_rps,
                slo=s.slo,
                reference=s.reference is None,
                time_scale=s.time_scale,
                fit=fit,
            )

        model = CostModel(profile_with(None))
        points = [
            ClassPoint(p.cls, p.shape, p.measured_busy_s, model.busy_s(p.shape), p.heldout)
            for p in measured
        ]
        held = [p for p in points if p.heldout]
        busy_mape = mape_pct([p.predicted_busy_s for p in held], [p.measured_busy_s for p in held])

        mix = self._mix([(c, 1.0) for c in s.sweep.heldout], max(4 * concurrency, 24))
        latency = self._warm(mix)
        mix_run = self._run(mix, concurrency, 0, latency)
        mix_rps = mix_run.steady_rps() * s.time_scale
        class_busy = {c: model.busy_s(self.prompts.shape(c, 0)) for c in set(mix)}
        mix_pred = 1.0 / (sum(class_busy[c] for c in mix) / len(mix))
        capacity_mape = mape_pct([mix_pred], [mix_rps])
        std_pred = 1.0 / sum(w * model.busy_s(self.prompts.shape(c, 0)) for c, w in STANDARD_MIX)
        self.progress(
            f"[held out] busy-time MAPE {busy_mape:.1f}%  capacity {mix_rps:.2f} req/s measured "
            f"vs {mix_pred:.2f} predicted ({capacity_mape:.1f}%)"
        )
        notes = [
            f"standard mix at capacity: {capacity_rps:.2f} req/s measured, "
            f"{std_pred:.2f} req/s predicted by the fitted model"
        ]
        if not load_points[0].meets_slo:
            notes.append("the SLO is not met even at concurrency 1; capacity is that point")
        fit = FitReport(
            mape_busy_pct=busy_mape,
            mape_capacity_pct=capacity_mape,
            fit_points=len(fit_points),
            heldout_points=len(held),
            notes=notes,
        )
        return Calibration(
            profile=profile_with(fit),
            load_points=load_points,
            classes=points,
            heldout_mix_rps=mix_rps,
            heldout_mix_predicted_rps=mix_pred,
            standard_mix_predicted_rps=std_pred,
            notes=notes,
        )
