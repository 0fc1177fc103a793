"""Unit tests for parse_request: the engine-side request of the tensorrt_llm contract."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from python_backends.generation import (
    MAX_RETURN_SEQUENCES,
    GenerationRequest,
    GenerationSpec,
    InvalidGenerationError,
    OutputOptions,
    SamplingParams,
    parse_request,
    sequence_seed,
)
from python_backends.word_lists import encode_word_lists

VOCAB = 100
CONTEXT = 32
REQUIRED = ("input_ids", "input_lengths", "request_output_len")


def _request(**overrides: Any) -> dict[str, np.ndarray]:
    """A valid request as Triton hands it over (batch dim of 1), with ``overrides`` applied."""
    inputs: dict[str, np.ndarray] = {
        "input_ids": np.array([[5, 6, 7, 8]], dtype=np.int32),
        "input_lengths": np.array([[4]], dtype=np.int32),
        "request_output_len": np.array([[8]], dtype=np.int32),
    }
    for name, value in overrides.items():
        if value is None:
            inputs.pop(name, None)
        else:
            inputs[name] = np.asarray(value)
    return inputs


def _parse_request(engine: str = "cpu", /, **overrides: Any) -> GenerationRequest:
    return parse_request(_request(**overrides), engine, vocab_size=VOCAB, max_context=CONTEXT)


def _parse(**overrides: Any) -> GenerationSpec:
    return _parse_request(**overrides).specs[0]


def _batch(**overrides: Any) -> dict[str, np.ndarray]:
    """A batch of two rows: right-padded ids, per-row lengths and output lengths."""
    inputs: dict[str, Any] = {
        "input_ids": np.array([[5, 6, 7, 8], [9, 10, 0, 0]], dtype=np.int32),
        "input_lengths": np.array([[4], [2]], dtype=np.int32),
        "request_output_len": np.array([[8], [3]], dtype=np.int32),
        **overrides,
    }
    return {k: np.asarray(v) for k, v in inputs.items() if v is not None}


def _flag(value: bool) -> np.ndarray:
    return np.array([[value]], dtype=np.bool_)


# -- one row, one sequence -------------------------------------------------------------------
def test_minimal_request() -> None:
    request = _parse_request()
    spec = request.specs[0]

    assert len(request.specs) == 1
    assert request.batch_size == 1
    assert request.num_return_sequences == 1
    assert spec.input_ids == (5, 6, 7, 8)
    assert spec.max_new_tokens == 8
    assert spec.end_id is None
    assert spec.pad_id is None
    assert spec.min_tokens == 0
    assert spec.stop_words == ()
    assert spec.bad_words == ()
    assert spec.embedding_bias == ()
    assert spec.streaming is False
    assert spec.return_log_probs is False
    assert spec.return_context_logits is False
    assert spec.return_generation_logits is False
    assert spec.priority is None
    assert (spec.batch_index, spec.sequence_index) == (0, 0)
    assert spec.arrival_ns > 0


@pytest.mark.parametrize("missing", REQUIRED)
def test_missing_required_input(missing: str) -> None:
    with pytest.raises(InvalidGenerationError, match=missing):
        _parse(**{missing: None})


def test_invalid_generation_error_is_a_value_error() -> None:
    assert issubclass(InvalidGenerationError, ValueError)


def test_empty_input_ids() -> None:
    with pytest.raises(InvalidGenerationError, match="empty"):
        _parse(input_ids=np.zeros((1, 0), dtype=np.int32))


@pytest.mark.parametrize("length", [0, -1, 5, 100])
def test_input_lengths_outside_ids(length: int) -> None:
    with pytest.raises(InvalidGenerationError, match="input_lengths"):
        _parse(input_lengths=[[length]])


def test_input_lengths_truncates_padded_ids() -> None:
    spec = _parse(input_ids=[[5, 6, 7, 0, 0]], input_lengths=[[3]])

    assert spec.input_ids == (5, 6, 7)


def test_padding_beyond_input_lengths_is_not_range_checked() -> None:
    spec = _parse(input_ids=[[5, 6, -1, 10_000]], input_lengths=[[2]])

    assert spec.input_ids == (5, 6)


@pytest.mark.parametrize("bad_id", [-1, VOCAB, VOCAB + 50])
def test_ids_out_of_vocab(bad_id: int) -> None:
    with pytest.raises(InvalidGenerationError, match=rf"\[0, {VOCAB}\)"):
        _parse(input_ids=[[1, bad_id, 2]], input_lengths=[[3]])


def test_ids_at_vocab_edges_are_accepted() -> None:
    spec = _parse(input_ids=[[0, VOCAB - 1]], input_lengths=[[2]])

    assert spec.input_ids == (0, VOCAB - 1)


@pytest.mark.parametrize("output_len", [0, -1, -100])
def test_request_output_len_must_be_positive(output_len: int) -> None:
    with pytest.raises(InvalidGenerationError, match="request_output_len"):
        _parse(request_output_len=[[output_len]])


def test_context_overflow() -> None:
    with pytest.raises(InvalidGenerationError, match="context window of 32"):
        _parse(request_output_len=[[CONTEXT - 4 + 1]])


def test_context_exactly_full_is_accepted() -> None:
    assert _parse(request_output_len=[[CONTEXT - 4]]).max_new_tokens == CONTEXT - 4


def test_scalar_input_with_several_values() -> None:
    with pytest.raises(InvalidGenerationError, match="one value"):
        _parse(request_output_len=[[4, 4]])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("runtime_top_p", -0.1),
        ("runtime_top_p", 1.5),
        ("runtime_top_k", -1),
        ("temperature", -0.5),
        ("runtime_top_p_decay", 0.0),
        ("runtime_top_p_decay", -0.5),
        ("runtime_top_p_decay", 1.5),
        ("runtime_top_p_min", 0.0),
        ("runtime_top_p_min", 2.0),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
    ],
)
def test_bad_sampling_knobs(name: str, value: float) -> None:
    with pytest.raises(InvalidGenerationError, match=name):
        _parse(**{name: np.array([[value]], dtype=np.float32)})


def test_every_bad_knob_is_named_at_once() -> None:
    with pytest.raises(InvalidGenerationError) as info:
        _parse(runtime_top_k=[[-1]], temperature=np.array([[-1.0]], dtype=np.float32))

    assert "runtime_top_k" in str(info.value)
    assert "temperature" in str(info.value)


def test_negative_min_tokens() -> None:
    with pytest.raises(InvalidGenerationError, match="min_tokens"):
        _parse(min_tokens=[[-1]])


@pytest.mark.parametrize(("min_tokens", "expected"), [(0, 0), (3, 3), (8, 8), (9, 8), (500, 8)])
def test_min_tokens_clamped_to_max_new_tokens(min_tokens: int, expected: int) -> None:
    assert _parse(min_tokens=[[min_tokens]]).min_tokens == expected


def test_sampling_defaults_are_greedy() -> None:
    sampling = _parse().sampling

    assert sampling == SamplingParams(temperature=1.0, top_k=0, top_p=0.0, seed=0)
    assert sampling.greedy
    assert not sampling.penalised


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "greedy"),
    [
        (1.0, 0, 0.0, True),
        (1.0, 1, 0.0, True),
        (1.0, 1, 0.9, True),
        (0.0, 50, 0.9, True),
        (0.0, 0, 0.0, True),
        (1.0, 0, 0.9, False),
        (1.0, 50, 0.0, False),
        (1.0, 2, 0.0, False),
        (0.7, 50, 0.9, False),
        (0.01, 0, 1.0, False),
    ],
)
def test_greedy_truth_table(temperature: float, top_k: int, top_p: float, greedy: bool) -> None:
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)

    assert params.greedy is greedy


def test_sampling_inputs_are_parsed() -> None:
    spec = _parse(
        temperature=np.array([[0.5]], dtype=np.float32),
        runtime_top_k=np.array([[40]], dtype=np.int32),
        runtime_top_p=np.array([[0.25]], dtype=np.float32),
        seed=np.array([[1234]], dtype=np.uint64),
    )

    assert spec.sampling == SamplingParams(temperature=0.5, top_k=40, top_p=0.25, seed=1234)
    assert not spec.sampling.greedy


def test_top_p_decay_and_penalty_inputs_are_parsed() -> None:
    spec = _parse(
        runtime_top_p=np.array([[0.75]], dtype=np.float32),
        runtime_top_p_min=np.array([[0.125]], dtype=np.float32),
        runtime_top_p_decay=np.array([[0.5]], dtype=np.float32),
        runtime_top_p_reset_ids=np.array([[42]], dtype=np.int32),
        repetition_penalty=np.array([[1.5]], dtype=np.float32),
        presence_penalty=np.array([[0.25]], dtype=np.float32),
        frequency_penalty=np.array([[0.5]], dtype=np.float32),
    )

    s = spec.sampling
    assert (s.top_p, s.top_p_min, s.top_p_decay, s.top_p_reset_id) == (0.75, 0.125, 0.5, 42)
    assert (s.repetition_penalty, s.presence_penalty, s.frequency_penalty) == (1.5, 0.25, 0.5)
    assert s.penalised


def test_large_uint64_seed_is_kept_exactly() -> None:
    seed = 2**53 + 1

    spec = _parse(seed=np.array([[seed]], dtype=np.uint64))

    assert spec.sampling.seed == seed


def test_optional_scalars_are_parsed() -> None:
    spec = _parse(
        end_id=[[2]],
        pad_id=[[3]],
        streaming=_flag(True),
        return_log_probs=_flag(True),
    )

    assert spec.end_id == 2
    assert spec.pad_id == 3
    assert spec.streaming is True
    assert spec.return_log_probs is True


@pytest.mark.parametrize("priority", [None, 1, 3])
def test_priority_passthrough(priority: int | None) -> None:
    request = parse_request(
        _request(), "cpu", vocab_size=VOCAB, max_context=CONTEXT, priority=priority
    )

    assert request.specs[0].priority == priority


def test_word_lists_decoded() -> None:
    spec = _parse(
        stop_words_list=encode_word_lists([[1, 2], [3]])[np.newaxis],
        bad_words_list=encode_word_lists([[9]])[np.newaxis],
    )

    assert spec.stop_words == ((1, 2), (3,))
    assert spec.bad_words == ((9,),)


def test_word_list_without_batch_dim_is_a_batch_of_one() -> None:
    spec = _parse(stop_words_list=encode_word_lists([[1, 2], [3]]))

    assert spec.stop_words == ((1, 2), (3,))


def test_empty_word_list_decodes_to_nothing() -> None:
    spec = _parse(stop_words_list=encode_word_lists([])[np.newaxis])

    assert spec.stop_words == ()


def test_malformed_word_list_is_an_invalid_generation() -> None:
    with pytest.raises(InvalidGenerationError, match="offsets"):
        _parse(bad_words_list=np.array([[[1, 2], [5, -1]]], dtype=np.int32))


# -- output options ----------------------------------------------------------------------------
OPTION_FLAGS = (
    "streaming",
    "return_log_probs",
    "return_context_logits",
    "return_generation_logits",
    "return_perf_metrics",
    "return_num_input_tokens",
    "return_num_output_tokens",
)


def test_output_options_default_to_off() -> None:
    assert _parse_request().options == OutputOptions()
    assert OutputOptions().exclude_input_in_output is True


@pytest.mark.parametrize("name", OPTION_FLAGS)
def test_each_output_flag_sets_only_its_option(name: str) -> None:
    options = _parse_request(**{name: _flag(True)}).options

    for other in OPTION_FLAGS:
        assert getattr(options, other) is (other == name), other
    assert options.exclude_input_in_output is True


def test_spec_carries_the_flags_engines_need() -> None:
    spec = _parse(
        streaming=_flag(True),
        return_log_probs=_flag(True),
        return_context_logits=_flag(True),
        return_generation_logits=_flag(True),
    )

    assert spec.streaming and spec.return_log_probs
    assert spec.return_context_logits and spec.return_generation_logits


@pytest.mark.parametrize(
    ("model_default", "sent", "expected"),
    [
        (True, None, True),
        (False, None, False),
        (True, False, False),
        (False, True, True),
        (True, True, True),
    ],
)
def test_exclude_input_in_output_default_and_override(
    model_default: bool, sent: bool | None, expected: bool
) -> None:
    inputs = _request(exclude_input_in_output=None if sent is None else _flag(sent))

    request = parse_request(inputs, "cpu", VOCAB, CONTEXT, exclude_input_in_output=model_default)

    assert request.options.exclude_input_in_output is expected


def test_flags_must_agree_across_rows() -> None:
    with pytest.raises(InvalidGenerationError, match="streaming"):
        parse_request(_batch(streaming=np.array([[True], [False]])), "cpu", VOCAB, CONTEXT)


# -- batches and returned sequences --------------------------------------------------------------
def test_batch_rows_become_specs_with_their_own_prompts() -> None:
    request = parse_request(_batch(), "cpu", VOCAB, CONTEXT)

    assert request.batch_size == 2
    assert request.num_return_sequences == 1
    assert [s.batch_index for s in request.specs] == [0, 1]
    assert [s.sequence_index for s in request.specs] == [0, 0]
    assert [s.input_ids for s in request.specs] == [(5, 6, 7, 8), (9, 10)]
    assert [s.max_new_tokens for s in request.specs] == [8, 3]
    assert request.specs[0].arrival_ns == request.specs[1].arrival_ns


def test_batch_rows_get_their_own_scalars() -> None:
    request = parse_request(
        _batch(
            end_id=np.array([[2], [3]], dtype=np.int32),
            min_tokens=np.array([[1], [2]], dtype=np.int32),
            seed=np.array([[11], [22]], dtype=np.uint64),
            runtime_top_k=np.array([[5], [7]], dtype=np.int32),
        ),
        "cpu",
        VOCAB,
        CONTEXT,
    )

    first, second = request.specs
    assert (first.end_id, second.end_id) == (2, 3)
    assert (first.min_tokens, second.min_tokens) == (1, 2)
    assert (first.sampling.seed, second.sampling.seed) == (11, 22)
    assert (first.sampling.top_k, second.sampling.top_k) == (5, 7)


def test_batch_row_is_checked_against_its_own_length() -> None:
    with pytest.raises(InvalidGenerationError, match="input_lengths"):
        parse_request(
            _batch(input_lengths=np.array([[4], [5]], dtype=np.int32)), "cpu", VOCAB, CONTEXT
        )


def test_batch_input_without_a_row_per_request_is_refused() -> None:
    with pytest.raises(InvalidGenerationError, match="leading batch dimension of 2"):
        parse_request(
            _batch(request_output_len=np.array([[8]], dtype=np.int32)), "cpu", VOCAB, CONTEXT
        )


def test_num_return_sequences_fans_out_each_row() -> None:
    request = parse_request(
        _batch(
            num_return_sequences=np.array([[3], [3]], dtype=np.int32),
            seed=np.array([[7], [9]], dtype=np.uint64),
        ),
        "cpu",
        VOCAB,
        CONTEXT,
    )

    assert request.num_return_sequences == 3
    assert len(request.specs) == 6
    assert [(s.batch_index, s.sequence_index) for s in request.specs] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    for row, seed in ((0, 7), (1, 9)):
        specs = [s for s in request.specs if s.batch_index == row]
        seeds = [s.sampling.seed for s in specs]
        assert seeds[0] == seed  # sequence 0 keeps the request's seed
        assert len(set(seeds)) == 3
        assert seeds == [sequence_seed(seed, i) for i in range(3)]
        # Apart from sequence index and seed, every sequence is its row's.
        assert {
            replace(s, sequence_index=0, sampling=replace(s.sampling, seed=0)) for s in specs
        } == {replace(specs[0], sampling=replace(specs[0].sampling, seed=0))}


def test_sequence_seeds_are_repeatable_and_fit_uint64() -> None:
    seeds = [sequence_seed(2**64 - 1, i) for i in range(MAX_RETURN_SEQUENCES)]

    assert seeds == [sequence_seed(2**64 - 1, i) for i in range(MAX_RETURN_SEQUENCES)]
    assert len(set(seeds)) == MAX_RETURN_SEQUENCES
    assert all(0 <= s < 2**64 for s in seeds)


def test_max_return_sequences_is_accepted() -> None:
    request = _parse_request(num_return_sequences=[[MAX_RETURN_SEQUENCES]])

    assert len(request.specs) == MAX_RETURN_SEQUENCES


@pytest.mark.parametrize("count", [-1, MAX_RETURN_SEQUENCES + 1])
def test_num_return_sequences_out_of_range(count: int) -> None:
    with pytest.raises(InvalidGenerationError, match="num_return_sequences"):
        _parse_request(num_return_sequences=[[count]])


def test_num_return_sequences_zero_is_refused() -> None:
    with pytest.raises(InvalidGenerationError, match="num_return_sequences"):
        _parse_request(num_return_sequences=[[0]])


def test_num_return_sequences_must_agree_across_rows() -> None:
    with pytest.raises(InvalidGenerationError, match="num_return_sequences"):
        parse_request(
            _batch(num_return_sequences=np.array([[1], [2]], dtype=np.int32)), "cpu", VOCAB, CONTEXT
        )


def test_priority_applies_to_every_spec() -> None:
    request = parse_request(
        _batch(num_return_sequences=np.array([[2], [2]], dtype=np.int32)),
        "cpu",
        VOCAB,
        CONTEXT,
        priority=1,
    )

    assert {s.priority for s in request.specs} == {1}


def test_per_row_word_lists() -> None:
    stop = [encode_word_lists([[1, 2], [3]]), encode_word_lists([[4]])]
    bad = [encode_word_lists([]), encode_word_lists([[9], [8, 7]])]
    width = max(a.shape[1] for a in (*stop, *bad))

    def stack(rows: list[np.ndarray]) -> np.ndarray:
        out = np.full((len(rows), 2, width), -1, dtype=np.int32)
        for i, row in enumerate(rows):
            out[i, :, : row.shape[1]] = row
        return out

    first, second = parse_request(
        _batch(stop_words_list=stack(stop), bad_words_list=stack(bad)), "cpu", VOCAB, CONTEXT
    ).specs

    assert first.stop_words == ((1, 2), (3,))
    assert second.stop_words == ((4,),)
    assert first.bad_words == ()
    assert second.bad_words == ((9,), (8, 7))


def test_embedding_bias_rows_become_sparse_pairs() -> None:
    bias = np.zeros((2, VOCAB), dtype=np.float32)
    bias[0, 3] = 2.5
    bias[0, 99] = -1.0
    bias[1, 0] = 100.0

    first, second = parse_request(_batch(embedding_bias=bias), "cpu", VOCAB, CONTEXT).specs

    assert first.embedding_bias == ((3, 2.5), (99, -1.0))
    assert second.embedding_bias == ((0, 100.0),)


@pytest.mark.parametrize(
    "bias",
    [np.zeros((1, 0), dtype=np.float32), np.zeros((1, VOCAB), dtype=np.float32)],
    ids=["no-entries", "all-zero"],
)
def test_empty_or_zero_embedding_bias_is_no_bias(bias: np.ndarray) -> None:
    assert _parse(embedding_bias=bias).embedding_bias == ()


def test_embedding_bias_wider_than_the_vocabulary_is_refused() -> None:
    with pytest.raises(InvalidGenerationError, match="embedding_bias"):
        _parse(embedding_bias=np.ones((1, VOCAB + 1), dtype=np.float32))


# -- refusals by name -----------------------------------------------------------------------------
REFUSED: list[tuple[str, str, Any]] = [
    ("cpu", "beam_width", np.array([[2]], dtype=np.int32)),
    ("sim", "beam_width", np.array([[4]], dtype=np.int32)),
    ("cpu", "lora_task_id", np.array([[5]], dtype=np.uint64)),
    ("cpu", "lora_weights", np.ones((1, 2, 4), dtype=np.float16)),
    ("cpu", "guided_decoding_guide_type", np.array([[b"json"]], dtype=np.object_)),
    ("cpu", "guided_decoding_guide", np.array([[b'{"type": "object"}']], dtype=np.object_)),
    ("sim", "return_context_logits", _flag(True)),
    ("sim", "return_generation_logits", _flag(True)),
    ("cpu", "stop", _flag(True)),
    ("sim", "stop", _flag(True)),
    ("cpu", "draft_input_ids", np.array([[1, 2]], dtype=np.int32)),
    ("cpu", "prompt_embedding_table", np.ones((1, 2, 4), dtype=np.float16)),
    ("cpu", "encoder_input_features", np.ones((1, 2, 4), dtype=np.float16)),
]


@pytest.mark.parametrize(
    ("engine", "name", "value"), REFUSED, ids=[f"{e}-{n}" for e, n, _ in REFUSED]
)
def test_unsupported_inputs_are_refused_by_name(engine: str, name: str, value: Any) -> None:
    with pytest.raises(InvalidGenerationError) as info:
        _parse_request(engine, **{name: value})

    message = str(info.value)
    assert f"'{name}'" in message
    assert engine in message


@pytest.mark.parametrize(
    ("engine", "name", "value"),
    [
        ("cpu", "beam_width", np.array([[1]], dtype=np.int32)),
        ("cpu", "stop", _flag(False)),
        ("sim", "stop", _flag(False)),
        ("sim", "return_context_logits", _flag(False)),
        ("cpu", "guided_decoding_guide_type", np.array([[b""]], dtype=np.object_)),
        ("cpu", "lora_task_id", np.zeros((1, 0), dtype=np.uint64)),
    ],
)
def test_supported_values_of_limited_inputs_are_accepted(
    engine: str, name: str, value: Any
) -> None:
    assert len(_parse_request(engine, **{name: value}).specs) == 1


@pytest.mark.parametrize("name", ["return_context_logits", "return_generation_logits"])
def test_cpu_engine_accepts_logits(name: str) -> None:
    spec = _parse_request("cpu", **{name: _flag(True)}).specs[0]

    assert getattr(spec, name) is True
