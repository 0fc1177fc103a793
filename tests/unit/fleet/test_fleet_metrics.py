"""Unit tests for router.fleet.metrics: parsing Triton 2.51 pages, missing and malformed pages,
counter suffixes, the engine's record and host lag, deltas between scrapes and the
no-progress flag."""

from __future__ import annotations

import dataclasses
import math

import pytest
from fleet_pages import (
    LITERAL_GPUS,
    LITERAL_KV_BLOCKS,
    LITERAL_REQUESTS,
    LITERAL_STATS,
    SIM_CONFIG,
    SIM_INFO,
    TRITON_251_PAGE,
    Gpu,
    ModelStats,
    engine_families,
    triton_page,
)

from router.engine_record import EngineRecord
from router.fleet.metrics import (
    MetricsParseError,
    NodeMetrics,
    delta,
    parse_node_metrics,
)

ENGINE = ("tensorrt_llm", "1")
REQUESTS = {"active": 2, "max": 64, "scheduled": 2, "context": 0, "waiting": 0}
KV = {"max": 1000, "free": 900, "used": 100, "tokens_per": 64, "reused": 0}


def engine_page(
    success: int = 0,
    *,
    failure: int = 0,
    queue_us: int = 0,
    infer_us: int = 0,
    pending: int = 0,
    waiting: int = 0,
    **kw: object,
) -> str:
    stats = ModelStats(
        success=success,
        failure={"BACKEND": failure},
        queue_us=queue_us,
        infer_us=infer_us,
        pending=pending,
    )
    return triton_page(
        {ENGINE: stats},
        requests={**REQUESTS, "waiting": waiting},
        kv_blocks=KV,
        **kw,  # type: ignore[arg-type]
    )


# -- the literal page ----------------------------------------------------------------------


def test_page_builder_reproduces_the_literal_page() -> None:
    built = triton_page(
        LITERAL_STATS,
        requests=LITERAL_REQUESTS,
        kv_blocks=LITERAL_KV_BLOCKS,
        gpus=LITERAL_GPUS,
    )
    assert built == TRITON_251_PAGE


def test_every_field_of_a_triton_251_page() -> None:
    m = parse_node_metrics(TRITON_251_PAGE, now=1234.5)
    assert m == NodeMetrics(
        scraped_at=1234.5,
        model="tensorrt_llm",
        pending=3,
        pending_all=2 + 0 + 3 + 0 + 1,
        pending_by_model={
            "ensemble": 2,
            "postprocessing": 0,
            "preprocessing": 0,
            "tensorrt_llm": 3,
            "tensorrt_llm_bls": 1,
        },
        success=12.0,
        failure=2.0,  # BACKEND + CANCELED, summed over Triton's reason label
        inference_count=12.0,
        queue_duration_us=48_210.0,
        compute_infer_duration_us=9_811_402.0,
        active=8,
        max_sequences=64,
        scheduled=8,
        context=2,
        waiting=4,
        kv_blocks_max=4096,
        kv_blocks_free=3072,
        kv_blocks_used=1024,
        kv_tokens_per_block=32,
        kv_blocks_reused=256,
        gpu_count=2,
        gpu_utilization=m.gpu_utilization,
        gpu_memory_used_bytes=61_203_283_968 + 60_129_542_144,
        gpu_memory_total_bytes=2 * 85_520_809_984,
        gpu_power_usage_w=m.gpu_power_usage_w,
        # the TensorRT-LLM limits alone: what a real TensorRT-LLM node says of its engine
        engine=EngineRecord(
            engine="trtllm", max_num_sequences=64, kv_cache_blocks=4096, kv_block_tokens=32
        ),
        samples=m.samples,
    )
    assert m.samples == sum(
        1 for line in TRITON_251_PAGE.splitlines() if line and not line.startswith("#")
    )
    assert m.gpu_utilization == pytest.approx((0.83 + 0.79) / 2)
    assert m.gpu_power_usage_w == pytest.approx(512.345 + 498.1)
    assert m.kv_used_fraction == 0.25
    assert m.queued == 3 + 4


def test_types_are_ints_for_counts() -> None:
    m = parse_node_metrics(TRITON_251_PAGE, now=0.0)
    for name in ("pending", "pending_all", "active", "waiting", "kv_blocks_max", "gpu_count"):
        assert type(getattr(m, name)) is int, name
    assert all(type(v) is int for v in m.pending_by_model.values())


def test_another_engine_model_name() -> None:
    text = triton_page(
        {("llama_engine", "1"): ModelStats(success=7, pending=2)},
        requests={"active": 1, "waiting": 5},
        kv_blocks={"max": 10, "used": 5},
        engine="llama_engine",
    )
    default = parse_node_metrics(text, now=0.0)
    assert default.success == 0.0  # the page also has a tensorrt_llm model with zeros
    assert default.active is None and default.waiting is None
    m = parse_node_metrics(text, now=0.0, model="llama_engine")
    assert (m.model, m.success, m.pending, m.active, m.waiting) == ("llama_engine", 7.0, 2, 1, 5)
    assert m.kv_used_fraction == 0.5
    assert m.pending_all == 2


def test_versions_are_summed() -> None:
    text = triton_page(
        {
            ("tensorrt_llm", "1"): ModelStats(
                success=10, failure={"OTHER": 1}, queue_us=100, infer_us=1000, pending=1
            ),
            ("tensorrt_llm", "2"): ModelStats(
                success=5, failure={"REJECTED": 2}, queue_us=50, infer_us=500, pending=2
            ),
        }
    )
    m = parse_node_metrics(text, now=0.0)
    assert (m.success, m.failure, m.inference_count) == (15.0, 3.0, 15.0)
    assert (m.queue_duration_us, m.compute_infer_duration_us, m.pending) == (150.0, 1500.0, 3)
    assert m.pending_by_model["tensorrt_llm"] == 3


def test_gpu_families_are_optional_and_aggregated() -> None:
    assert parse_node_metrics(engine_page(), now=0.0).gpu_utilization is None
    m = parse_node_metrics(engine_page(), now=0.0)
    assert (m.gpu_count, m.gpu_memory_used_bytes, m.gpu_power_usage_w) == (0, None, None)
    gpus = [Gpu(f"GPU-{i}", 0.25 * i, 10 * (i + 1), power_w=100.0) for i in range(4)]
    m = parse_node_metrics(engine_page(gpus=gpus), now=0.0)
    assert m.gpu_count == 4
    assert m.gpu_utilization == pytest.approx((0 + 0.25 + 0.5 + 0.75) / 4)
    assert m.gpu_memory_used_bytes == 100
    assert m.gpu_power_usage_w == 400.0


def test_non_finite_gauges_read_as_missing() -> None:
    text = engine_page().replace(
        "# HELP nv_cpu_utilization",
        '# TYPE nv_gpu_utilization gauge\nnv_gpu_utilization{gpu_uuid="GPU-0"} NaN\n'
        "# HELP nv_cpu_utilization",
    )
    m = parse_node_metrics(text, now=0.0)
    assert m.gpu_utilization is None and m.gpu_count == 0


# -- missing families ----------------------------------------------------------------------


def test_empty_page_is_all_unknown() -> None:
    m = parse_node_metrics("", now=5.0)
    assert m == NodeMetrics(scraped_at=5.0)
    assert m.pending is None and m.pending_all == 0 and m.success is None
    assert m.kv_used_fraction is None and m.queued == 0 and m.samples == 0


@pytest.mark.parametrize(
    ("family", "field"),
    [
        ("nv_inference_request_success", "success"),
        ("nv_inference_request_failure", "failure"),
        ("nv_inference_count", "inference_count"),
        ("nv_inference_queue_duration_us", "queue_duration_us"),
        ("nv_inference_compute_infer_duration_us", "compute_infer_duration_us"),
        ("nv_inference_pending_request_count", "pending"),
    ],
)
def test_a_missing_family_is_none(family: str, field: str) -> None:
    full = parse_node_metrics(engine_page(success=3, pending=1), now=0.0)
    m = parse_node_metrics(engine_page(success=3, pending=1, omit=[family]), now=0.0)
    assert getattr(m, field) is None
    others = {
        f.name: getattr(full, f.name)
        for f in dataclasses.fields(full)
        if f.name not in (field, "samples", "pending_all", "pending_by_model")
    }
    assert {name: getattr(m, name) for name in others} == others
    if family == "nv_inference_pending_request_count":
        assert m.pending_all == 0 and dict(m.pending_by_model) == {}


def test_missing_engine_gauges() -> None:
    text = triton_page({ENGINE: ModelStats(pending=2)})
    m = parse_node_metrics(text, now=0.0)
    assert (m.active, m.max_sequences, m.scheduled, m.context, m.waiting) == (None,) * 5
    assert (m.kv_blocks_max, m.kv_blocks_free, m.kv_blocks_used) == (None,) * 3
    assert (m.kv_tokens_per_block, m.kv_blocks_reused) == (None, None)
    assert m.kv_used_fraction is None
    assert m.queued == 2


def test_engine_model_absent_from_the_page() -> None:
    m = parse_node_metrics(TRITON_251_PAGE, now=0.0, model="not_loaded")
    assert m.pending is None and m.success is None and m.active is None
    assert m.pending_all == 6


@pytest.mark.parametrize(
    ("blocks", "fraction"),
    [
        ({"max": 100, "used": 30, "free": 70}, 0.3),
        ({"max": 100, "free": 60}, 0.4),  # used absent: max - free
        ({"max": 0, "used": 0, "free": 0}, None),  # no KV cache (yet)
        ({"used": 5}, None),
        ({"max": 100}, None),
        ({"max": 100, "used": 130}, 1.0),  # clamped
    ],
)
def test_kv_used_fraction(blocks: dict[str, int], fraction: float | None) -> None:
    m = parse_node_metrics(triton_page(kv_blocks=blocks), now=0.0)
    assert m.kv_used_fraction == (pytest.approx(fraction) if fraction is not None else None)


# -- malformed pages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "<html><body>502 Bad Gateway</body></html>",
        "random words are not metrics",
        'nv_inference_request_success{model="ensemble",version="1"} twelve\n',
        'nv_inference_request_success{model="ensemble",version="1\n',  # truncated mid-label
        'nv_inference_pending_request_count{model="tensorrt_llm" 3\n',
        "\x00\x01\x02",
    ],
)
def test_malformed_text_raises(text: str) -> None:
    with pytest.raises(MetricsParseError):
        parse_node_metrics(text, now=0.0)


def test_malformed_line_in_an_otherwise_good_page() -> None:
    broken = TRITON_251_PAGE.replace(
        'nv_inference_request_success{model="tensorrt_llm",version="1"} 12',
        'nv_inference_request_success{model="tensorrt_llm",version="1"} 1 2 3 x',
    )
    with pytest.raises(MetricsParseError, match="not Prometheus text"):
        parse_node_metrics(broken, now=0.0)
    assert issubclass(MetricsParseError, ValueError)


# -- counter suffixes ----------------------------------------------------------------------


def test_counters_with_total_suffix_read_the_same() -> None:
    plain = parse_node_metrics(engine_page(success=9, failure=2, queue_us=70), now=1.0)
    suffixed_text = engine_page(success=9, failure=2, queue_us=70, total_suffix=True)
    assert "nv_inference_request_success_total{" in suffixed_text
    assert parse_node_metrics(suffixed_text, now=1.0) == plain


def test_untyped_total_series_and_typed_bare_series() -> None:
    text = (
        'nv_inference_request_success_total{model="tensorrt_llm",version="1"} 4\n'
        "# TYPE nv_inference_request_failure counter\n"
        'nv_inference_request_failure{model="tensorrt_llm",reason="OTHER",version="1"} 1\n'
        "# TYPE nv_inference_count counter\n"
        'nv_inference_count_total{model="tensorrt_llm",version="1"} 4\n'
    )
    m = parse_node_metrics(text, now=0.0)
    assert (m.success, m.failure, m.inference_count) == (4.0, 1.0, 4.0)


# -- the engine's record and host lag ------------------------------------------------------


SIM_RECORD = EngineRecord(
    engine="sim",
    engine_version="7",
    hardware_profile="sim_test_gpu",
    max_num_sequences=4,
    max_num_tokens=4096,
    kv_cache_blocks=4096,
    kv_block_tokens=32,
    time_scale=2.0,
)


def test_a_sim_engine_describes_itself() -> None:
    text = engine_page() + engine_families(SIM_INFO, SIM_CONFIG, lag_s=0.002, lost_s=1.5)
    m = parse_node_metrics(text, now=0.0)
    assert m.engine == SIM_RECORD
    assert (m.host_lag_s, m.host_lag_lost_s) == (0.002, 1.5)
    # the engine's own gauges are read as before
    assert (m.max_sequences, m.kv_blocks_max) == (64, 1000)


def test_engine_config_wins_over_the_tensorrt_llm_limits() -> None:
    # REQUESTS says max 64 and KV says 1000 blocks of 64: mufleet_engine_config is the engine's
    # own word, the nv_trt_llm_* gauges fill in only what it leaves out.
    text = engine_page() + engine_families(SIM_INFO, {"max_num_sequences": 4})
    engine = parse_node_metrics(text, now=0.0).engine
    assert engine == EngineRecord(
        engine="sim",
        engine_version="7",
        hardware_profile="sim_test_gpu",
        max_num_sequences=4,
        kv_cache_blocks=1000,
        kv_block_tokens=64,
    )


def test_lost_seconds_with_or_without_total_suffix() -> None:
    for suffix in (False, True):
        text = engine_page() + engine_families(lost_s=3.25, total_suffix=suffix)
        assert parse_node_metrics(text, now=0.0).host_lag_lost_s == 3.25


def test_a_page_without_engine_series_has_no_record() -> None:
    m = parse_node_metrics(triton_page({ENGINE: ModelStats(pending=2)}), now=0.0)
    assert (m.engine, m.host_lag_s, m.host_lag_lost_s) == (None, None, None)
    assert parse_node_metrics("", now=0.0).engine is None


def test_engine_series_of_another_model_are_ignored() -> None:
    text = triton_page({ENGINE: ModelStats()}) + engine_families(
        SIM_INFO, SIM_CONFIG, lag_s=0.5, lost_s=2.0, model="other_engine"
    )
    m = parse_node_metrics(text, now=0.0)
    assert (m.engine, m.host_lag_s, m.host_lag_lost_s) == (None, None, None)
    other = parse_node_metrics(text, now=0.0, model="other_engine")
    assert other.engine == SIM_RECORD and other.host_lag_s == 0.5


def test_engine_series_over_versions() -> None:
    # Limits are not summed over versions (the largest is kept); the lost seconds are.
    text = triton_page({ENGINE: ModelStats()}) + (
        "# TYPE mufleet_engine_config gauge\n"
        'mufleet_engine_config{model="tensorrt_llm",parameter="max_num_sequences",version="1"} 4\n'
        'mufleet_engine_config{model="tensorrt_llm",parameter="max_num_sequences",version="2"} 8\n'
        "# TYPE mufleet_engine_host_lag_seconds gauge\n"
        'mufleet_engine_host_lag_seconds{model="tensorrt_llm",version="1"} 0.1\n'
        'mufleet_engine_host_lag_seconds{model="tensorrt_llm",version="2"} 0.3\n'
        "# TYPE mufleet_engine_host_lag_lost_seconds counter\n"
        'mufleet_engine_host_lag_lost_seconds{model="tensorrt_llm",version="1"} 1\n'
        'mufleet_engine_host_lag_lost_seconds{model="tensorrt_llm",version="2"} 2\n'
    )
    m = parse_node_metrics(text, now=0.0)
    assert m.engine is not None and m.engine.max_num_sequences == 8
    assert (m.host_lag_s, m.host_lag_lost_s) == (0.3, 3.0)


def test_an_out_of_range_engine_config_keeps_the_load_metrics() -> None:
    text = engine_page(success=5) + engine_families(SIM_INFO, {"time_scale": -1.0})
    m = parse_node_metrics(text, now=0.0)
    assert m.engine is None and m.success == 5.0


def test_info_alone_is_a_record() -> None:
    text = triton_page({ENGINE: ModelStats()}) + engine_families(SIM_INFO)
    assert parse_node_metrics(text, now=0.0).engine == EngineRecord(
        engine="sim", engine_version="7", hardware_profile="sim_test_gpu"
    )


# -- deltas --------------------------------------------------------------------------------


def test_delta_rates_and_mean_queue_time() -> None:
    prev = parse_node_metrics(engine_page(12, failure=1, queue_us=48_000, infer_us=900_000), 10.0)
    cur = parse_node_metrics(
        engine_page(20, failure=3, queue_us=48_000 + 8 * 1_500, infer_us=900_000 + 8 * 75_000),
        12.0,
    )
    d = delta(prev, cur)
    assert d.interval_s == 2.0
    assert (d.successes, d.failures) == (8.0, 2.0)
    assert (d.success_rate_s, d.failure_rate_s) == (4.0, 1.0)
    assert d.mean_queue_us == 1_500.0
    assert d.mean_compute_infer_us == 75_000.0
    assert not d.reset and not d.no_progress
    assert d.queued == 0


def test_no_successes_means_no_mean_queue_time() -> None:
    prev = parse_node_metrics(engine_page(5, queue_us=100), 0.0)
    cur = parse_node_metrics(engine_page(5, queue_us=100), 1.0)
    d = delta(prev, cur)
    assert d.successes == 0 and d.mean_queue_us is None and d.mean_compute_infer_us is None
    assert not d.no_progress  # nothing is waiting: an idle node is not a stuck one


@pytest.mark.parametrize(
    ("pending", "waiting", "grew", "stuck"),
    [
        (3, 0, False, True),  # Triton queue growing, engine finishing nothing
        (0, 4, False, True),  # engine accepted work and finishes nothing
        (3, 4, True, False),  # busy but making progress
        (0, 0, False, False),  # idle
    ],
)
def test_no_progress(pending: int, waiting: int, grew: bool, stuck: bool) -> None:
    prev = parse_node_metrics(engine_page(50, pending=1), 0.0)
    cur = parse_node_metrics(engine_page(51 if grew else 50, pending=pending, waiting=waiting), 1.0)
    d = delta(prev, cur)
    assert d.no_progress is stuck
    assert d.queued == pending + waiting


def test_no_progress_when_success_counter_is_missing() -> None:
    prev = parse_node_metrics(engine_page(pending=2, omit=["nv_inference_request_success"]), 0.0)
    cur = parse_node_metrics(engine_page(pending=5, omit=["nv_inference_request_success"]), 1.0)
    assert delta(prev, cur).no_progress


def test_counter_reset_after_restart() -> None:
    prev = parse_node_metrics(engine_page(1000, failure=10, queue_us=10**6), 0.0)
    cur = parse_node_metrics(engine_page(4, failure=0, queue_us=400), 2.0)
    d = delta(prev, cur)
    assert d.reset
    assert (d.successes, d.failures) == (4.0, 0.0)  # Prometheus increase() semantics
    assert d.mean_queue_us == 100.0


def test_counter_appearing_counts_as_reset() -> None:
    prev = parse_node_metrics("", 0.0)
    cur = parse_node_metrics(engine_page(3, pending=1), 1.0)
    d = delta(prev, cur)
    assert d.reset and d.successes == 3.0 and not d.no_progress


def test_delta_needs_a_later_scrape_of_the_same_model() -> None:
    a = parse_node_metrics(engine_page(1), 5.0)
    with pytest.raises(ValueError, match="after"):
        delta(a, a)
    with pytest.raises(ValueError, match="after"):
        delta(a, dataclasses.replace(a, scraped_at=4.0))
    with pytest.raises(ValueError, match="different models"):
        delta(a, parse_node_metrics(engine_page(1), 6.0, model="other"))


def test_node_metrics_is_frozen_and_hashable() -> None:
    m = parse_node_metrics(TRITON_251_PAGE, now=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.pending = 0  # type: ignore[misc]
    assert isinstance(hash(m), int)
    assert not math.isnan(m.scraped_at)
