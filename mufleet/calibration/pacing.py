"""Keeping the host from setting the pace of a calibration.

A sim engine emulates a GPU by sleeping; when the host cannot relay the emulated token
rate (two cores shared by Triton, the Python stubs and the load client), the engine falls
behind its own timeline and a load point measures the host, not the GPU. Two signs of it,
both read per load point:

* **lost timeline**: ``mufleet_engine_host_lag_lost_seconds_total`` grew by more than
  ``max_lost_share`` of the point's wall time (the engine woke so late that it gave the
  time up);
* **starved engine**: the engine held, on average, fewer than ``min_occupancy`` of the
  requests the client kept in flight (:meth:`~mufleet.calibration.load.LoadRun.occupancy`):
  requests spent their time in the host instead.

Either flags the point; :class:`TimeScale` then slows the emulation (reloading the engine
model with a larger ``time_scale`` through Triton's repository API, with the node's own
configuration otherwise unchanged) and the point is measured again. A lag that a slower
emulation does not shrink (by a third, at least) is not the host failing to keep pace,
and the point is kept, with a note. Durations are divided
by the time scale in force, so points measured before and after stay comparable.

A point that measures only a rate tolerates more lost timeline (``max_corrected_lost_share``):
the engine did its work in the part of the window it did not lose, and the rate is taken
over that part. Short requests at high concurrency make the host stall often, and slowing
the emulation for each of them would stretch a calibration many times over.

An engine that computes (cpu) has no timeline to fall behind: the host *is* its hardware.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx
import tritonclient.grpc as grpcclient

from router.engine_record import EngineRecord
from router.fleet.metrics import parse_node_metrics

ENGINE_MODEL = "tensorrt_llm"


@dataclass(frozen=True)
class EngineGauges:
    """What a node's metrics page says about its engine, at one moment."""

    record: EngineRecord | None
    lost_s: float
    at: float


def read_gauges(metrics_url: str, model: str = ENGINE_MODEL) -> EngineGauges:
    now = time.perf_counter()
    text = httpx.get(metrics_url, timeout=10.0).text
    metrics = parse_node_metrics(text, now, model=model)
    return EngineGauges(metrics.engine, metrics.host_lag_lost_s or 0.0, now)


@dataclass(frozen=True)
class PaceCheck:
    max_lost_share: float = 0.02
    max_corrected_lost_share: float = 0.10
    """For a point that measures only a rate (a class's busy time, the held-out mix): up to
    this share of lost timeline is corrected for instead, as time in which the engine did
    not run. Latency percentiles cannot be corrected that way: a capacity point keeps
    ``max_lost_share``."""
    min_occupancy: float = 0.85

    helped: float = 0.67
    """A slow-down helped if the severity fell below this share of what it was."""

    def lost_bound(self, rates_only: bool) -> float:
        return self.max_corrected_lost_share if rates_only else self.max_lost_share

    def severity(
        self, lost_s: float, wall_s: float, occupancy: float, rates_only: bool = False
    ) -> float:
        """How far past its thresholds a point is (above 1: the host set its pace)."""
        lost = lost_s / wall_s / self.lost_bound(rates_only) if wall_s > 0 else 0.0
        starved = 0.0
        if occupancy == occupancy:  # not NaN
            starved = (1.0 - occupancy) / (1.0 - self.min_occupancy)
        return max(lost, starved)

    def verdict(
        self, lost_s: float, wall_s: float, occupancy: float, rates_only: bool = False
    ) -> str | None:
        """Why the host set the pace of a point, or ``None`` when it did not."""
        if wall_s > 0 and lost_s / wall_s > self.lost_bound(rates_only):
            return f"the engine lost {lost_s:.2f} s of its timeline in {wall_s:.1f} s"
        if occupancy == occupancy and occupancy < self.min_occupancy:  # not NaN
            return f"the engine held {occupancy:.0%} of the requests in flight"
        return None


class TimeScale:
    """The engine model's ``time_scale``, read from and written to a live node."""

    def __init__(self, url: str, model: str = ENGINE_MODEL, ready_timeout_s: float = 300.0):
        self.url = url
        self.model = model
        self.ready_timeout_s = ready_timeout_s

    def _config(self, client: grpcclient.InferenceServerClient) -> dict[str, object]:
        return dict(client.get_model_config(self.model, as_json=True)["config"])

    def current(self) -> float:
        client = grpcclient.InferenceServerClient(self.url)
        try:
            params = self._config(client).get("parameters", {})
        finally:
            client.close()
        value = params.get("time_scale", {}) if isinstance(params, dict) else {}
        return float(value.get("string_value") or 1.0)

    def raise_by(self, factor: float) -> float:
        """Reload the engine model ``factor`` times slower; returns the new time scale."""
        return self.set(self.current() * factor)

    def set(self, value: float) -> float:
        """Reload the engine model at time scale ``value`` (its other settings unchanged)."""
        client = grpcclient.InferenceServerClient(self.url)
        try:
            config = self._config(client)
            params = config.setdefault("parameters", {})
            assert isinstance(params, dict)
            new = value
            params["time_scale"] = {"string_value": f"{new:g}"}
            client.load_model(self.model, config=json.dumps(config))
            deadline = time.monotonic() + self.ready_timeout_s
            while not client.is_model_ready(self.model):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.model} not ready {self.ready_timeout_s:g}s after reload"
                    )
                time.sleep(0.2)
        finally:
            client.close()
        return new
