"""Engine statistics exported under the TensorRT-LLM backend's metric names.

Whatever the engine profile, Prometheus sees ``nv_trt_llm_request_metrics`` and
``nv_trt_llm_kv_cache_block_metrics`` with the same labels, so the router reads one set
of names. The Python backend's metric API (``pb_utils``) is passed in, so this module is
importable and testable outside a Triton stub.
"""

from __future__ import annotations

from typing import Any

from python_backends.engine_types import EngineStats

REQUEST_TYPES = {
    "active": "active",
    "max": "max_sequences",
    "scheduled": "scheduled",
    "context": "context",
    "waiting": "waiting",
}
KV_BLOCK_TYPES = {
    "max": "kv_blocks_max",
    "free": None,
    "used": "kv_blocks_used",
    "tokens_per": "kv_tokens_per_block",
    "reused": "kv_blocks_reused",
}


class TrtLlmMetrics:
    """Gauges for one model instance; :meth:`update` only writes values that changed."""

    def __init__(self, pb_utils: Any, model: str, version: str) -> None:
        gauge = pb_utils.MetricFamily.GAUGE
        requests = pb_utils.MetricFamily(
            name="nv_trt_llm_request_metrics",
            description="TRT LLM request metrics",
            kind=gauge,
        )
        blocks = pb_utils.MetricFamily(
            name="nv_trt_llm_kv_cache_block_metrics",
            description="TRT LLM KV cache block metrics",
            kind=gauge,
        )
        base = {"model": model, "version": str(version)}
        self._gauges: dict[tuple[str, str], Any] = {}
        for label in REQUEST_TYPES:
            self._gauges[("request", label)] = requests.Metric(
                labels={**base, "request_type": label}
            )
        for label in KV_BLOCK_TYPES:
            self._gauges[("kv", label)] = blocks.Metric(
                labels={**base, "kv_cache_block_type": label}
            )
        self._last: dict[tuple[str, str], float] = {}
        # Families must outlive their metrics.
        self._families = (requests, blocks)

    @staticmethod
    def values(stats: EngineStats) -> dict[tuple[str, str], float]:
        """The value of every exported series for ``stats``."""
        out: dict[tuple[str, str], float] = {}
        for label, attr in REQUEST_TYPES.items():
            out[("request", label)] = float(getattr(stats, attr))
        for label, field in KV_BLOCK_TYPES.items():
            if field is not None:
                out[("kv", label)] = float(getattr(stats, field))
        out[("kv", "free")] = float(max(stats.kv_blocks_max - stats.kv_blocks_used, 0))
        return out

    def update(self, stats: EngineStats) -> None:
        for key, value in self.values(stats).items():
            if self._last.get(key) != value:
                self._gauges[key].set(value)
                self._last[key] = value
