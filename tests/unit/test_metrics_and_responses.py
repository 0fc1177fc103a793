"""Unit tests for TrtLlmMetrics (with a fake pb_utils) and ResponseAssembler (with a fake send)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from python_backends.contract import MODELS
from python_backends.engine_types import EngineStats, RequestPerf, TokenEvent
from python_backends.generation import GenerationRequest, parse_request
from python_backends.token_bytes import TokenBytes, Utf8Holdback
from python_backends.triton_responses import (
    NO_DRAFT_OUTPUTS,
    PERF_OUTPUTS,
    ResponseAssembler,
    Tensors,
)
from python_backends.trtllm_metrics import KV_BLOCK_TYPES, REQUEST_TYPES, TrtLlmMetrics

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


# -- ResponseAssembler ---------------------------------------------------------------------------
VOCAB = 128
PROMPTS: tuple[tuple[int, ...], ...] = ((5, 6, 7), (8, 9))
LEAD, CONT = 100, 101
"""Token ids whose bytes are the two halves of "é" in :data:`TOKEN_BYTES`."""
TOKEN_BYTES = TokenBytes(
    [bytes([0x61 + i % 26]) for i in range(LEAD)] + [b"\xc3", b"\xa9"] + [b"z"] * 26
)
BASE_OUTPUTS = {"output_ids", "sequence_length", "batch_index", "sequence_index"}


Response = tuple[Tensors | None, str | None, bool]


class Sent:
    """A fake ``send``: records every ``(tensors, error, final)``."""

    def __init__(self) -> None:
        self.responses: list[Response] = []

    def __call__(self, tensors: Tensors | None, error: str | None, final: bool) -> None:
        self.responses.append((tensors, error, final))

    @property
    def finals(self) -> list[bool]:
        return [final for _, _, final in self.responses]

    @property
    def tensors(self) -> list[Tensors]:
        return [t for t, _, _ in self.responses if t is not None]

    @property
    def errors(self) -> list[str]:
        return [e for _, e, _ in self.responses if e is not None]


def _request(
    rows: int = 1, num_return: int = 1, pad_id: int | None = None, **flags: bool
) -> GenerationRequest:
    """A parsed request over the first ``rows`` of PROMPTS, with output flags as inputs."""
    prompts = PROMPTS[:rows]
    ids = np.zeros((rows, max(len(p) for p in prompts)), dtype=np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
    inputs: dict[str, np.ndarray] = {
        "input_ids": ids,
        "input_lengths": np.array([[len(p)] for p in prompts], dtype=np.int32),
        "request_output_len": np.full((rows, 1), 8, dtype=np.int32),
        "num_return_sequences": np.full((rows, 1), num_return, dtype=np.int32),
    }
    if pad_id is not None:
        inputs["pad_id"] = np.full((rows, 1), pad_id, dtype=np.int32)
    for name, value in flags.items():
        inputs[name] = np.full((rows, 1), value, dtype=np.bool_)
    return parse_request(inputs, "cpu", VOCAB, 64)


def _assembler(
    request: GenerationRequest, decoupled: bool, holdback: bool = False
) -> tuple[ResponseAssembler, Sent]:
    sent = Sent()
    factory = (lambda: Utf8Holdback(TOKEN_BYTES)) if holdback else None
    return ResponseAssembler(request, sent, decoupled, factory), sent


def _event(*tokens: int, finished: bool = False, **kwargs: Any) -> TokenEvent:
    kwargs.setdefault("log_probs", tuple(-0.5 for _ in tokens))
    kwargs.setdefault("finish_reason", "length" if finished else None)
    return TokenEvent(token_ids=tokens, finished=finished, **kwargs)


def _ids(tensors: Tensors) -> list[int]:
    return [int(t) for t in tensors["output_ids"].reshape(-1)]


def _at(tensors: Tensors) -> tuple[int, int]:
    return int(tensors["batch_index"].reshape(-1)[0]), int(tensors["sequence_index"].reshape(-1)[0])


def test_response_tensors_of_one_finished_event() -> None:
    assembler, sent = _assembler(_request(return_log_probs=True), decoupled=True)

    assembler.on_event(0, TokenEvent((5, 6, 7), (-0.5, -1.25, -2.0), True, "length"))

    ((tensors, error, final),) = sent.responses
    assert error is None and final is True
    assert tensors is not None
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
    assert tensors["batch_index"].tolist() == [[0]]
    assert tensors["sequence_index"].tolist() == [[0]]
    assert tensors["batch_index"].dtype == tensors["sequence_index"].dtype == np.int32


def test_response_tensors_of_an_empty_event() -> None:
    assembler, sent = _assembler(_request(return_log_probs=True), decoupled=True)

    assembler.on_event(0, TokenEvent((), (), True, "end_id"))

    (tensors,) = sent.tensors
    assert tensors["output_ids"].shape == (1, 1, 0)
    assert tensors["output_log_probs"].shape == (1, 1, 0)
    assert tensors["sequence_length"].tolist() == [[0]]
    assert tensors["cum_log_probs"].tolist() == [[0.0]]


def test_response_reports_an_engines_explicit_sequence_length() -> None:
    assembler, sent = _assembler(_request(), decoupled=True)

    assembler.on_event(0, TokenEvent((5, 6), (-1.0, -1.0), True, sequence_length=4))

    (tensors,) = sent.tensors
    assert tensors["sequence_length"].tolist() == [[4]]
    assert tensors["output_ids"].shape == (1, 1, 2)


def test_responses_use_only_declared_tensorrt_llm_outputs() -> None:
    request = _request(
        return_log_probs=True,
        return_perf_metrics=True,
        return_num_input_tokens=True,
        return_num_output_tokens=True,
    )
    assembler, sent = _assembler(request, decoupled=True)

    assembler.on_event(0, _event(5, finished=True, perf=RequestPerf(arrival_ns=1)))

    (tensors,) = sent.tensors
    assert set(tensors) <= set(MODELS["tensorrt_llm"].output_names)


# -- decoupled ----------------------------------------------------------------------------------
def test_decoupled_streaming_of_two_sequences_has_one_final_flag() -> None:
    assembler, sent = _assembler(_request(num_return=2, streaming=True), decoupled=True)
    first, second = assembler.emitter(0), assembler.emitter(1)

    first(_event(10))
    second(_event(20))
    second(_event(21))
    first(_event(11, finished=True))
    second(_event(22, finished=True))

    assert sent.errors == []
    assert sent.finals == [False, False, False, False, True]
    by_sequence: dict[tuple[int, int], list[int]] = {}
    for tensors in sent.tensors:
        by_sequence.setdefault(_at(tensors), []).extend(_ids(tensors))
    assert by_sequence == {(0, 0): [10, 11], (0, 1): [20, 21, 22]}
    assert [_at(t) for t in sent.tensors] == [(0, 0), (0, 1), (0, 1), (0, 0), (0, 1)]


def test_decoupled_streaming_of_a_batch_names_each_row() -> None:
    assembler, sent = _assembler(_request(rows=2, streaming=True), decoupled=True)

    assembler.on_event(1, _event(30))
    assembler.on_event(0, _event(40, finished=True))
    assembler.on_event(1, _event(31, finished=True))

    assert [_at(t) for t in sent.tensors] == [(1, 0), (0, 0), (1, 0)]
    assert [_ids(t) for t in sent.tensors] == [[30], [40], [31]]
    assert sent.finals == [False, False, True]


def test_streamed_end_with_nothing_left_sends_an_empty_final_response() -> None:
    assembler, sent = _assembler(_request(streaming=True), decoupled=True)

    assembler.on_event(0, _event(10))
    assembler.on_event(0, _event(finished=True, finish_reason="end_id"))

    assert sent.responses[-1] == (None, None, True)
    assert sent.finals == [False, True]


def test_streaming_without_a_holdback_sends_every_token_at_once() -> None:
    assembler, sent = _assembler(_request(streaming=True), decoupled=True)

    assembler.on_event(0, _event(LEAD))

    assert [_ids(t) for t in sent.tensors] == [[LEAD]]


def test_streaming_holds_back_a_split_character() -> None:
    assembler, sent = _assembler(_request(streaming=True), decoupled=True, holdback=True)

    assembler.on_event(0, _event(10))
    assembler.on_event(0, _event(LEAD))
    assert [_ids(t) for t in sent.tensors] == [[10]]
    assembler.on_event(0, _event(CONT))
    assembler.on_event(0, _event(11, finished=True))

    assert [_ids(t) for t in sent.tensors] == [[10], [LEAD, CONT], [11]]
    assert [t["sequence_length"].tolist() for t in sent.tensors] == [[[1]], [[2]], [[1]]]
    assert sent.finals == [False, False, True]


def test_held_back_tokens_are_flushed_at_the_end() -> None:
    assembler, sent = _assembler(
        _request(streaming=True, return_log_probs=True), decoupled=True, holdback=True
    )

    assembler.on_event(0, _event(10))
    assembler.on_event(0, _event(LEAD))
    assembler.on_event(0, _event(finished=True, finish_reason="end_id"))

    assert [_ids(t) for t in sent.tensors] == [[10], [LEAD]]
    assert sent.finals == [False, True]
    last = sent.tensors[-1]
    assert last["output_log_probs"].tolist() == [[[-0.5]]]
    assert float(last["cum_log_probs"][0, 0]) == pytest.approx(-1.0)


def test_released_chunk_reports_its_own_length_when_events_carry_one() -> None:
    assembler, sent = _assembler(_request(streaming=True), decoupled=True, holdback=True)

    assembler.on_event(0, _event(LEAD, sequence_length=1))
    assembler.on_event(0, _event(CONT, sequence_length=1))

    (tensors,) = sent.tensors
    assert _ids(tensors) == [LEAD, CONT]
    assert tensors["sequence_length"].tolist() == [[2]]


def test_decoupled_without_streaming_sends_one_response_per_sequence() -> None:
    assembler, sent = _assembler(_request(rows=2, num_return=2), decoupled=True)

    assembler.on_event(3, _event(1, 2, 3, finished=True))
    assembler.on_event(0, _event(4, finished=True))
    assert sent.finals == [False, False]
    assembler.on_event(2, _event(5, 6, finished=True))
    assembler.on_event(1, _event(7, 8, finished=True))

    assert sent.errors == []
    assert sent.finals == [False, False, False, True]
    assert [(_at(t), _ids(t)) for t in sent.tensors] == [
        ((1, 1), [1, 2, 3]),
        ((0, 0), [4]),
        ((1, 0), [5, 6]),
        ((0, 1), [7, 8]),
    ]


def test_decoupled_without_streaming_waits_for_the_end() -> None:
    assembler, sent = _assembler(_request(), decoupled=True)

    assembler.on_event(0, _event(1))
    assembler.on_event(0, _event(2))
    assert sent.responses == []
    assembler.on_event(0, _event(3, finished=True))

    (tensors,) = sent.tensors
    assert _ids(tensors) == [1, 2, 3]


def test_events_after_a_sequence_ended_are_ignored() -> None:
    assembler, sent = _assembler(_request(num_return=2, streaming=True), decoupled=True)

    assembler.on_event(0, _event(1, finished=True))
    assembler.on_event(0, _event(2, finished=True))
    assembler.on_event(1, _event(3, finished=True))

    assert [_ids(t) for t in sent.tensors] == [[1], [3]]
    assert sent.finals == [False, True]


# -- not decoupled: one combined response ----------------------------------------------------------
def test_combined_response_is_sent_once_every_sequence_ended() -> None:
    assembler, sent = _assembler(_request(rows=2, num_return=2, pad_id=2), decoupled=False)

    assembler.on_event(0, _event(10, 11, 12, finished=True))
    assembler.on_event(3, _event(13, finished=True))
    assembler.on_event(1, _event(14, 15, finished=True))
    assert sent.responses == []
    assembler.on_event(2, _event(finished=True, finish_reason="end_id"))

    ((tensors, error, final),) = sent.responses
    assert error is None and final is True
    assert tensors is not None
    assert tensors["output_ids"].dtype == np.int32
    assert tensors["output_ids"].tolist() == [
        [[10, 11, 12], [14, 15, 2]],
        [[2, 2, 2], [13, 2, 2]],
    ]
    assert tensors["sequence_length"].tolist() == [[3, 2], [0, 1]]
    assert tensors["sequence_length"].dtype == np.int32
    assert tensors["batch_index"].tolist() == [[0], [1]]
    assert tensors["sequence_index"].shape == (2, 1)
    assert set(tensors) == BASE_OUTPUTS


def test_combined_response_pads_with_zero_without_a_pad_id() -> None:
    assembler, sent = _assembler(_request(num_return=2), decoupled=False)

    assembler.on_event(0, _event(10, 11, finished=True))
    assembler.on_event(1, _event(12, finished=True))

    (tensors,) = sent.tensors
    assert tensors["output_ids"].tolist() == [[[10, 11], [12, 0]]]


def test_combined_log_probs_are_per_sequence() -> None:
    assembler, sent = _assembler(_request(num_return=2, return_log_probs=True), decoupled=False)

    assembler.on_event(0, _event(10, 11, finished=True, log_probs=(-1.0, -2.0)))
    assembler.on_event(1, _event(12, finished=True, log_probs=(-0.5,)))

    (tensors,) = sent.tensors
    assert tensors["cum_log_probs"].tolist() == [[-3.0, -0.5]]
    assert tensors["output_log_probs"].tolist() == [[[-1.0, -2.0], [-0.5, 0.0]]]
    assert tensors["cum_log_probs"].dtype == tensors["output_log_probs"].dtype == np.float32


def test_combined_response_of_streamed_events() -> None:
    assembler, sent = _assembler(_request(), decoupled=False)

    assembler.on_event(0, _event(1))
    assembler.on_event(0, _event(2))
    assembler.on_event(0, _event(3, finished=True))

    ((tensors, _, final),) = sent.responses
    assert final is True
    assert tensors is not None
    assert tensors["output_ids"].tolist() == [[[1, 2, 3]]]
    assert tensors["sequence_length"].tolist() == [[3]]


# -- exclude_input_in_output ----------------------------------------------------------------------
def test_prompt_is_prepended_when_not_excluded_and_not_streaming() -> None:
    request = _request(exclude_input_in_output=False)
    assembler, sent = _assembler(request, decoupled=True)

    assembler.on_event(0, _event(20, 21, finished=True))

    (tensors,) = sent.tensors
    assert _ids(tensors) == [*PROMPTS[0], 20, 21]
    assert tensors["sequence_length"].tolist() == [[len(PROMPTS[0]) + 2]]


def test_prompt_is_excluded_by_default() -> None:
    assembler, sent = _assembler(_request(), decoupled=True)

    assembler.on_event(0, _event(20, 21, finished=True))

    assert _ids(sent.tensors[0]) == [20, 21]


def test_streamed_responses_never_repeat_the_prompt() -> None:
    request = _request(exclude_input_in_output=False, streaming=True)
    assembler, sent = _assembler(request, decoupled=True)

    assembler.on_event(0, _event(20))
    assembler.on_event(0, _event(21, finished=True))

    assert [_ids(t) for t in sent.tensors] == [[20], [21]]
    assert [t["sequence_length"].tolist() for t in sent.tensors] == [[[1]], [[1]]]


def test_combined_response_prepends_each_rows_prompt() -> None:
    request = _request(rows=2, exclude_input_in_output=False, pad_id=3)
    assembler, sent = _assembler(request, decoupled=False)

    assembler.on_event(0, _event(20, finished=True))
    assembler.on_event(1, _event(30, 31, finished=True))

    (tensors,) = sent.tensors
    assert tensors["output_ids"].tolist() == [[[5, 6, 7, 20]], [[8, 9, 30, 31]]]
    assert tensors["sequence_length"].tolist() == [[4], [4]]


# -- optional outputs ---------------------------------------------------------------------------
PERF = RequestPerf(
    arrival_ns=100,
    first_scheduled_ns=200,
    first_token_ns=300,
    last_token_ns=400,
    kv_new_blocks=2,
    kv_reused_blocks=1,
    kv_total_blocks=3,
)


def _one_response(decoupled: bool, **flags: bool) -> Tensors:
    assembler, sent = _assembler(_request(**flags), decoupled=decoupled)
    assembler.on_event(
        0,
        _event(
            20,
            21,
            finished=True,
            perf=PERF,
            context_logits=np.ones((3, 4), dtype=np.float32),
            generation_logits=np.full((2, 4), 2.0, dtype=np.float32),
        ),
    )
    (tensors,) = sent.tensors
    return tensors


@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled", "combined"])
def test_optional_outputs_only_when_asked(decoupled: bool) -> None:
    assert set(_one_response(decoupled)) == BASE_OUTPUTS


FLAG_OUTPUTS: dict[str, set[str]] = {
    "return_log_probs": {"cum_log_probs", "output_log_probs"},
    "return_context_logits": {"context_logits"},
    "return_generation_logits": {"generation_logits"},
    "return_perf_metrics": set(PERF_OUTPUTS) | set(NO_DRAFT_OUTPUTS),
    "return_num_input_tokens": {"num_input_tokens"},
    "return_num_output_tokens": {"num_output_tokens"},
}


@pytest.mark.parametrize(
    ("decoupled", "flag"),
    [
        pytest.param(
            decoupled,
            flag,
            id=f"{flag}-{'decoupled' if decoupled else 'combined'}",
        )
        for decoupled in (True, False)
        for flag in FLAG_OUTPUTS
    ],
)
def test_each_flag_adds_its_outputs(decoupled: bool, flag: str) -> None:
    assert set(_one_response(decoupled, **{flag: True})) == BASE_OUTPUTS | FLAG_OUTPUTS[flag]


@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled", "combined"])
def test_perf_and_token_count_values(decoupled: bool) -> None:
    tensors = _one_response(
        decoupled,
        return_perf_metrics=True,
        return_num_input_tokens=True,
        return_num_output_tokens=True,
    )

    for name, (attr, dtype) in PERF_OUTPUTS.items():
        assert tensors[name].tolist() == [[getattr(PERF, attr)]], name
        assert tensors[name].dtype == dtype
    for name, dtype in NO_DRAFT_OUTPUTS.items():
        assert tensors[name].tolist() == [[0]]
        assert tensors[name].dtype == dtype
    assert tensors["num_input_tokens"].tolist() == [[len(PROMPTS[0])]]
    assert tensors["num_output_tokens"].tolist() == [[2]]


@pytest.mark.parametrize(
    "decoupled",
    [
        pytest.param(True, id="decoupled"),
        pytest.param(False, id="combined"),
    ],
)
def test_logits_outputs_shapes(decoupled: bool) -> None:
    tensors = _one_response(decoupled, return_context_logits=True, return_generation_logits=True)

    assert tensors["context_logits"].shape == (1, 3, 4)
    assert tensors["generation_logits"].shape == (1, 1, 2, 4)
    assert (tensors["context_logits"] == 1.0).all()
    assert (tensors["generation_logits"] == 2.0).all()
    assert tensors["context_logits"].dtype == tensors["generation_logits"].dtype == np.float32


@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled", "combined"])
def test_context_logits_shape(decoupled: bool) -> None:
    tensors = _one_response(decoupled, return_context_logits=True)

    assert tensors["context_logits"].shape == (1, 3, 4)
    assert tensors["context_logits"].dtype == np.float32
    assert (tensors["context_logits"] == 1.0).all()


def test_combined_generation_logits_of_a_single_token() -> None:
    assembler, sent = _assembler(_request(return_generation_logits=True), decoupled=False)

    assembler.on_event(
        0, _event(20, finished=True, generation_logits=np.ones((1, 4), dtype=np.float32))
    )

    (tensors,) = sent.tensors
    assert tensors["generation_logits"].shape == (1, 1, 1, 4)


def test_streamed_logits_go_with_their_tokens() -> None:
    request = _request(streaming=True, return_context_logits=True, return_generation_logits=True)
    assembler, sent = _assembler(request, decoupled=True)

    for i, token in enumerate((20, 21, 22)):
        assembler.on_event(
            0,
            _event(
                token,
                finished=i == 2,
                context_logits=np.ones((3, 4), dtype=np.float32) if i == 0 else None,
                generation_logits=np.full((1, 4), float(i), dtype=np.float32),
            ),
        )

    first, *rest = sent.tensors
    assert first["context_logits"].shape == (1, 3, 4)
    assert all("context_logits" not in t for t in rest)
    assert [t["generation_logits"].shape for t in sent.tensors] == [(1, 1, 1, 4)] * 3
    assert [float(t["generation_logits"][0, 0, 0, 0]) for t in sent.tensors] == [0.0, 1.0, 2.0]


def test_streamed_token_counts_are_cumulative() -> None:
    request = _request(streaming=True, return_num_output_tokens=True, return_log_probs=True)
    assembler, sent = _assembler(request, decoupled=True)

    assembler.on_event(0, _event(20, log_probs=(-1.0,)))
    assembler.on_event(0, _event(21, log_probs=(-2.0,)))
    assembler.on_event(0, _event(22, finished=True, log_probs=(-3.0,)))

    assert [t["num_output_tokens"].tolist() for t in sent.tensors] == [[[1]], [[2]], [[3]]]
    assert [float(t["cum_log_probs"][0, 0]) for t in sent.tensors] == [-1.0, -3.0, -6.0]
    assert [t["output_log_probs"].tolist() for t in sent.tensors] == [
        [[[-1.0]]],
        [[[-2.0]]],
        [[[-3.0]]],
    ]


def _batch_with_logits(**flags: bool) -> Tensors:
    assembler, sent = _assembler(_request(rows=2, **flags), decoupled=False)
    assembler.on_event(
        0,
        _event(
            20,
            finished=True,
            context_logits=np.ones((3, 4), dtype=np.float32),
            generation_logits=np.ones((1, 4), dtype=np.float32),
        ),
    )
    assembler.on_event(
        1,
        _event(
            30,
            31,
            finished=True,
            context_logits=np.ones((2, 4), dtype=np.float32),
            generation_logits=np.ones((2, 4), dtype=np.float32),
        ),
    )
    assert sent.errors == []
    (tensors,) = sent.tensors
    return tensors


def test_combined_context_logits_of_a_batch() -> None:
    tensors = _batch_with_logits(return_context_logits=True)

    assert tensors["context_logits"].shape == (2, 3, 4)
    assert tensors["context_logits"][1, :2].tolist() == [[1.0] * 4] * 2
    assert tensors["context_logits"][1, 2].tolist() == [0.0] * 4  # padded past the prompt


def test_combined_generation_logits_of_a_batch() -> None:
    tensors = _batch_with_logits(return_generation_logits=True)

    assert tensors["generation_logits"].shape == (2, 1, 2, 4)
    assert tensors["generation_logits"][0, 0, 0].tolist() == [1.0] * 4
    assert tensors["generation_logits"][0, 0, 1].tolist() == [0.0] * 4  # padded


def test_combined_generation_logits_when_a_sequence_has_no_tokens() -> None:
    request = _request(num_return=2, return_generation_logits=True)
    assembler, sent = _assembler(request, decoupled=False)

    assembler.on_event(0, _event(finished=True, finish_reason="end_id"))
    assembler.on_event(
        1, _event(30, 31, finished=True, generation_logits=np.ones((2, 4), dtype=np.float32))
    )

    assert sent.errors == []
    (tensors,) = sent.tensors
    assert tensors["generation_logits"].shape == (1, 2, 2, 4)


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled", "combined"])
def test_an_error_event_sends_one_error_and_ends_the_request(decoupled: bool) -> None:
    assembler, sent = _assembler(_request(num_return=2, streaming=decoupled), decoupled=decoupled)

    assembler.on_event(0, _event(1))
    assembler.on_event(1, TokenEvent((), (), True, "error", error="engine iteration failed"))
    assembler.on_event(0, _event(2, finished=True))
    assembler.on_event(1, TokenEvent((), (), True, "error", error="cancelled"))

    assert assembler.failed
    assert sent.errors == ["engine iteration failed"]
    error_responses = [r for r in sent.responses if r[1] is not None]
    assert error_responses == [(None, "engine iteration failed", True)]
    assert sent.responses[-1] == (None, "engine iteration failed", True)
    assert sent.finals.count(True) == 1


def test_an_exception_while_building_the_combined_response_sends_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assembler, sent = _assembler(_request(num_return=2), decoupled=False)

    def broken() -> Tensors:
        raise RuntimeError("no room")

    monkeypatch.setattr(assembler, "_combined", broken)
    assembler.on_event(0, _event(1, finished=True))
    assert sent.responses == []
    with pytest.raises(RuntimeError, match="no room"):
        assembler.on_event(1, _event(2, finished=True))

    assert assembler.failed
    ((tensors, error, final),) = sent.responses
    assert tensors is None and final is True
    assert error is not None and "no room" in error
    assembler.on_event(1, _event(3, finished=True))
    assert len(sent.responses) == 1


def test_an_exception_while_streaming_sends_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assembler, sent = _assembler(_request(streaming=True), decoupled=True)
    assembler.on_event(0, _event(1))

    def broken(*args: object, **kwargs: object) -> Tensors:
        raise ValueError("bad shape")

    monkeypatch.setattr(assembler, "_tensors", broken)
    with pytest.raises(ValueError, match="bad shape"):
        assembler.on_event(0, _event(2))

    assert sent.finals == [False, True]
    assert sent.responses[-1][0] is None
    assert "bad shape" in str(sent.responses[-1][1])


def test_a_failing_send_of_the_error_is_not_repeated() -> None:
    calls: list[Response] = []

    def send(tensors: Tensors | None, error: str | None, final: bool) -> None:
        calls.append((tensors, error, final))
        raise ConnectionError("client gone")

    assembler = ResponseAssembler(_request(), send, True)

    with pytest.raises(ConnectionError):
        assembler.on_event(0, _event(1, finished=True))
    assembler.on_event(0, _event(2, finished=True))

    assert assembler.failed
    assert [error is None for _, error, _ in calls] == [True, False]


# -- EngineMetrics ----------------------------------------------------------------------


@dataclass
class FakeCounter(FakeMetric):
    def increment(self, value: float) -> None:
        self.writes.append((self.value or 0.0) + value)


def test_engine_metrics_describe_the_engine_and_count_lost_timeline(pb: FakePbUtils) -> None:
    from python_backends.engine_metrics import CONFIG_PARAMETERS, EngineMetrics
    from python_backends.engine_types import EngineInfo

    original = FakeMetricFamily.Metric

    def metric(self: FakeMetricFamily, labels: dict[str, str]) -> FakeMetric:
        if self.kind != FakeMetricFamilyType.COUNTER:
            return original(self, labels)
        counter = FakeCounter(dict(labels))
        self.metrics.append(counter)
        return counter

    FakeMetricFamily.Metric = metric  # type: ignore[method-assign]
    try:
        metrics = EngineMetrics(pb, "tensorrt_llm", "1", EngineInfo("sim", "2", "h100"))
    finally:
        FakeMetricFamily.Metric = original  # type: ignore[method-assign]
    (info,) = pb.family("mufleet_engine_info").metrics
    assert info.labels["engine"] == "sim" and info.labels["hardware_profile"] == "h100"
    assert info.value == 1.0
    stats = EngineStats(max_sequences=256, kv_cache_blocks=900, kv_tokens_per_block=32)
    stats.max_num_tokens, stats.time_scale, stats.host_lag_lost_s = 8192, 4.0, 0.5
    metrics.update(stats)
    config = {m.labels["parameter"]: m.value for m in pb.family("mufleet_engine_config").metrics}
    assert set(config) == set(CONFIG_PARAMETERS)
    assert config["max_num_sequences"] == 256 and config["time_scale"] == 4.0
    assert config["kv_cache_blocks"] == 900 and config["max_num_tokens"] == 8192
    (lost,) = pb.family("mufleet_engine_host_lag_lost_seconds").metrics
    assert lost.value == 0.5
    stats.host_lag_lost_s = 0.75
    metrics.update(stats)
    metrics.update(stats)
    assert lost.value == 0.75  # increments by what is new only
