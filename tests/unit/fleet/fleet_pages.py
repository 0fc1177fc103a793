"""Fixtures for the fleet tests: Triton 2.51 ``/metrics`` pages in the server's text format.

Triton (prometheus-cpp) writes HELP and TYPE lines, labels sorted by name, counters without the
``_total`` suffix and integers without a decimal point. The ``nv_trt_llm_*`` gauges are the
custom families our Python backend registers through ``pb_utils.MetricFamily``
(``python_backends/trtllm_metrics.py``): same registry, same format, labels
``kv_cache_block_type``/``request_type`` beside ``model`` and ``version``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls")
REASONS = ("OTHER", "BACKEND", "CANCELED", "REJECTED")

COUNTER_HELP = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (does not include cached requests)",
    "nv_inference_exec_count": (
        "Number of model executions performed (does not include cached requests)"
    ),
    "nv_inference_request_duration_us": (
        "Cumulative inference request duration in microseconds (includes cached requests)"
    ),
    "nv_inference_queue_duration_us": (
        "Cumulative inference queuing duration in microseconds (includes cached requests)"
    ),
    "nv_inference_compute_input_duration_us": (
        "Cumulative compute input duration in microseconds (does not include cached requests)"
    ),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration in microseconds (does not include cached requests)"
    ),
    "nv_inference_compute_output_duration_us": (
        "Cumulative inference compute output duration in microseconds "
        "(does not include cached requests)"
    ),
}


@dataclass
class ModelStats:
    """One model version's counters and queue."""

    success: int = 0
    failure: Mapping[str, int] = field(default_factory=dict)
    count: int | None = None
    exec_count: int | None = None
    request_us: int = 0
    queue_us: int = 0
    infer_us: int = 0
    pending: int = 0


@dataclass
class Gpu:
    uuid: str
    utilization: float
    memory_used: int
    memory_total: int = 85_520_809_984
    power_w: float = 300.0


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def triton_page(
    stats: Mapping[tuple[str, str], ModelStats] | None = None,
    *,
    requests: Mapping[str, int] | None = None,
    kv_blocks: Mapping[str, int] | None = None,
    engine: str = "tensorrt_llm",
    gpus: Sequence[Gpu] = (),
    total_suffix: bool = False,
    omit: Sequence[str] = (),
) -> str:
    """The page of one node. ``stats`` is keyed by (model, version); every model of
    :data:`MODELS` gets version "1" with zeros unless given. ``requests``/``kv_blocks`` are the
    engine's ``nv_trt_llm_*`` gauges (None: the family is absent). ``total_suffix`` writes
    counters as ``name_total`` (what other exporters do); ``omit`` drops families by name."""
    table: dict[tuple[str, str], ModelStats] = {(m, "1"): ModelStats() for m in MODELS}
    table.update(stats or {})
    keys = sorted(table)
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, rows: list[tuple[str, float]]) -> None:
        if name in omit:
            return
        series = f"{name}_total" if kind == "counter" and total_suffix else name
        lines.append(f"# HELP {series} {help_text}")
        lines.append(f"# TYPE {series} {kind}")
        lines.extend(f"{series}{labels} {_num(value)}" for labels, value in rows)

    def per_model(get: Callable[[ModelStats], float]) -> list[tuple[str, float]]:
        return [(_labels(model=m, version=v), get(table[m, v])) for m, v in keys]

    family(
        "nv_inference_request_success",
        "counter",
        COUNTER_HELP["nv_inference_request_success"],
        per_model(lambda s: s.success),
    )
    family(
        "nv_inference_request_failure",
        "counter",
        COUNTER_HELP["nv_inference_request_failure"],
        [
            (_labels(model=m, reason=r, version=v), table[m, v].failure.get(r, 0))
            for m, v in keys
            for r in REASONS
        ],
    )
    counters: list[tuple[str, Callable[[ModelStats], float]]] = [
        ("nv_inference_count", lambda s: s.success if s.count is None else s.count),
        ("nv_inference_exec_count", lambda s: s.success if s.exec_count is None else s.exec_count),
        ("nv_inference_request_duration_us", lambda s: s.request_us),
        ("nv_inference_queue_duration_us", lambda s: s.queue_us),
        ("nv_inference_compute_input_duration_us", lambda s: s.success * 40),
        ("nv_inference_compute_infer_duration_us", lambda s: s.infer_us),
        ("nv_inference_compute_output_duration_us", lambda s: s.success * 25),
    ]
    for name, get in counters:
        family(name, "counter", COUNTER_HELP[name], per_model(get))
    family(
        "nv_inference_pending_request_count",
        "gauge",
        "Instantaneous number of pending requests awaiting execution per-model.",
        per_model(lambda s: s.pending),
    )
    family(
        "nv_model_load_duration_secs",
        "gauge",
        "Model load time in seconds",
        per_model(lambda s: 1.611378656),
    )
    if gpus:
        family(
            "nv_gpu_utilization",
            "gauge",
            "GPU utilization rate [0.0 - 1.0)",
            [(_labels(gpu_uuid=g.uuid), g.utilization) for g in gpus],
        )
        family(
            "nv_gpu_memory_total_bytes",
            "gauge",
            "GPU total memory, in bytes",
            [(_labels(gpu_uuid=g.uuid), g.memory_total) for g in gpus],
        )
        family(
            "nv_gpu_memory_used_bytes",
            "gauge",
            "GPU used memory, in bytes",
            [(_labels(gpu_uuid=g.uuid), g.memory_used) for g in gpus],
        )
        family(
            "nv_gpu_power_usage",
            "gauge",
            "GPU power usage in watts",
            [(_labels(gpu_uuid=g.uuid), g.power_w) for g in gpus],
        )
        family(
            "nv_gpu_power_limit",
            "gauge",
            "GPU power management limit in watts",
            [(_labels(gpu_uuid=g.uuid), 700) for g in gpus],
        )
        family(
            "nv_energy_consumption",
            "counter",
            "GPU energy consumption in joules since the Triton Server started",
            [(_labels(gpu_uuid=g.uuid), 123456.789) for g in gpus],
        )
    family("nv_cpu_utilization", "gauge", "CPU utilization rate [0.0 - 1.0]", [("", 0.0625)])
    family("nv_cpu_memory_total_bytes", "gauge", "CPU total memory (RAM), in bytes", [("", 1.3e11)])
    family("nv_cpu_memory_used_bytes", "gauge", "CPU used memory (RAM), in bytes", [("", 2.1e10)])
    family(
        "nv_pinned_memory_pool_total_bytes",
        "gauge",
        "Pinned memory pool total memory size, in bytes",
        [("", 268435456)],
    )
    family(
        "nv_pinned_memory_pool_used_bytes",
        "gauge",
        "Pinned memory pool used memory size, in bytes",
        [("", 0)],
    )
    if requests is not None:
        family(
            "nv_trt_llm_request_metrics",
            "gauge",
            "TRT LLM request metrics",
            [
                (_labels(model=engine, request_type=t, version="1"), value)
                for t, value in requests.items()
            ],
        )
    if kv_blocks is not None:
        family(
            "nv_trt_llm_kv_cache_block_metrics",
            "gauge",
            "TRT LLM KV cache block metrics",
            [
                (_labels(kv_cache_block_type=t, model=engine, version="1"), value)
                for t, value in kv_blocks.items()
            ],
        )
    return "\n".join(lines) + "\n"


# One node mid-run: 12 requests through the ensemble (one failed in the engine, one
# cancelled), 5 through BLS, 8 active in the engine with 4 waiting, two GPUs: the page verbatim,
# as Triton 2.51 serves it; tests/unit/fleet/test_fleet_metrics.py checks that triton_page()
# reproduces it from LITERAL_STATS.
TRITON_251_PAGE = (Path(__file__).parent / "triton_251_metrics.txt").read_text(encoding="utf-8")

LITERAL_STATS: dict[tuple[str, str], ModelStats] = {
    ("ensemble", "1"): ModelStats(
        success=12,
        failure={"BACKEND": 1},
        request_us=10_512_331,
        queue_us=211,
        infer_us=10_498_120,
        pending=2,
    ),
    ("preprocessing", "1"): ModelStats(success=13, request_us=20_114, queue_us=96, infer_us=15_870),
    ("tensorrt_llm", "1"): ModelStats(
        success=12,
        failure={"BACKEND": 1, "CANCELED": 1},
        request_us=9_840_117,
        queue_us=48_210,
        infer_us=9_811_402,
        pending=3,
    ),
    ("postprocessing", "1"): ModelStats(success=12, request_us=7_704, queue_us=51, infer_us=5_993),
    ("tensorrt_llm_bls", "1"): ModelStats(
        success=5, request_us=4_120_551, queue_us=88, infer_us=4_118_036, pending=1
    ),
}
LITERAL_REQUESTS = {"active": 8, "max": 64, "scheduled": 8, "context": 2, "waiting": 4}
LITERAL_KV_BLOCKS = {"max": 4096, "free": 3072, "used": 1024, "tokens_per": 32, "reused": 256}
LITERAL_GPUS = (
    Gpu("GPU-5d7c2a31-8b0e-4f4e-9a51-3c1de0b7a9f2", 0.83, 61_203_283_968, power_w=512.345),
    Gpu("GPU-e2a9b4c0-17d3-4b6a-8f02-6a4c9d1e3b75", 0.79, 60_129_542_144, power_w=498.1),
)


def engine_families(
    info: Mapping[str, str] | None = None,
    config: Mapping[str, float] | None = None,
    *,
    lag_s: float | None = None,
    lost_s: float | None = None,
    model: str = "tensorrt_llm",
    version: str = "1",
    total_suffix: bool = False,
) -> str:
    """The ``mufleet_engine_*`` families an engine exports beside Triton's (see
    ``python_backends/engine_metrics.py``), in the same format; append them to a page."""
    lines: list[str] = []
    base = {"model": model, "version": version}
    if info is not None:
        lines += [
            "# HELP mufleet_engine_info the engine serving this model (value 1)",
            "# TYPE mufleet_engine_info gauge",
            f"mufleet_engine_info{_labels(**base, **info)} 1",
        ]
    if config:
        lines += [
            "# HELP mufleet_engine_config the limits the engine runs with",
            "# TYPE mufleet_engine_config gauge",
        ]
        lines += [
            f"mufleet_engine_config{_labels(**base, parameter=k)} {_num(v)}"
            for k, v in config.items()
        ]
    if lag_s is not None:
        lines += [
            "# HELP mufleet_engine_host_lag_seconds how late the engine woke",
            "# TYPE mufleet_engine_host_lag_seconds gauge",
            f"mufleet_engine_host_lag_seconds{_labels(**base)} {_num(lag_s)}",
        ]
    if lost_s is not None:
        name = "mufleet_engine_host_lag_lost_seconds" + ("_total" if total_suffix else "")
        lines += [
            f"# HELP {name} wall seconds the engine fell behind and gave up",
            f"# TYPE {name} counter",
            f"{name}{_labels(**base)} {_num(lost_s)}",
        ]
    return "".join(line + "\n" for line in lines)


SIM_INFO = {"engine": "sim", "engine_version": "7", "hardware_profile": "sim_test_gpu"}
SIM_CONFIG = {
    "max_num_sequences": 4,
    "max_num_tokens": 4096,
    "kv_cache_blocks": 4096,
    "kv_block_tokens": 32,
    "time_scale": 2.0,
}
