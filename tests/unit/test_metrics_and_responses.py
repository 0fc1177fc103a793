"""Unit tests for TrtLlmMetrics (with a fake pb_utils), token_event_tensors and collect_unary."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from python_backends.engine_types import EngineStats, TokenEvent
from python_backends.triton_responses import token_event_tensors
from python_backends.trtllm_metrics import KV_BLOCK_TYPES, REQUEST_TYPES, TrtLlmMetrics
from python_backends.unary import OUTPUTS, UnaryCallError, collect_unary

REQUEST_FAMILY = "nv_trt_llm_request_metrics"
KV_FAMILY = "nv_trt_llm_kv_cache_block_metrics"


@dataclass
class FakeMetric:
    labels: dict[str, str]
    writes: list[float] = field(default_factory=list)

    def set(self, value: float) -> None:
        self.writes.append(value)

    @property
    def value(self) -> float | None:
        return self.writes[-1] if self.writes else None


@dataclass
class FakeMetricFamily:
    name: str
    description: str
    kind: str
    metrics: list[FakeMetric] = field(default_factory=list)

    def Metric(self, labels: dict[str, str]) -> FakeMetric:
        metric = FakeMetric(dict(labels))
        self.metrics.append(metric)
        return metric


class FakeMetricFamilyType:
    """Stands in for the ``pb_utils.MetricFamily`` class: callable, with kind constants."""

    GAUGE = "gauge"
    COUNTER = "counter"

    def __init__(self) -> None:
        self.created: list[FakeMetricFamily] = []

    def __call__(self, name: str, description: str, kind: str) -> FakeMetricFamily:
        family = FakeMetricFamily(name, description, kind)
        self.created.append(family)
        return family


class FakePbUtils:
    """The slice of ``triton_python_backend_utils`` that TrtLlmMetrics uses."""

    def __init__(self) -> None:
        self.MetricFamily = FakeMetricFamilyType()

    @property
    def families(self) -> list[FakeMetricFamily]:
        return self.MetricFamily.created

    def family(self, name: str) -> FakeMetricFamily:
        (found,) = [f for f in self.families if f.name == name]
        return found

    def series(self, family: str, label: str, value: str) -> FakeMetric:
        (found,) = [m for m in self.family(family).metrics if m.labels[label] == value]
        return found

    def all_metrics(self) -> list[FakeMetric]:
        return [m for f in self.families for m in f.metrics]


STATS = EngineStats(
    active=3,
    waiting=2,
    max_sequences=8,
    scheduled=3,
    context=1,
    completed=10,
    kv_blocks_max=100,
    kv_blocks_used=30,
    kv_blocks_reused=7,
    kv_tokens_per_block=16,
)


@pytest.fixture
def pb() -> FakePbUtils:
    return FakePbUtils()


@pytest.fixture
def metrics(pb: FakePbUtils) -> TrtLlmMetrics:
    return TrtLlmMetrics(pb, model="tensorrt_llm", version="1")


def test_families_are_gauges(pb: FakePbUtils, metrics: TrtLlmMetrics) -> None:
    assert sorted(f.name for f in pb.families) == sorted([REQUEST_FAMILY, KV_FAMILY])
    assert all(f.kind == FakeMetricFamilyType.GAUGE for f in pb.families)
    assert all(f.description for f in pb.families)


def test_exports_every_series_with_model_labels(pb: FakePbUtils, metrics: TrtLlmMetrics) -> None:
    requests = pb.family(REQUEST_FAMILY).metrics
    blocks = pb.family(KV_FAMILY).metrics

    assert sorted(m.labels["request_type"] for m in requests) == sorted(
        ["active", "max", "scheduled", "context", "waiting"]
    )
    assert sorted(m.labels["kv_cache_block_type"] for m in blocks) == sorted(
        ["max", "free", "used", "tokens_per", "reused"]
    )
    for metric in pb.all_metrics():
        assert metric.labels["model"] == "tensorrt_llm"
        assert metric.labels["version"] == "1"
        assert len(metric.labels) == 3


def test_version_label_is_a_string(pb: FakePbUtils) -> None:
    TrtLlmMetrics(pb, model="m", version=2)  # type: ignore[arg-type]

    assert {m.labels["version"] for m in pb.all_metrics()} == {"2"}


def test_update_sets_values(pb: FakePbUtils, metrics: TrtLlmMetrics) -> None:
    metrics.update(STATS)

    expected_requests = {"active": 3, "max": 8, "scheduled": 3, "context": 1, "waiting": 2}
    for label, value in expected_requests.items():
        assert pb.series(REQUEST_FAMILY, "request_type", label).value == value
    expected_blocks = {"max": 100, "used": 30, "free": 70, "tokens_per": 16, "reused": 7}
    for label, value in expected_blocks.items():
        assert pb.series(KV_FAMILY, "kv_cache_block_type", label).value == value


@pytest.mark.parametrize(("blocks_max", "used"), [(100, 30), (10, 10), (0, 0), (5, 9)])
def test_free_is_max_minus_used(blocks_max: int, used: int) -> None:
    stats = EngineStats(kv_blocks_max=blocks_max, kv_blocks_used=used)

    values = TrtLlmMetrics.values(stats)

    assert values[("kv", "free")] == max(blocks_max - used, 0)
    assert values[("kv", "max")] == blocks_max
    assert values[("kv", "used")] == used


def test_values_cover_every_series() -> None:
    keys = set(TrtLlmMetrics.values(EngineStats()))

    assert keys == {("request", k) for k in REQUEST_TYPES} | {("kv", k) for k in KV_BLOCK_TYPES}


def test_update_only_sets_changed_values(pb: FakePbUtils, metrics: TrtLlmMetrics) -> None:
    metrics.update(STATS)
    assert all(len(m.writes) == 1 for m in pb.all_metrics())

    metrics.update(STATS)
    assert all(len(m.writes) == 1 for m in pb.all_metrics())

    changed = EngineStats(**{**STATS.__dict__, "active": 4, "kv_blocks_used": 31})
    metrics.update(changed)

    written = {
        (m.labels.get("request_type") or m.labels["kv_cache_block_type"]): len(m.writes)
        for m in pb.all_metrics()
        if len(m.writes) > 1
    }
    # active changed; used changed and so did free (max - used).
    assert written == {"active": 2, "used": 2, "free": 2}
    assert pb.series(REQUEST_FAMILY, "request_type", "active").value == 4
    assert pb.series(KV_FAMILY, "kv_cache_block_type", "free").value == 69


def test_first_update_writes_zeros_too(pb: FakePbUtils, metrics: TrtLlmMetrics) -> None:
    metrics.update(EngineStats())

    assert pb.series(REQUEST_FAMILY, "request_type", "active").writes == [0.0]


def test_token_event_tensors() -> None:
    event = TokenEvent(token_ids=(5, 6, 7), log_probs=(-0.5, -1.25, -2.0), finished=True)

    tensors = token_event_tensors(event)

    assert tensors["output_ids"].shape == (1, 1, 3)
    assert tensors["output_ids"].dtype == np.int32
    assert tensors["output_ids"].tolist() == [[[5, 6, 7]]]
    assert tensors["sequence_length"].shape == (1, 1)
    assert tensors["sequence_length"].dtype == np.int32
    assert tensors["sequence_length"].tolist() == [[3]]
    assert tensors["output_log_probs"].shape == (1, 1, 3)
    assert tensors["output_log_probs"].dtype == np.float32
    assert tensors["cum_log_probs"].shape == (1, 1)
    assert tensors["cum_log_probs"].dtype == np.float32
    assert float(tensors["cum_log_probs"][0, 0]) == pytest.approx(-3.75)
    assert float(tensors["cum_log_probs"][0, 0]) == pytest.approx(
        float(tensors["output_log_probs"].sum())
    )


def test_token_event_tensors_for_empty_event() -> None:
    tensors = token_event_tensors(TokenEvent((), (), True, "end_id"))

    assert tensors["output_ids"].shape == (1, 1, 0)
    assert tensors["output_log_probs"].shape == (1, 1, 0)
    assert tensors["sequence_length"].tolist() == [[0]]
    assert tensors["cum_log_probs"].tolist() == [[0.0]]


def test_token_event_tensors_report_explicit_sequence_length() -> None:
    event = TokenEvent((5, 6), (-1.0, -1.0), True, sequence_length=4)

    tensors = token_event_tensors(event)

    assert tensors["sequence_length"].tolist() == [[4]]
    assert tensors["output_ids"].shape == (1, 1, 2)


def _response(text: str) -> dict[str, np.ndarray]:
    return {"text_output": np.array([text.encode()], dtype=np.object_)}


def test_collect_unary_returns_the_single_response() -> None:
    only = _response("hi")

    assert collect_unary([{}, only, {}]) is only
    assert collect_unary(iter([only])) is only


@pytest.mark.parametrize(
    ("responses", "count"),
    [
        pytest.param([], 0, id="none"),
        pytest.param([{}, {}], 0, id="only-empty"),
        pytest.param([_response("a"), {}, _response("b")], 2, id="two"),
    ],
)
def test_collect_unary_rejects_other_counts(
    responses: list[dict[str, np.ndarray]], count: int
) -> None:
    with pytest.raises(UnaryCallError, match=f"got {count}"):
        collect_unary(responses)


def test_unary_outputs_include_engine_outputs() -> None:
    assert set(token_event_tensors(TokenEvent((1,), (-1.0,), True))) <= set(OUTPUTS)
    assert issubclass(UnaryCallError, ValueError)
