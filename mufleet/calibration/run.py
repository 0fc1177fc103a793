"""The calibration procedure: capacity search, class sweep, fit, held-out check.

Every load goes to the engine model as token ids, timed by the engine itself
(:mod:`mufleet.calibration.load`), on a node started as its users start it; the engine's
configuration is read from the node and recorded in the profile.

1. **Capacity** (:mod:`mufleet.calibration.capacity`): the standard mix runs closed-loop
   at rising concurrency until p99 TTFT or p99 TPOT breaks the SLO, then bisects to the
   knee; the answer rests on at least 200 requests, and a breaking level is re-run before
   it counts. Its request rate on the standard mix, ``capacity_rps``, sets the pair's MU/s.
2. **Busy time per class.** At the capacity concurrency, queue included, each request
   class runs alone, closed-loop; the steady request rate ``R`` gives the class's busy
   time ``1 / R`` (at capacity the engine is always busy, so each request's share of it
   is the wall time per completed request). On an engine that computes, the sweep runs
   in two passes, the second in reverse order, so that a drift in the host's speed
   weighs on every class alike.
3. **Fit.** Non-negative least squares of busy time on the cost model's features.
4. **Held out.** Classes and a mixed workload never used for fitting: their measured busy
   time and throughput against the fitted model's prediction, as MAPE.

Every load point is checked for host pacing (:mod:`mufleet.calibration.pacing`); a sim
engine that fell behind is slowed down and the point measured again. Durations are
divided by the time scale in force, so the profile describes the emulated hardware.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

from mufleet.calibration.capacity import CapacitySearch, LoadPoint, SearchSettings
from mufleet.calibration.load import LoadRun, closed_loop, request_inputs
from mufleet.calibration.pacing import EngineGauges, PaceCheck, TimeScale, read_gauges
from mufleet.calibration.workload import STANDARD_MIX, PromptFactory, RequestClass, Sweep
from router.cost_model import (
    MU_PER_REFERENCE_SECOND,
    SLO,
    CostCoefficients,
    CostModel,
    FitReport,
    PairProfile,
    RequestShape,
    fit_coefficients,
    mape_pct,
    reference_capacity,
)
from router.engine_record import EngineRecord

Progress = Callable[[str], None]
MAX_CLASS_PACING_FIXES = 4
PROMPTS_PER_RUN = 1_000_000
MIN_CLASS_REQUESTS = 240
"""Measured requests per class at least: a class's busy time is a mean round trip, and
the predictions built on it inherit the noise of a short one."""
COMPUTED_PASSES = 2
"""Passes over the class sweep on an engine that computes (not emulated): its host's
speed drifts over minutes, so each class runs in halves, forward then backward, and every
class's measurement is centred on the same moment of the sweep."""
HELDOUT_MIX = "held-out mix"


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


def engine_rps(run: LoadRun, time_scale: float, lost_share: float) -> float:
    """The run's rate on the engine's emulated clock.

    Lost timeline is time in which the engine did not run: its completions took the rest
    of the window, each emulated second ``time_scale`` wall seconds.
    """
    return run.steady_rps() * time_scale / (1.0 - lost_share)


@dataclass(frozen=True)
class CalibrationSettings:
    url: str
    """gRPC ``HOST:PORT`` of the node."""
    metrics_url: str
    """Its Prometheus page (``http://HOST:8002/metrics``): engine configuration and lag."""
    pair: str
    slo: SLO
    tokenizer_dir: Path
    corpus: Path
    sweep: Sweep
    engine_model: str = "tensorrt_llm"
    block_tokens: int = 1
    hardware: str = "unknown"
    model_name: str = "unknown"
    reference: PairProfile | None = None
    waves: int = 3
    seed: int = 0
    pace: PaceCheck = field(default_factory=PaceCheck)
    """When a sim point counts as host-paced (see :mod:`mufleet.calibration.pacing`)."""
    slow_down_factor: float = 2.0
    nonce: int = field(default_factory=lambda: random.SystemRandom().randrange(2**32))
    """Makes this calibration's prompts new to a server that saw earlier calibrations."""


class Calibrator:
    """Runs one calibration against a live node."""

    def __init__(self, settings: CalibrationSettings, progress: Progress = print) -> None:
        self.s = settings
        self.progress = progress
        self.prompts = PromptFactory(
            settings.tokenizer_dir, settings.corpus, settings.block_tokens, nonce=settings.nonce
        )
        eos = self.prompts.tokenizer.eos_token_id
        self.end_id = int(eos if eos is not None else 2)
        self.scale = TimeScale(settings.url, settings.engine_model)
        self.time_scale = self.scale.current()
        start = read_gauges(settings.metrics_url, settings.engine_model)
        self.engine_at_start = start.record
        self.emulated = start.record is not None and start.record.engine == "sim"
        self._used_prompts = 0
        self.start_time_scale = self.time_scale
        """The node's own: each class and the held-out mix start from it. They measure only
        a rate, corrected for up to 10% lost timeline, and slow down for themselves; the
        capacity search's slowest scale would stretch every one of them."""
        self.baseline_time_scale = self.time_scale
        """The time scale the capacity point was measured at (the profile records it)."""
        self._severity: dict[str, float] = {}
        self._cold = True
        """The engine lost its KV cache (new, or reloaded): shared prefixes need warming."""

    # -- workloads ----------------------------------------------------------------------
    def _inputs_for(
        self, classes: list[RequestClass]
    ) -> Callable[[int], list[grpcclient.InferInput]]:
        """Inputs for the ``i``-th request of a run over ``classes``.

        Prompt numbers are never reused within a calibration: a prompt sent before would
        find its whole prefix in the KV cache and cost less than the class it stands for.
        Only the class's shared prefix is meant to be cached.
        """
        first = self._used_prompts
        self._used_prompts += PROMPTS_PER_RUN  # the run's ramp and tail draw numbers too
        tokenizer = self.prompts.tokenizer

        def make(i: int) -> list[grpcclient.InferInput]:
            cls = classes[i % len(classes)]
            ids = tokenizer.encode(self.prompts.prompt(cls, first + i), add_special_tokens=True)
            return request_inputs(ids, cls.output_tokens, self.end_id)

        return make

    def _mix(self, weighted: list[tuple[RequestClass, float]], count: int) -> list[RequestClass]:
        rng = random.Random(self.s.seed)
        classes = [c for c, _ in weighted]
        return rng.choices(classes, weights=[w for _, w in weighted], k=count)

    def _warm(self, classes: list[RequestClass]) -> float:
        """One request per class, so shared prefixes are cached before measuring.

        Returns the mean wall time of those lone requests, the unit for staggering.
        """
        unique = list(dict.fromkeys(classes))
        run = closed_loop(
            self.s.url, self.s.engine_model, self._inputs_for(unique), 1, len(unique), ramp=0
        )
        self._cold = False
        return sum(t.finished_at - t.sent_at for t in run.timings) / len(run.timings)

    def _run(
        self, classes: list[RequestClass], concurrency: int, key: str, rates_only: bool = False
    ) -> tuple[LoadRun, str | None, float]:
        """One closed-loop run, why the host set its pace (``None``: it did not), and the
        share of the measured window that the engine's timeline lost.

        ``key`` names the workload, so that a lag a slow-down did not shrink is kept;
        ``rates_only`` runs tolerate lost timeline up to ``max_corrected_lost_share``.
        """
        latency = self._warm(classes)
        window: dict[str, EngineGauges] = {}

        def mark(name: str) -> None:
            window[name] = read_gauges(self.s.metrics_url, self.s.engine_model)

        run = closed_loop(
            self.s.url,
            self.s.engine_model,
            self._inputs_for(classes),
            concurrency,
            len(classes),
            stagger_s=latency / concurrency,
            on_window=mark,
        )
        if run.errors:
            self.progress(f"  {len(run.errors)} errors, first: {run.errors[0]}")
        start, end = window["start"], window["end"]
        lost, wall = end.lost_s - start.lost_s, end.at - start.at
        lost_share = min(max(lost / wall, 0.0), 0.5) if wall > 0 else 0.0
        return run, self._paced(run, lost, wall, key, rates_only), lost_share

    def _paced(
        self, run: LoadRun, lost: float, wall: float, key: str, rates_only: bool
    ) -> str | None:
        """Judged on the measured window alone (``lost`` timeline in ``wall`` seconds):
        filling the loop and cancelling its tail cost the engine a burst of work that no
        measured request waited on."""
        if not self.emulated:
            return None  # an engine that computes has no timeline to fall behind
        occupancy = run.occupancy()
        why = self.s.pace.verdict(lost, wall, occupancy, rates_only)
        if why is None:
            self._severity.pop(key, None)
            return None
        severity = self.s.pace.severity(lost, wall, occupancy, rates_only)
        before_slowing = self._severity.get(key)
        if before_slowing is not None and severity > self.s.pace.helped * before_slowing:
            self._severity.pop(key, None)
            self.progress(f"[pacing] {key}: {why}, as before the slow-down: kept")
            return None
        self._severity[key] = severity
        return why

    def _slow_down(self, why: str) -> bool:
        if not self.emulated:
            return False
        old = self.time_scale
        self.time_scale = self.scale.raise_by(self.s.slow_down_factor)
        self._cold = True
        self.progress(f"[pacing] {why}: time scale {old:g} -> {self.time_scale:g}")
        return True

    # -- the procedure ------------------------------------------------------------------
    def measure_level(self, level: int, samples: int) -> LoadPoint:
        """The standard mix at concurrency ``level`` (emulated seconds)."""
        scale = self.time_scale
        run, paced, _ = self._run(self._mix(list(STANDARD_MIX), samples), level, f"c={level}")
        return LoadPoint(
            level,
            run.steady_rps() * scale,
            tuple(v / scale for v in run.values("ttft_s")),
            tuple(v / scale for v in run.values("tpot_s")),
            errors=len(run.errors),
            host_paced=paced is not None,
            pace_note=paced or "",
            time_scale=scale,
        )

    def capacity_search(self) -> CapacitySearch:
        s = self.s
        search = CapacitySearch(
            SearchSettings(s.slo, full_samples=s.sweep.full_samples, max_level=s.sweep.max_level),
            self.measure_level,
            on_host_paced=lambda point: self._slow_down(
                f"c={point.concurrency}: {point.pace_note}"
            ),
            progress=self.progress,
        )
        search.run()
        return search

    def _back_to(self, time_scale: float) -> None:
        """Undo a slow-down that one workload needed before the next, lighter one runs.

        A short class may need a much slower emulation than a long one; keeping the
        slowest for everything after it would only stretch the calibration.
        """
        if self.emulated and self.time_scale != time_scale:
            self.time_scale = self.scale.set(time_scale)
            self._cold = True

    def rates(
        self, workloads: list[tuple[str, list[RequestClass]]], concurrency: int
    ) -> dict[str, float]:
        """Requests per emulated second of each named workload at ``concurrency``
        (:data:`COMPUTED_PASSES` passes on an engine that computes, one on a sim)."""
        passes = 1 if self.emulated else COMPUTED_PASSES
        busy: dict[str, list[float]] = {name: [] for name, _ in workloads}
        done, total = 0, passes * len(workloads)
        for n in range(passes):
            for name, classes in workloads if n % 2 == 0 else workloads[::-1]:
                busy[name].append(1.0 / self._rate(classes[n::passes], concurrency, name))
                done += 1
                self.progress(
                    f"[classes {done}/{total}] {name:<20} busy {busy[name][-1] * 1e3:9.2f} ms"
                )
        return {name: len(values) / sum(values) for name, values in busy.items()}

    def _rate(self, classes: list[RequestClass], concurrency: int, key: str) -> float:
        self._back_to(self.start_time_scale)
        for _ in range(MAX_CLASS_PACING_FIXES + 1):
            scale = self.time_scale
            run, paced, lost = self._run(classes, concurrency, key, rates_only=True)
            if paced is None or not self._slow_down(f"{key}: {paced}"):
                break
        return engine_rps(run, scale, lost)

    def engine_record(self) -> EngineRecord | None:
        """The node's engine configuration now, with the time scale its capacity was
        measured at (the host kept pace there)."""
        record = read_gauges(self.s.metrics_url, self.s.engine_model).record
        if record is None:
            return None
        start = self.engine_at_start
        unscaled = {"time_scale": None}
        if start is not None and start.model_copy(update=unscaled) != record.model_copy(
            update=unscaled
        ):
            raise RuntimeError(f"the engine changed during calibration: {start} -> {record}")
        return record.model_copy(update={"time_scale": self.baseline_time_scale})

    def calibrate(self) -> Calibration:
        s = self.s
        self.progress(
            f"calibrating {s.pair} at {s.url} ({s.engine_model}, engine "
            f"{self.engine_at_start or 'unreported'}, time scale {self.time_scale:g})"
        )
        search = self.capacity_search()
        result = search.result
        # A level above the knee may have slowed the emulation after the knee was measured.
        self.baseline_time_scale = result.best.time_scale if result.best else self.time_scale
        concurrency, capacity_rps = result.concurrency, result.rps
        self.progress(f"[capacity] {capacity_rps:.2f} req/s at concurrency {concurrency}")

        # Classes run at the capacity concurrency, queue included. At the engine's sequence
        # limit itself a finished request's slot stays empty while the client sends the
        # next one; past it the queue refills the slot at the next step, as at the capacity
        # point. An engine whose step has a large fixed cost (the cpu one) would otherwise
        # charge short requests for the emptier batches they leave behind.
        count = max(s.waves * concurrency, MIN_CLASS_REQUESTS)
        sweep = [(c, False) for c in s.sweep.fit] + [(c, True) for c in s.sweep.heldout]
        mix = self._mix([(c, 1.0) for c in s.sweep.heldout], max(4 * concurrency, count))
        rates = self.rates(
            [(c.name, [c] * count) for c, _ in sweep] + [(HELDOUT_MIX, mix)], concurrency
        )
        measured = [
            ClassPoint(c, self.prompts.shape(c, 0), 1.0 / rates[c.name], heldout=heldout)
            for c, heldout in sweep
        ]

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
        model = CostModel(
            self._profile(coefficients, capacity_mu_s, result.concurrency, capacity_rps, None, None)
        )
        points = [
            ClassPoint(p.cls, p.shape, p.measured_busy_s, model.busy_s(p.shape), p.heldout)
            for p in measured
        ]
        held = [p for p in points if p.heldout]
        busy_mape = mape_pct([p.predicted_busy_s for p in held], [p.measured_busy_s for p in held])

        mix_rps = rates[HELDOUT_MIX]
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
            f"{std_pred:.2f} req/s predicted by the fitted model",
            *result.notes,
        ]
        if result.slo_bounded:
            notes.append(
                f"SLO-bounded: concurrency {concurrency} meets the SLO over "
                f"{result.best.samples if result.best else 0} requests, "
                f"{result.first_failing} breaks it twice"
            )
        fit = FitReport(
            mape_busy_pct=busy_mape,
            mape_capacity_pct=capacity_mape,
            fit_points=len(fit_points),
            heldout_points=len(held),
            notes=notes,
        )
        profile = self._profile(
            coefficients, capacity_mu_s, concurrency, capacity_rps, fit, self.engine_record()
        )
        return Calibration(
            profile=profile,
            load_points=result.points,
            classes=points,
            heldout_mix_rps=mix_rps,
            heldout_mix_predicted_rps=mix_pred,
            standard_mix_predicted_rps=std_pred,
            notes=notes,
        )

    def _profile(
        self,
        coefficients: CostCoefficients,
        capacity_mu_s: float,
        concurrency: int,
        capacity_rps: float,
        fit: FitReport | None,
        engine: EngineRecord | None,
    ) -> PairProfile:
        s = self.s
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
            time_scale=self.baseline_time_scale,
            engine=engine,
            fit=fit,
        )
