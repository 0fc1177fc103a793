"""One node's Prometheus metrics page, parsed into typed numbers, and rates between two pages.

Pure: :func:`parse_node_metrics` and :func:`delta` do no I/O and read no clock (the scrape
time is an argument). The page is parsed by ``prometheus_client``'s text parser, never by
regular expressions.

What is read (Triton 2.51 names; labels ``model="…",version="…"``):

* per the engine model (``tensorrt_llm`` by default), summed over versions (and, for
  failures, over Triton's ``reason`` label): ``nv_inference_pending_request_count`` (gauge),
  ``nv_inference_request_success``, ``nv_inference_request_failure``,
  ``nv_inference_count``, ``nv_inference_queue_duration_us`` and
  ``nv_inference_compute_infer_duration_us`` (counters; µs for the durations);
* ``nv_inference_pending_request_count`` of every model (the ensemble and BLS queues too);
* the TensorRT-LLM backend's gauges for the engine model,
  ``nv_trt_llm_request_metrics{request_type=active|max|scheduled|context|waiting}`` and
  ``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max|free|used|tokens_per|reused}``
  (every engine profile exports them, see ``python_backends/trtllm_metrics.py``);
* GPU gauges when present (``nv_gpu_utilization`` averaged over GPUs,
  ``nv_gpu_memory_used_bytes``, ``nv_gpu_memory_total_bytes`` and ``nv_gpu_power_usage``
  summed over GPUs);
* the engine's description of itself, for the engine model (``python_backends/
  engine_metrics.py``): ``mufleet_engine_info{engine,engine_version,hardware_profile}``,
  ``mufleet_engine_config{parameter=max_num_sequences|max_num_tokens|kv_cache_blocks|
  kv_block_tokens|time_scale}`` (gauges, the largest over versions),
  ``mufleet_engine_host_lag_seconds`` (gauge, the largest over versions) and
  ``mufleet_engine_host_lag_lost_seconds`` (counter, summed). With the ``max`` and
  ``tokens_per`` TensorRT-LLM gauges (all a real TensorRT-LLM node exports) they become
  :attr:`NodeMetrics.engine`, the :class:`~router.engine_record.EngineRecord` the router
  checks against the node's pair profile.

Counters are matched with or without the ``_total`` suffix: Triton writes
``nv_inference_request_success{…} 12``, and ``prometheus_client`` reports such a sample as
``nv_inference_request_success_total``. A family (or a model's series) that is missing reads as
``None`` (``0`` for the all-model pending sum); a page the parser rejects raises
:class:`MetricsParseError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from prometheus_client.parser import text_string_to_metric_families

from router.engine_record import EngineRecord, record_from_samples

__all__ = [
    "ENGINE_MODEL",
    "MetricsDelta",
    "MetricsParseError",
    "NodeMetrics",
    "delta",
    "parse_node_metrics",
]

ENGINE_MODEL = "tensorrt_llm"
"""The engine model whose queue and counters describe a node's load."""

PENDING = "nv_inference_pending_request_count"
SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"
INFERENCE_COUNT = "nv_inference_count"
QUEUE_US = "nv_inference_queue_duration_us"
COMPUTE_INFER_US = "nv_inference_compute_infer_duration_us"
TRT_REQUESTS = "nv_trt_llm_request_metrics"
TRT_KV_BLOCKS = "nv_trt_llm_kv_cache_block_metrics"
GPU_UTILIZATION = "nv_gpu_utilization"
GPU_MEMORY_USED = "nv_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = "nv_gpu_memory_total_bytes"
GPU_POWER = "nv_gpu_power_usage"
ENGINE_INFO = "mufleet_engine_info"
ENGINE_CONFIG = "mufleet_engine_config"
HOST_LAG = "mufleet_engine_host_lag_seconds"
HOST_LAG_LOST = "mufleet_engine_host_lag_lost_seconds"

_COUNTERS = (SUCCESS, FAILURE, INFERENCE_COUNT, QUEUE_US, COMPUTE_INFER_US, HOST_LAG_LOST)
_GPU_GAUGES = (GPU_UTILIZATION, GPU_MEMORY_USED, GPU_MEMORY_TOTAL, GPU_POWER)
_ENGINE_FAMILIES = (ENGINE_INFO, ENGINE_CONFIG, HOST_LAG)
_WANTED = frozenset(
    (PENDING, TRT_REQUESTS, TRT_KV_BLOCKS, *_ENGINE_FAMILIES, *_COUNTERS, *_GPU_GAUGES)
)
_INFO_LABELS = ("engine", "engine_version", "hardware_profile")
_REQUEST_TYPES = ("active", "max", "scheduled", "context", "waiting")
_KV_BLOCK_TYPES = ("max", "free", "used", "tokens_per", "reused")
_EMPTY: Mapping[str, int] = MappingProxyType({})


class MetricsParseError(ValueError):
    """The metrics page is not valid Prometheus text."""


@dataclass(frozen=True)
class NodeMetrics:
    """One scrape of one node. ``None``: the family (or the engine model's series) was absent."""

    scraped_at: float
    """When the page was fetched, on the caller's clock."""
    model: str = ENGINE_MODEL
    """The engine model the per-model fields describe."""
    pending: int | None = None
    """Requests in Triton's queue for the engine model (``nv_inference_pending_request_count``)."""
    pending_all: int = 0
    """Pending requests summed over every model on the node (ensemble, BLS, engine, …)."""
    pending_by_model: Mapping[str, int] = field(default_factory=lambda: _EMPTY, hash=False)
    success: float | None = None
    """Cumulative successful requests of the engine model."""
    failure: float | None = None
    """Cumulative failed requests of the engine model (every ``reason``)."""
    inference_count: float | None = None
    queue_duration_us: float | None = None
    """Cumulative µs the engine model's successful requests spent in Triton's queue."""
    compute_infer_duration_us: float | None = None
    # nv_trt_llm_request_metrics{request_type=…}
    active: int | None = None
    max_sequences: int | None = None
    scheduled: int | None = None
    context: int | None = None
    waiting: int | None = None
    """Requests the engine has accepted but not scheduled yet."""
    # nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=…}
    kv_blocks_max: int | None = None
    kv_blocks_free: int | None = None
    kv_blocks_used: int | None = None
    kv_tokens_per_block: int | None = None
    kv_blocks_reused: int | None = None
    # GPU gauges (absent with --allow-gpu-metrics=false or on a CPU node)
    gpu_count: int = 0
    gpu_utilization: float | None = None
    """Mean utilisation over the node's GPUs, in [0, 1]."""
    gpu_memory_used_bytes: float | None = None
    gpu_memory_total_bytes: float | None = None
    gpu_power_usage_w: float | None = None
    """Power draw summed over the node's GPUs, watts."""
    # mufleet_engine_* (and the TensorRT-LLM limits above)
    engine: EngineRecord | None = None
    """The engine configuration the node reports (``None``: its page describes none)."""
    host_lag_s: float | None = None
    """How late the engine woke for its last iteration (``mufleet_engine_host_lag_seconds``)."""
    host_lag_lost_s: float | None = None
    """Cumulative wall seconds the engine fell behind its emulated timeline and gave up."""
    samples: int = 0
    """How many samples the page held (0: an empty page)."""

    @property
    def kv_used_fraction(self) -> float | None:
        """Used KV blocks over the engine's maximum, in [0, 1]; ``None`` when unknown."""
        if not self.kv_blocks_max:
            return None
        if self.kv_blocks_used is not None:
            used = self.kv_blocks_used
        elif self.kv_blocks_free is not None:
            used = self.kv_blocks_max - self.kv_blocks_free
        else:
            return None
        return min(max(used / self.kv_blocks_max, 0.0), 1.0)

    @property
    def queued(self) -> int:
        """Requests waiting on the node: Triton's engine-model queue plus the engine's own."""
        return (self.pending or 0) + (self.waiting or 0)


@dataclass(frozen=True)
class MetricsDelta:
    """What happened on a node between two scrapes (Prometheus ``increase``/``rate`` semantics:
    a counter that went down was reset by a restart, and its new value is the increase)."""

    interval_s: float
    successes: float
    failures: float
    success_rate_s: float
    failure_rate_s: float
    mean_queue_us: float | None
    """Mean Triton queue time per successful request in the interval (``None``: none finished)."""
    mean_compute_infer_us: float | None
    queued: int
    """Queued requests at the later scrape."""
    reset: bool
    """A counter went backwards (or appeared): the node restarted or reloaded its model."""
    no_progress: bool
    """Work was waiting (pending or engine-waiting > 0) and no request succeeded."""


def parse_node_metrics(text: str, now: float, model: str = ENGINE_MODEL) -> NodeMetrics:
    """Parse one node's ``/metrics`` page; ``now`` becomes :attr:`NodeMetrics.scraped_at`."""
    counters: dict[str, float] = {}
    pending_by_model: dict[str, float] = {}
    requests: dict[str, float] = {}
    blocks: dict[str, float] = {}
    gpu: dict[str, list[float]] = {}
    info: dict[str, str] | None = None
    config: dict[str, float] = {}
    lag: float | None = None
    samples = 0
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples += 1
                name = sample.name
                if name.endswith("_total"):
                    name = name[: -len("_total")]
                if name not in _WANTED:
                    continue
                value = float(sample.value)
                if not math.isfinite(value):
                    continue
                labels = sample.labels
                if name in _GPU_GAUGES:
                    gpu.setdefault(name, []).append(value)
                    continue
                sample_model = labels.get("model")
                if name == PENDING and sample_model is not None:
                    pending_by_model[sample_model] = pending_by_model.get(sample_model, 0) + value
                if sample_model != model:
                    continue
                if name == TRT_REQUESTS:
                    _add(requests, labels.get("request_type"), value)
                elif name == TRT_KV_BLOCKS:
                    _add(blocks, labels.get("kv_cache_block_type"), value)
                elif name == ENGINE_INFO:
                    if value > 0 and info is None:
                        info = {k: labels[k] for k in _INFO_LABELS if labels.get(k)}
                elif name == ENGINE_CONFIG:
                    # A limit, not a count: versions are not summed.
                    parameter = labels.get("parameter")
                    if parameter is not None:
                        config[parameter] = max(value, config.get(parameter, value))
                elif name == HOST_LAG:
                    lag = value if lag is None else max(lag, value)
                elif name != PENDING:
                    _add(counters, name, value)
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise MetricsParseError(f"not Prometheus text: {exc}") from exc

    utilisation = gpu.get(GPU_UTILIZATION)
    trt_max = {
        key: value
        for key, value in (
            ("max_sequences", requests.get("max")),
            ("kv_blocks_max", blocks.get("max")),
            ("kv_tokens_per_block", blocks.get("tokens_per")),
        )
        if value is not None
    }
    return NodeMetrics(
        scraped_at=now,
        model=model,
        pending=_int(pending_by_model.get(model)),
        pending_all=int(sum(pending_by_model.values())),
        pending_by_model=MappingProxyType({m: int(v) for m, v in pending_by_model.items()}),
        success=counters.get(SUCCESS),
        failure=counters.get(FAILURE),
        inference_count=counters.get(INFERENCE_COUNT),
        queue_duration_us=counters.get(QUEUE_US),
        compute_infer_duration_us=counters.get(COMPUTE_INFER_US),
        active=_int(requests.get("active")),
        max_sequences=_int(requests.get("max")),
        scheduled=_int(requests.get("scheduled")),
        context=_int(requests.get("context")),
        waiting=_int(requests.get("waiting")),
        kv_blocks_max=_int(blocks.get("max")),
        kv_blocks_free=_int(blocks.get("free")),
        kv_blocks_used=_int(blocks.get("used")),
        kv_tokens_per_block=_int(blocks.get("tokens_per")),
        kv_blocks_reused=_int(blocks.get("reused")),
        gpu_count=len(utilisation) if utilisation else 0,
        gpu_utilization=sum(utilisation) / len(utilisation) if utilisation else None,
        gpu_memory_used_bytes=_sum(gpu.get(GPU_MEMORY_USED)),
        gpu_memory_total_bytes=_sum(gpu.get(GPU_MEMORY_TOTAL)),
        gpu_power_usage_w=_sum(gpu.get(GPU_POWER)),
        engine=_record(info, config, trt_max),
        host_lag_s=lag,
        host_lag_lost_s=counters.get(HOST_LAG_LOST),
        samples=samples,
    )


def delta(prev: NodeMetrics, cur: NodeMetrics) -> MetricsDelta:
    """Rates between two scrapes of the same node; ``cur`` must be the later one."""
    if prev.model != cur.model:
        raise ValueError(f"scrapes of different models: {prev.model!r} and {cur.model!r}")
    interval = cur.scraped_at - prev.scraped_at
    if not interval > 0:
        raise ValueError(
            f"the later scrape must be after the earlier one, got an interval of {interval} s"
        )
    successes, reset_s = _increase(prev.success, cur.success)
    failures, reset_f = _increase(prev.failure, cur.failure)
    queue_us, reset_q = _increase(prev.queue_duration_us, cur.queue_duration_us)
    infer_us, reset_i = _increase(prev.compute_infer_duration_us, cur.compute_infer_duration_us)
    waiting_work = (cur.pending or 0) > 0 or (cur.waiting or 0) > 0
    return MetricsDelta(
        interval_s=interval,
        successes=successes,
        failures=failures,
        success_rate_s=successes / interval,
        failure_rate_s=failures / interval,
        mean_queue_us=queue_us / successes if successes > 0 else None,
        mean_compute_infer_us=infer_us / successes if successes > 0 else None,
        queued=cur.queued,
        reset=reset_s or reset_f or reset_q or reset_i,
        no_progress=waiting_work and successes <= 0,
    )


def _record(
    info: dict[str, str] | None, config: dict[str, float], trt_max: dict[str, float]
) -> EngineRecord | None:
    """The engine's record; ``None`` when the page describes none, or describes one out of
    range (a negative time scale): load metrics are kept either way."""
    try:
        return record_from_samples(info, config, trt_max)
    except ValueError:
        return None


def _add(into: dict[str, float], key: str | None, value: float) -> None:
    if key is not None:
        into[key] = into.get(key, 0.0) + value


def _int(value: float | None) -> int | None:
    return None if value is None else round(value)


def _sum(values: list[float] | None) -> float | None:
    return sum(values) if values else None


def _increase(prev: float | None, cur: float | None) -> tuple[float, bool]:
    """A counter's increase and whether it was reset (went down, or appeared)."""
    if cur is None:
        return 0.0, False
    if prev is None:
        return cur, cur > 0
    if cur < prev:
        return cur, True
    return cur - prev, False
