"""What an engine is and how closely it keeps its emulated pace, as Prometheus series.

Beside the TensorRT-LLM backend's gauges (:mod:`python_backends.trtllm_metrics`), every
Python engine exports:

* ``mufleet_engine_info{engine,engine_version,hardware_profile} 1``;
* ``mufleet_engine_config{parameter=max_num_sequences|max_num_tokens|kv_cache_blocks|
  kv_block_tokens|time_scale}``: the limits the engine runs with, so the router can check a
  node against the configuration its pair profile was calibrated on;
* ``mufleet_engine_host_lag_seconds``: how late the engine woke for its last iteration
  against its own timeline, and ``mufleet_engine_host_lag_lost_seconds_total``: wall seconds
  it fell so far behind that it gave them up. While the latter grows, the host (CPU
  contention, the Python steps around the engine), not the emulated GPU, sets the pace;
  calibration discards such load points.

Every series carries ``model`` and ``version`` labels. ``pb_utils`` is passed in, so this is
testable outside a Triton stub.
"""

from __future__ import annotations

from typing import Any

from python_backends.engine_types import EngineInfo, EngineStats

CONFIG_PARAMETERS = {
    "max_num_sequences": "max_sequences",
    "max_num_tokens": "max_num_tokens",
    "kv_cache_blocks": "kv_cache_blocks",
    "kv_block_tokens": "kv_tokens_per_block",
    "time_scale": "time_scale",
}
"""``parameter`` label → the :class:`EngineStats` field it reads."""


class EngineMetrics:
    """The ``mufleet_engine_*`` series of one model instance."""

    def __init__(self, pb_utils: Any, model: str, version: str, info: EngineInfo) -> None:
        family = pb_utils.MetricFamily
        base = {"model": model, "version": str(version)}
        info_family = family(
            name="mufleet_engine_info",
            description="the engine serving this model (value 1)",
            kind=family.GAUGE,
        )
        info_labels = {
            "engine": info.engine,
            "engine_version": info.version,
            "hardware_profile": info.hardware_profile,
        }
        info_family.Metric(labels={**base, **info_labels}).set(1.0)
        config = family(
            name="mufleet_engine_config",
            description="the limits the engine runs with",
            kind=family.GAUGE,
        )
        self._config = {
            name: config.Metric(labels={**base, "parameter": name}) for name in CONFIG_PARAMETERS
        }
        lag = family(
            name="mufleet_engine_host_lag_seconds",
            description="how late the engine woke for its last iteration (wall seconds)",
            kind=family.GAUGE,
        )
        lost = family(
            name="mufleet_engine_host_lag_lost_seconds",
            description="wall seconds the engine fell behind its emulated timeline and gave up",
            kind=family.COUNTER,
        )
        self._lag = lag.Metric(labels=base)
        self._lost = lost.Metric(labels=base)
        self._lost_sent = 0.0
        self._last: dict[str, float] = {}
        self._families = (info_family, config, lag, lost)  # families outlive their metrics

    @staticmethod
    def config_values(stats: EngineStats) -> dict[str, float]:
        return {name: float(getattr(stats, attr)) for name, attr in CONFIG_PARAMETERS.items()}

    def update(self, stats: EngineStats) -> None:
        values = {f"config:{k}": v for k, v in self.config_values(stats).items()}
        values["lag"] = stats.host_lag_s
        for key, value in values.items():
            if self._last.get(key) != value:
                metric = self._lag if key == "lag" else self._config[key.split(":", 1)[1]]
                metric.set(value)
                self._last[key] = value
        lost = stats.host_lag_lost_s - self._lost_sent
        if lost > 0:
            self._lost.increment(lost)
            self._lost_sent = stats.host_lag_lost_s
