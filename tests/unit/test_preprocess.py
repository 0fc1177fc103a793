"""Unit tests for preprocess: a batch of text requests → tensorrt_llm tensors (tiny tokenizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from python_backends.contract import MODELS, PREPROCESSING_FROM_FRONT
from python_backends.generation import parse_request
from python_backends.preprocess import REFUSED_INPUTS, embedding_bias, preprocess
from python_backends.text_codec import InvalidRequestError, TextEncoder
from python_backends.word_lists import decode_word_lists

QUERIES = ("hello world, the scheduler admitted requests", "the cat")


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> TextEncoder:
    return TextEncoder(tiny_model_dir)


def _texts(*rows: Any) -> np.ndarray:
    """A ``[B, n]`` BYTES tensor, one list of strings per row."""
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), b"", dtype=np.object_)
    for i, row in enumerate(rows):
        out[i, : len(row)] = [w.encode() for w in row]
    return out


def _inputs(*queries: str, **extra: Any) -> dict[str, np.ndarray]:
    inputs = {
        "QUERY": np.array([[q.encode()] for q in queries], dtype=np.object_),
        "REQUEST_OUTPUT_LEN": np.full((len(queries), 1), 8, dtype=np.int32),
    }
    return {**inputs, **{k: np.asarray(v) for k, v in extra.items()}}


def _plain(encoder: TextEncoder, text: str) -> list[int]:
    return list(encoder.tokenizer.encode(text, add_special_tokens=False))


def test_one_query(encoder: TextEncoder) -> None:
    out = preprocess(_inputs(QUERIES[0]), encoder)

    ids = list(encoder.tokenizer.encode(QUERIES[0]))
    assert out["INPUT_ID"].tolist() == [ids]
    assert out["INPUT_ID"].dtype == np.int32
    assert out["REQUEST_INPUT_LEN"].tolist() == [[len(ids)]]
    assert out["REQUEST_OUTPUT_LEN"].tolist() == [[8]]
    assert out["OUT_END_ID"].tolist() == [[encoder.end_id]]
    assert out["OUT_PAD_ID"].tolist() == [[encoder.pad_id]]
    assert out["EMBEDDING_BIAS"].shape == (1, 0)
    np.testing.assert_array_equal(out["STOP_WORDS_IDS"], [[[-1], [-1]]])
    np.testing.assert_array_equal(out["BAD_WORDS_IDS"], [[[-1], [-1]]])


def test_outputs_are_declared_preprocessing_outputs(encoder: TextEncoder) -> None:
    out = preprocess(_inputs(*QUERIES, PROMPT_TABLE_EXTRA_ID=[[1], [2]]), encoder)

    assert set(out) <= set(MODELS["preprocessing"].output_names)


def test_batch_of_two_queries_is_right_padded(encoder: TextEncoder) -> None:
    out = preprocess(
        _inputs(*QUERIES, REQUEST_OUTPUT_LEN=np.array([[8], [3]], dtype=np.int32)), encoder
    )

    long, short = (list(encoder.tokenizer.encode(q)) for q in QUERIES)
    assert len(long) > len(short)
    assert out["INPUT_ID"].shape == (2, len(long))
    assert out["INPUT_ID"][0].tolist() == long
    assert out["INPUT_ID"][1, : len(short)].tolist() == short
    assert (out["INPUT_ID"][1, len(short) :] == encoder.pad_id).all()
    assert out["REQUEST_INPUT_LEN"].tolist() == [[len(long)], [len(short)]]
    assert out["REQUEST_OUTPUT_LEN"].tolist() == [[8], [3]]
    assert out["OUT_END_ID"].shape == out["OUT_PAD_ID"].shape == (2, 1)
    assert out["EMBEDDING_BIAS"].shape == (2, 0)


def test_padding_uses_the_requests_pad_id(encoder: TextEncoder) -> None:
    out = preprocess(_inputs(*QUERIES, PAD_ID=[[7], [7]], END_ID=[[5], [6]]), encoder)

    short = len(encoder.tokenizer.encode(QUERIES[1]))
    assert (out["INPUT_ID"][1, short:] == 7).all()
    assert out["OUT_PAD_ID"].tolist() == [[7], [7]]
    assert out["OUT_END_ID"].tolist() == [[5], [6]]


def test_two_stop_words_and_two_bad_words(encoder: TextEncoder) -> None:
    out = preprocess(
        _inputs(
            QUERIES[0],
            STOP_WORDS_DICT=_texts(["world", " the scheduler"]),
            BAD_WORDS_DICT=_texts(["cat", " dog"]),
        ),
        encoder,
    )

    assert out["STOP_WORDS_IDS"].shape[:2] == (1, 2)
    assert out["STOP_WORDS_IDS"].dtype == out["BAD_WORDS_IDS"].dtype == np.int32
    assert decode_word_lists(out["STOP_WORDS_IDS"][0]) == [
        _plain(encoder, "world"),
        _plain(encoder, " the scheduler"),
    ]
    assert decode_word_lists(out["BAD_WORDS_IDS"][0]) == [
        _plain(encoder, "cat"),
        _plain(encoder, " dog"),
    ]


def test_word_lists_per_row_are_stacked(encoder: TextEncoder) -> None:
    out = preprocess(
        _inputs(
            *QUERIES,
            STOP_WORDS_DICT=_texts(["world", " the scheduler"], ["cat"]),
            BAD_WORDS_DICT=_texts([], [" dog", "x"]),
        ),
        encoder,
    )

    stop, bad = out["STOP_WORDS_IDS"], out["BAD_WORDS_IDS"]
    assert stop.shape[:2] == bad.shape[:2] == (2, 2)
    assert decode_word_lists(stop[0]) == [
        _plain(encoder, "world"),
        _plain(encoder, " the scheduler"),
    ]
    assert decode_word_lists(stop[1]) == [_plain(encoder, "cat")]
    assert decode_word_lists(bad[0]) == []
    assert decode_word_lists(bad[1]) == [_plain(encoder, " dog"), _plain(encoder, "x")]


def test_embedding_bias_puts_weights_on_the_words_tokens(encoder: TextEncoder) -> None:
    out = preprocess(
        _inputs(
            *QUERIES,
            EMBEDDING_BIAS_WORDS=_texts(["world", " the scheduler"], ["cat"]),
            EMBEDDING_BIAS_WEIGHTS=np.array([[2.0, -1.5], [3.0, 0.0]], dtype=np.float32),
        ),
        encoder,
    )

    bias = out["EMBEDDING_BIAS"]
    vocab = len(encoder.tokenizer)
    assert bias.shape == (2, vocab)
    assert bias.dtype == np.float32
    expected = np.zeros((2, vocab), dtype=np.float32)
    for token in _plain(encoder, "world"):
        expected[0, token] += 2.0
    for token in _plain(encoder, " the scheduler"):
        expected[0, token] += -1.5
    for token in _plain(encoder, "cat"):
        expected[1, token] += 3.0
    np.testing.assert_allclose(bias, expected)
    assert np.count_nonzero(bias[0]) > 0 and np.count_nonzero(bias[1]) > 0


def test_embedding_bias_parses_into_the_engines_sparse_pairs(encoder: TextEncoder) -> None:
    out = preprocess(
        _inputs(
            QUERIES[1],
            EMBEDDING_BIAS_WORDS=_texts(["world"]),
            EMBEDDING_BIAS_WEIGHTS=np.array([[2.0]], dtype=np.float32),
        ),
        encoder,
    )

    (spec,) = parse_request(
        {
            "input_ids": out["INPUT_ID"],
            "input_lengths": out["REQUEST_INPUT_LEN"],
            "request_output_len": out["REQUEST_OUTPUT_LEN"],
            "embedding_bias": out["EMBEDDING_BIAS"],
            "stop_words_list": out["STOP_WORDS_IDS"],
        },
        "cpu",
        vocab_size=len(encoder.tokenizer),
        max_context=encoder.max_context,
    ).specs
    assert spec.embedding_bias == tuple((t, 2.0) for t in sorted(_plain(encoder, "world")))


def test_embedding_bias_helper_rejects_mismatched_counts(encoder: TextEncoder) -> None:
    with pytest.raises(InvalidRequestError, match="2 words but embedding_bias_weights has 1"):
        embedding_bias(encoder, [b"a", b"b"], [1.0])


@pytest.mark.parametrize(
    ("words", "weights"),
    [
        (_texts(["world", "cat"]), np.array([[1.0]], dtype=np.float32)),
        (_texts(["world"]), np.array([[1.0, 2.0]], dtype=np.float32)),
        (None, np.array([[1.0]], dtype=np.float32)),
        (_texts(["world"]), None),
    ],
    ids=["more-words", "more-weights", "weights-only", "words-only"],
)
def test_mismatched_bias_words_and_weights_are_refused(
    encoder: TextEncoder, words: np.ndarray | None, weights: np.ndarray | None
) -> None:
    extra = {}
    if words is not None:
        extra["EMBEDDING_BIAS_WORDS"] = words
    if weights is not None:
        extra["EMBEDDING_BIAS_WEIGHTS"] = weights

    with pytest.raises(InvalidRequestError, match="embedding_bias"):
        preprocess(_inputs(QUERIES[0], **extra), encoder)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DECODER_QUERY", np.array([[b"a decoder prompt"]], dtype=np.object_)),
        ("IMAGE_BYTES", np.ones((1, 1, 2, 2, 3), dtype=np.uint8)),
        ("IMAGE_URL", np.array([[b"http://example.invalid/cat.png"]], dtype=np.object_)),
        ("IMAGE_SIZES", np.array([[[2, 2]]], dtype=np.int64)),
        ("VIDEO_BYTES", np.ones((1, 1, 2, 2, 3), dtype=np.uint8)),
    ],
)
def test_unsupported_inputs_are_refused_by_name(
    encoder: TextEncoder, name: str, value: np.ndarray
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        preprocess(_inputs(QUERIES[0], **{name: value}), encoder)

    assert PREPROCESSING_FROM_FRONT[name] in str(info.value)  # the name the client sent


def test_every_refused_input_is_a_preprocessing_input() -> None:
    assert set(REFUSED_INPUTS) <= set(MODELS["preprocessing"].input_names)


def test_empty_decoder_query_is_not_a_request_for_one(encoder: TextEncoder) -> None:
    out = preprocess(
        _inputs(QUERIES[0], DECODER_QUERY=np.array([[b""]], dtype=np.object_)), encoder
    )

    assert out["INPUT_ID"].shape[0] == 1


@pytest.mark.parametrize(
    "query",
    [np.array([[b""]], dtype=np.object_), np.zeros((0, 1), dtype=np.object_)],
    ids=["empty-text", "no-rows"],
)
def test_empty_text_is_refused(encoder: TextEncoder, query: np.ndarray) -> None:
    with pytest.raises(InvalidRequestError, match="text_input must not be empty"):
        preprocess({"QUERY": query, "REQUEST_OUTPUT_LEN": np.array([[4]], np.int32)}, encoder)


def test_an_empty_row_in_a_batch_is_refused(encoder: TextEncoder) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        preprocess(_inputs(QUERIES[0], ""), encoder)


@pytest.mark.parametrize("missing", ["QUERY", "REQUEST_OUTPUT_LEN"])
def test_required_inputs(encoder: TextEncoder, missing: str) -> None:
    inputs = _inputs(QUERIES[0])
    del inputs[missing]

    with pytest.raises(InvalidRequestError, match="required"):
        preprocess(inputs, encoder)


def test_max_tokens_per_row_is_checked(encoder: TextEncoder) -> None:
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        preprocess(
            _inputs(*QUERIES, REQUEST_OUTPUT_LEN=np.array([[4], [0]], dtype=np.int32)), encoder
        )


def test_one_value_per_row(encoder: TextEncoder) -> None:
    with pytest.raises(InvalidRequestError, match="one value per batch row"):
        preprocess(_inputs(*QUERIES, END_ID=[[1]]), encoder)


def test_prompt_table_extra_ids_mark_prompt_table_tokens(encoder: TextEncoder) -> None:
    out = preprocess(
        _inputs(*QUERIES, PROMPT_TABLE_EXTRA_ID=np.array([[4], [9]], np.uint64)), encoder
    )

    table = out["OUT_PROMPT_TABLE_EXTRA_IDS"]
    assert table.dtype == np.uint64
    assert table.shape == out["INPUT_ID"].shape
    assert (table == 0).all()  # no id of a text prompt lies past the vocabulary
