"""Unit tests for parse_generation: the engine-side request of the tensorrt_llm contract."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from python_backends.generation import (
    REQUIRED_INPUTS,
    GenerationSpec,
    InvalidGenerationError,
    SamplingParams,
    parse_generation,
)
from python_backends.word_lists import encode_word_lists

VOCAB = 100
CONTEXT = 32


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


def _parse(**overrides: Any) -> GenerationSpec:
    return parse_generation(_request(**overrides), vocab_size=VOCAB, max_context=CONTEXT)


def test_minimal_request() -> None:
    spec = _parse()

    assert spec.input_ids == (5, 6, 7, 8)
    assert spec.max_new_tokens == 8
    assert spec.end_id is None
    assert spec.pad_id is None
    assert spec.min_tokens == 0
    assert spec.stop_words == ()
    assert spec.bad_words == ()
    assert spec.streaming is False
    assert spec.return_log_probs is False
    assert spec.priority is None


@pytest.mark.parametrize("missing", REQUIRED_INPUTS)
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
    ],
)
def test_bad_sampling_knobs(name: str, value: float) -> None:
    with pytest.raises(InvalidGenerationError, match="runtime_top_k"):
        _parse(**{name: [[value]]})


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


def test_large_uint64_seed_is_kept_exactly() -> None:
    seed = 2**53 + 1

    spec = _parse(seed=np.array([[seed]], dtype=np.uint64))

    assert spec.sampling.seed == seed


def test_optional_scalars_are_parsed() -> None:
    spec = _parse(
        end_id=[[2]],
        pad_id=[[3]],
        streaming=np.array([[True]]),
        return_log_probs=np.array([[True]]),
    )

    assert spec.end_id == 2
    assert spec.pad_id == 3
    assert spec.streaming is True
    assert spec.return_log_probs is True


@pytest.mark.parametrize("priority", [None, 1, 3])
def test_priority_passthrough(priority: int | None) -> None:
    spec = parse_generation(_request(), vocab_size=VOCAB, max_context=CONTEXT, priority=priority)

    assert spec.priority == priority


def test_word_lists_decoded() -> None:
    spec = _parse(
        stop_words_list=encode_word_lists([[1, 2], [3]])[np.newaxis],
        bad_words_list=encode_word_lists([[9]])[np.newaxis],
    )

    assert spec.stop_words == ((1, 2), (3,))
    assert spec.bad_words == ((9,),)


def test_empty_word_list_decodes_to_nothing() -> None:
    spec = _parse(stop_words_list=encode_word_lists([])[np.newaxis])

    assert spec.stop_words == ()


def test_malformed_word_list_is_an_invalid_generation() -> None:
    with pytest.raises(InvalidGenerationError, match="offsets"):
        _parse(bad_words_list=np.array([[[1, 2], [5, -1]]], dtype=np.int32))
