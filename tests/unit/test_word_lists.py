"""Unit tests for the TensorRT-LLM ``[2, N]`` word-list encoding."""

from __future__ import annotations

import numpy as np
import pytest

from python_backends.word_lists import decode_word_lists, encode_word_lists


@pytest.mark.parametrize(
    "words",
    [
        pytest.param([], id="no-words"),
        pytest.param([[7]], id="one-single-token-word"),
        pytest.param([[3], [4], [5]], id="single-token-words"),
        pytest.param([[1, 2, 3]], id="one-multi-token-word"),
        pytest.param([[10, 11], [12], [13, 14, 15]], id="mixed-lengths"),
        pytest.param([[0], [0, 0]], id="token-zero"),
    ],
)
def test_round_trip(words: list[list[int]]) -> None:
    packed = encode_word_lists(words)

    assert packed.dtype == np.int32
    assert packed.ndim == 2
    assert packed.shape[0] == 2
    assert decode_word_lists(packed) == words


@pytest.mark.parametrize("words", [[[5]], [[1, 2], [3]], [[9, 8, 7], [6]]])
def test_round_trip_with_leading_batch_dim(words: list[list[int]]) -> None:
    packed = encode_word_lists(words)

    assert decode_word_lists(packed[np.newaxis]) == words
    assert decode_word_lists(packed[np.newaxis, np.newaxis]) == words


def test_layout_matches_tensorrt_llm() -> None:
    packed = encode_word_lists([[10, 11], [12], [13, 14, 15]])

    np.testing.assert_array_equal(
        packed,
        np.array([[10, 11, 12, 13, 14, 15], [2, 3, 6, -1, -1, -1]], dtype=np.int32),
    )


def test_empty_input_encodes_as_minus_one_column() -> None:
    np.testing.assert_array_equal(encode_word_lists([]), np.array([[-1], [-1]], dtype=np.int32))


def test_empty_words_are_dropped() -> None:
    packed = encode_word_lists([[], [4, 5], [], [6]])

    assert decode_word_lists(packed) == [[4, 5], [6]]
    np.testing.assert_array_equal(encode_word_lists([[], []]), encode_word_lists([]))


def test_accepts_any_int_sequences() -> None:
    packed = encode_word_lists([(3, 4), range(5, 7)])

    assert decode_word_lists(packed) == [[3, 4], [5, 6]]


def test_none_decodes_to_no_words() -> None:
    assert decode_word_lists(None) == []


@pytest.mark.parametrize(
    "packed",
    [
        pytest.param(np.array([1, 2, 3], dtype=np.int32), id="one-dimensional"),
        pytest.param(np.zeros((3, 4), dtype=np.int32), id="three-rows"),
        pytest.param(np.zeros((1, 4), dtype=np.int32), id="one-row"),
        pytest.param(np.zeros((1, 3, 4), dtype=np.int32), id="batched-three-rows"),
        pytest.param(np.array(5, dtype=np.int32), id="scalar"),
        pytest.param(np.array([[1, 2, 3], [2, 1, -1]], dtype=np.int32), id="decreasing-offsets"),
        pytest.param(np.array([[1, 2, 3], [2, 2, -1]], dtype=np.int32), id="repeated-offset"),
        pytest.param(np.array([[1, 2, 3], [0, -1, -1]], dtype=np.int32), id="zero-offset"),
        pytest.param(np.array([[1, 2, 3], [4, -1, -1]], dtype=np.int32), id="offset-past-row"),
    ],
)
def test_malformed_arrays_raise_value_error(packed: np.ndarray) -> None:
    with pytest.raises(ValueError):
        decode_word_lists(packed)
